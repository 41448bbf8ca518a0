"""Cross-mode parity: paddleslim_dygraph and paddleslim_static give bitwise identical masks, thresholds
and densities for the same network and weights, and agree to float tolerance over seeded SGD steps.

Both modes are driven through one adapter interface (:class:`Dygraph`, :class:`Static`), so every
check is written once and runs against both.
"""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import paddleslim_dygraph as dy
import paddleslim_static as st
import reference
from nets import NETS, NetSpec, batch, copy_weights, dygraph_model, scope_array, static_mode, static_net


class Dygraph:
    """The network as a dygraph model."""

    name = "dygraph"
    lib = dy

    def __init__(self, spec, seed=0, lr=0.05):
        self.spec = spec
        self.model = dygraph_model(spec, seed)
        self.opt = paddle.optimizer.SGD(lr, parameters=self.model.parameters())

    def pruner(self, gmp=False, **kw):
        if gmp:
            return dy.GMPUnstructuredPruner(self.model, **kw)
        mode = kw.pop("mode")
        return dy.UnstructuredPruner(self.model, mode, **kw)

    def masks(self, pruner):
        return {n: m.numpy() for n, m in pruner.masks.items()}

    def weights(self):
        return {p.name: p.numpy() for p in self.model.parameters()}

    def densities(self):
        U = dy.UnstructuredPruner
        return (U.total_sparse(self.model), U.total_sparse_conv1x1(self.model), U.sparse_by_layer(self.model),
                dy.density(self.model))

    def summarize(self, pruner, ratio):
        return pruner.summarize_weights(self.model, ratio)

    def train_step(self, x, y, pruner=None):
        loss = F.cross_entropy(self.model(paddle.to_tensor(x)), paddle.to_tensor(y))
        loss.backward()
        self.opt.step()
        self.opt.clear_grad()
        if pruner is not None:
            pruner.update_params()  # what the static program's post-update mask ops do
        return float(loss)


class Static:
    """The same network as a PIR program; its scope starts with the dygraph twin's weights."""

    name = "static"
    lib = st

    def __init__(self, spec, seed=0, lr=0.05, twin=None):
        self.spec = spec
        twin = twin or Dygraph(spec, seed)
        with static_mode():
            self.net = static_net(spec, lambda: paddle.optimizer.SGD(lr))
            self.scope, self.exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
            with paddle.static.scope_guard(self.scope):
                self.exe.run(self.net.startup)
        copy_weights(twin.model, self.scope)

    def pruner(self, gmp=False, **kw):
        kw.update(scope=self.scope, startup_program=self.net.startup)
        if gmp:
            return st.GMPUnstructuredPruner(self.net.main, **kw)
        mode = kw.pop("mode")
        return st.UnstructuredPruner(self.net.main, mode, **kw)

    def masks(self, pruner):
        return pruner.mask_arrays()

    def weights(self):
        return {n: scope_array(self.scope, n) for n in st.UnstructuredPruner.sparse_by_layer(self.net.main, self.scope)}

    def densities(self):
        U, p, s = st.UnstructuredPruner, self.net.main, self.scope
        return U.total_sparse(p, s), U.total_sparse_conv1x1(p, s), U.sparse_by_layer(p, s), st.density(p, s)

    def summarize(self, pruner, ratio):
        return pruner.summarize_weights(self.net.main, ratio)

    def train_step(self, x, y, pruner=None):
        with static_mode(), paddle.static.scope_guard(self.scope):
            return float(self.exe.run(self.net.main, feed={"x": x, "y": y}, fetch_list=[self.net.loss])[0])


def _pair(spec, seed=0):
    d = Dygraph(spec, seed)
    return d, Static(spec, seed, twin=d)


def _assert_same(d, s, pd, ps):
    """Bitwise: thresholds, masks, weights, densities."""
    assert sorted(pd.prunable_params) == sorted(ps.prunable_params)
    assert set(pd.skip_params) == set(ps.skip_params)
    assert np.float32(pd.threshold).tobytes() == np.float32(ps.threshold).tobytes()
    assert pd.thresholds == ps.thresholds
    md, ms = d.masks(pd), s.masks(ps)
    assert md.keys() == ms.keys()
    for n in md:
        np.testing.assert_array_equal(md[n], ms[n], err_msg=n)
    wd, ws = d.weights(), s.weights()
    assert wd.keys() == ws.keys()
    for n in wd:
        assert wd[n].tobytes() == ws[n].tobytes(), n
    assert d.densities() == s.densities()


OPTIONS = {
    "ratio-global": dict(mode="ratio", ratio=0.55),
    "ratio-local": dict(mode="ratio", ratio=0.4, local_sparsity=True),
    "threshold": dict(mode="threshold", threshold=0.05),
    "threshold-block2x2": dict(mode="threshold", threshold=0.1, sparse_block=(2, 2)),
    "block2x2": dict(mode="ratio", ratio=0.5, sparse_block=(2, 2)),
    "block5x5-local": dict(mode="ratio", ratio=0.5, sparse_block=(5, 5), local_sparsity=True),
    "block3x1": dict(mode="ratio", ratio=0.3, sparse_block=(3, 1)),
    "conv1x1": dict(mode="ratio", ratio=0.6, prune_params_type="conv1x1_only"),
    "lite": dict(mode="ratio", ratio=0.7, prune_params_type="lite_sparse_conv"),
    "lite-2x1": dict(mode="ratio", ratio=0.7, prune_params_type="lite_sparse_conv", sparse_block=(2, 1)),
    "nm2:4": dict(mode="threshold", threshold=0.0, sparse_pattern="2:4"),
    "nm1:4-ratio-local": dict(mode="ratio", ratio=0.8, local_sparsity=True, sparse_pattern="1:4"),
}
CASES = [(net, opt) for net in ("mlp", "lenet", "mobilenet") for opt in OPTIONS
         if not opt.startswith(("conv1x1", "lite")) or net == "mobilenet"]


@pytest.mark.parametrize("net,option", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_bitwise_parity(net, option):
    d, s = _pair(NETS[net])
    pd, ps = d.pruner(**OPTIONS[option]), s.pruner(**OPTIONS[option])
    pd.update_params()  # dygraph applies masks in its forward pre-hook, static at construction
    _assert_same(d, s, pd, ps)  # at construction (threshold mode: masks already reflect the threshold)
    pd.step()
    ps.step()
    _assert_same(d, s, pd, ps)
    assert any(not m.all() for m in s.masks(ps).values())  # something was pruned
    for r in (0.2, 0.9):
        assert d.summarize(pd, r) == s.summarize(ps, r)


class LiteCandidates(paddle.nn.Layer):
    """One conv per Paddle Lite sparse-conv condition, each flipped once; only ``ok`` and ``same`` qualify."""

    def __init__(self):
        super().__init__()
        nn = paddle.nn
        self.ok = nn.Conv2D(4, 8, 1)
        self.stride2 = nn.Conv2D(8, 8, 1, stride=2)
        self.groups2 = nn.Conv2D(8, 8, 1, groups=2)
        self.padded = nn.Conv2D(8, 8, 1, padding=1)
        self.k3 = nn.Conv2D(8, 8, 3, padding=1)
        self.same = nn.Conv2D(8, 8, 1, padding="SAME")
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        for conv in (self.ok, self.stride2, self.groups2, self.padded, self.k3, self.same):
            x = conv(x)
        return self.fc(x.mean(axis=[2, 3]))


def test_lite_sparse_conv_preset_takes_exactly_the_eligible_convs_in_both_modes():
    spec = NetSpec("lite", LiteCandidates, (4, 8, 8))
    d, s = _pair(spec)
    pd = d.pruner(mode="ratio", ratio=0.75, prune_params_type="lite_sparse_conv", sparse_block=(2, 1))
    ps = s.pruner(mode="ratio", ratio=0.75, prune_params_type="lite_sparse_conv", sparse_block=(2, 1))
    want = {d.model.ok.weight.name, d.model.same.weight.name}
    assert set(pd.prunable_params) == set(ps.prunable_params) == want
    pd.step()
    ps.step()
    _assert_same(d, s, pd, ps)
    for m in s.masks(ps).values():  # 2x1 blocks: output channels pruned in pairs
        assert (m[0::2] == m[1::2]).all()


@pytest.mark.parametrize("net", ["mlp", "mobilenet"])
def test_nm_pattern_masks_are_nm_sparse_and_keep_the_largest(net):
    from paddleslim_dygraph.nm import check_nm
    from paddleslim_static.core.nm import nm_mask

    d, s = _pair(NETS[net])
    before = d.weights()
    pd = d.pruner(mode="threshold", threshold=0.0, sparse_pattern="2:4")
    ps = s.pruner(mode="threshold", threshold=0.0, sparse_pattern="2:4")
    pd.step()
    ps.step()
    _assert_same(d, s, pd, ps)
    verdicts = check_nm(d.model, 2, 4)
    assert all(verdicts[n].ok for n in pd.prunable_params)
    for n, m in d.masks(pd).items():
        np.testing.assert_array_equal(m, nm_mask(before[n], 2, 4, "linear" if m.ndim == 2 else "conv"), err_msg=n)
    with pytest.raises(ValueError, match="sparse_pattern"):
        d.pruner(mode="ratio", ratio=0.5, sparse_pattern="4:2")


def test_conv1x1_only_needs_1x1_convs():
    d, s = _pair(NETS["lenet"])
    for mode in (d, s):
        with pytest.raises(ValueError, match="nothing to prune"):
            mode.pruner(mode="ratio", ratio=0.5, prune_params_type="conv1x1_only")


GMP = {"stable_iterations": 11, "pruning_iterations": 44, "tunning_iterations": 20, "resume_iteration": -1,
       "pruning_steps": 4, "initial_ratio": 0.1}


@pytest.mark.parametrize("resume", [-1, 20, 50], ids=lambda r: f"resume{r}")
@pytest.mark.parametrize("local", [False, True], ids=["global", "local"])
def test_gmp_parity(resume, local):
    d, s = _pair(NETS["mobilenet"])
    cfg = dict(GMP, resume_iteration=resume)
    kw = dict(gmp=True, ratio=0.7, configs=cfg, local_sparsity=local, sparse_block=(2, 1))
    pd, ps = d.pruner(**kw), s.pruner(**kw)
    _assert_same(d, s, pd, ps)
    ratios = []
    for _ in range(70 - max(resume, 0)):
        pd.step()
        ps.step()
        assert pd.ratio == ps.ratio and pd.cur_iteration == ps.cur_iteration
        ratios.append(ps.ratio)
        if len(ratios) < 2 or ratios[-1] != ratios[-2]:
            _assert_same(d, s, pd, ps)
    _assert_same(d, s, pd, ps)
    assert ratios[-1] == 0.7 and (resume > 0 or 0.0 in ratios)


@pytest.mark.parametrize("mode", [Dygraph, Static], ids=["dygraph", "static"])
def test_each_mode_matches_full_sort_reference(mode):
    """The shared contract, checked per mode against a brute-force sort (tests/reference.py)."""
    m = mode(NETS["lenet"], seed=3)
    p = m.pruner(mode="ratio", ratio=0.45, sparse_block=(2, 2))
    w = {n: v for n, v in m.weights().items() if n in set(p.prunable_params)}
    p.step()
    expected = reference.ratio_threshold(list(w.values()), 0.45, (2, 2))
    assert np.float32(p.threshold) == expected
    for n, mask in m.masks(p).items():
        np.testing.assert_array_equal(mask, reference.element_scores(w[n], (2, 2)) >= expected)


def test_static_masks_right_after_the_update():
    """The documented difference: dygraph's step() sees what optimizer.step() wrote into pruned weights
    (they may regrow past the threshold), the static program zeroes them inside exe.run."""
    spec = NETS["mobilenet"]
    d, s = _pair(spec, seed=1)
    pd, ps = d.pruner(**OPTIONS["ratio-global"]), s.pruner(**OPTIONS["ratio-global"])
    pd.step()
    ps.step()
    x, y = batch(spec, 8, 100)
    d.train_step(x, y)
    s.train_step(x, y)
    md, wd, ws = d.masks(pd), d.weights(), s.weights()
    assert any(np.any(wd[n][~m] != 0) for n, m in md.items())  # dygraph: revived until update_params/forward
    assert all(np.all(ws[n][~m] == 0) for n, m in md.items())  # static: already zero
    pd.update_params()
    for n in wd:
        np.testing.assert_array_equal(d.weights()[n], ws[n])


@pytest.mark.parametrize("net,option", [("mobilenet", "ratio-global"), ("mobilenet", "threshold"),
                                        ("mlp", "ratio-local"), ("lenet", "block2x2")])
def test_sgd_training_parity(net, option):
    spec = NETS[net]
    d, s = _pair(spec, seed=1)
    pd, ps = d.pruner(**OPTIONS[option]), s.pruner(**OPTIONS[option])
    block = OPTIONS[option].get("sparse_block", (1, 1))
    tol = 1e-4
    for i in range(4):
        x, y = batch(spec, 8, 100 + i)
        ld, ls = d.train_step(x, y, pd), s.train_step(x, y, ps)
        assert ld == pytest.approx(ls, rel=1e-4, abs=1e-5)
        pd.step()
        ps.step()
        md, ms = d.masks(pd), s.masks(ps)
        wd, ws = d.weights(), s.weights()
        for n in wd:
            differ = ~np.isclose(wd[n], ws[n], rtol=tol, atol=tol)
            if n in md:
                t = pd.thresholds.get(n, pd.threshold)
                assert math.isclose(t, ps.thresholds.get(n, ps.threshold), rel_tol=tol, abs_tol=tol)
                near = (np.abs(reference.element_scores(wd[n], block) - np.float32(t)) <= tol) | (
                    np.abs(reference.element_scores(ws[n], block) - np.float32(t)) <= tol)
                assert not np.any((md[n] != ms[n]) & ~near), n  # masks differ only at the threshold
                assert not np.any(differ & ~near & (md[n] == ms[n])), n
            else:
                assert not differ.any(), n
        for n in md:
            assert np.all(ws[n][~ms[n]] == 0) and np.all(wd[n][~md[n]] == 0)
