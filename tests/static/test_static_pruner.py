"""Static pruners: training keeps pruned weights at zero, checkpoints, the PaddleSlim-style scenario, API."""
import math

import numpy as np
import paddle
import pytest

from nets import NETS, batch, scope_array, scope_mask, static_mode, static_net
from paddleslim_static import GMPUnstructuredPruner, UnstructuredPruner, density, sparsity
from paddleslim_static.core import GMPSchedule
from paddleslim_static.pruner import GLOBAL_THRESHOLD_VAR, READY_VAR

MOBILE = NETS["mobilenet"]
MLP = NETS["mlp"]
RES = NETS["restranspose"]

OPTIMIZERS = {
    "momentum": lambda: paddle.optimizer.Momentum(0.05, momentum=0.9),
    "adam": lambda: paddle.optimizer.Adam(0.01),
}


@pytest.fixture
def static():
    with static_mode():
        yield


class Session:
    """A built program, a fresh scope with the startup run, and an executor."""

    def __init__(self, spec, optimizer="momentum", legacy=False):
        self.spec = spec
        self.net = static_net(spec, OPTIMIZERS[optimizer] if optimizer else None, legacy=legacy)
        self.scope = paddle.static.Scope()
        self.exe = paddle.static.Executor(paddle.CPUPlace())
        self.it = 0
        with paddle.static.scope_guard(self.scope):
            self.exe.run(self.net.startup)

    def pruner(self, cls=UnstructuredPruner, *args, **kw):
        return cls(self.net.main, *args, scope=self.scope, startup_program=self.net.startup, **kw)

    def run(self, n=8):
        x, y = batch(self.spec, n, self.it)
        self.it += 1
        with paddle.static.scope_guard(self.scope):
            return self.exe.run(self.net.main, feed={"x": x, "y": y}, fetch_list=[self.net.loss])[0]

    def w(self, name):
        return scope_array(self.scope, name)


def _assert_pruned_zero(s, pruner):
    for n, var in pruner.masks.items():
        m = scope_mask(s.scope, var, s.w(n).shape)
        assert np.all(s.w(n)[~m] == 0), n


def _gmp_configs(resume=-1):
    return {"stable_iterations": 0, "pruning_iterations": 22, "tunning_iterations": 10,
            "resume_iteration": resume, "pruning_steps": 2, "initial_ratio": 0.2}


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("mode", ["ratio", "threshold", "gmp"])
def test_training_keeps_pruned_weights_zero(static, optimizer, mode):
    s = Session(MOBILE, optimizer)
    if mode == "gmp":
        pruner = s.pruner(GMPUnstructuredPruner, ratio=0.6, configs=_gmp_configs())
    else:
        pruner = s.pruner(UnstructuredPruner, mode, ratio=0.5, threshold=0.05)
    names = pruner.prunable_params
    assert all(not n.startswith("batch_norm") for n in names) and len(names) == 8  # 7 convs + fc weight
    sizes = sum(s.w(n).size for n in names)
    for i in range(26):
        loss = s.run()
        assert np.isfinite(loss)
        _assert_pruned_zero(s, pruner)  # the pass alone keeps them at zero through the update
        pruner.step()
        _assert_pruned_zero(s, pruner)
        zeros = sum(int((s.w(n) == 0).sum()) for n in names) / sizes
        if mode == "ratio":
            assert abs(zeros - 0.5) < 1e-3
            assert scope_array(s.scope, GLOBAL_THRESHOLD_VAR) == np.float32(pruner.threshold)
        elif mode == "gmp":
            assert pruner.ratio == pruner.schedule.ratio_at(pruner.cur_iteration - 1)
            assert abs(zeros - pruner.ratio) < 1e-3
        else:
            for n, var in pruner.masks.items():
                np.testing.assert_array_equal(scope_mask(s.scope, var, s.w(n).shape),
                                              np.abs(s.w(n)) >= np.float32(0.05))
    if mode == "gmp":
        assert pruner.ratio == 0.6


def test_checkpoint_restores_masks_and_thresholds(static, tmp_path):
    s = Session(MLP, "adam")
    pruner = s.pruner(UnstructuredPruner, "ratio", ratio=0.6, local_sparsity=True)
    for _ in range(3):
        s.run()
        pruner.step()
    prefix = str(tmp_path / "ckpt")
    with paddle.static.scope_guard(s.scope):
        paddle.static.save(s.net.main, prefix)
    state = {v: s.w(v) for v in list(pruner.masks.values()) + [n + "_threshold" for n in pruner.prunable_params]}
    state.update({n: s.w(n) for n in pruner.prunable_params})

    scope2 = paddle.static.Scope()
    with paddle.static.scope_guard(scope2):
        s.exe.run(s.net.startup)
        assert all(scope_mask(scope2, v, s.w(n).shape).all() for n, v in pruner.masks.items())  # fresh: all True
        paddle.static.load(s.net.main, prefix, s.exe)
    for name, value in state.items():
        np.testing.assert_array_equal(scope_array(scope2, name), value)
    assert bool(scope_array(scope2, READY_VAR))
    # a pruner built on the restored scope keeps the restored masks (ratio mode, until its first step)
    p2 = UnstructuredPruner(s.net.main, "ratio", ratio=0.6, scope=scope2, local_sparsity=True,
                            startup_program=s.net.startup)
    for n, var in p2.masks.items():
        np.testing.assert_array_equal(scope_array(scope2, var), state[var])
    s.scope = scope2
    s.run()
    _assert_pruned_zero(s, p2)


def test_residual_transpose_net_prunes_with_every_option_like_paddleslim(static):
    """conv+BN with residual adds and a conv2d_transpose; ratio+local, conv1x1_only, 5x5 blocks, GMP resume."""
    s = Session(RES, "momentum")
    convt = [p.name for p in s.net.main.global_block().all_parameters() if p.name.startswith("conv2d_transpose")]
    assert convt == ["conv2d_transpose_0.w_0"] or sorted(convt) == ["conv2d_transpose_0.b_0", "conv2d_transpose_0.w_0"]

    # ratio with local sparsity: every prunable parameter loses exactly round(ratio * n) elements
    p = s.pruner(UnstructuredPruner, "ratio", ratio=0.55, local_sparsity=True)
    assert "conv2d_transpose_0.w_0" in p.prunable_params
    s.run()
    p.step()
    for n in p.prunable_params:
        w = s.w(n)
        assert int((w == 0).sum()) == round(0.55 * w.size), n
        assert scope_array(s.scope, n + "_threshold") == np.float32(p.thresholds[n])
    byl = UnstructuredPruner.sparse_by_layer(s.net.main, s.scope)
    assert all(byl[n] == 1.0 for n in byl if n.startswith("batch_norm"))

    # conv1x1_only: only the 1x1 conv weight is pruned
    s2 = Session(RES, "momentum")
    p2 = s2.pruner(UnstructuredPruner, "ratio", ratio=0.5, prune_params_type="conv1x1_only")
    assert p2.prunable_params == ["conv2d_2.w_0"] and s2.w("conv2d_2.w_0").shape[2:] == (1, 1)
    before = {n: s2.w(n) for n in UnstructuredPruner.sparse_by_layer(s2.net.main, s2.scope)}
    p2.step()
    assert abs(UnstructuredPruner.total_sparse_conv1x1(s2.net.main, s2.scope) - 0.5) < 1e-9
    for n, w in before.items():
        if n != "conv2d_2.w_0":
            np.testing.assert_array_equal(s2.w(n), w)

    # 5x5 blocks: each 5x5 tile of the first two axes is kept or pruned whole
    s3 = Session(RES, "momentum")
    p3 = s3.pruner(UnstructuredPruner, "ratio", ratio=0.5, sparse_block=(5, 5))
    s3.run()
    p3.step()
    s3.run()
    for n, m in p3.mask_arrays().items():
        for i in range(0, m.shape[0], 5):
            for j in range(0, m.shape[1], 5):
                tile = m[i:i + 5, j:j + 5]
                assert tile.all() or not tile.any(), (n, i, j)
        assert np.all(s3.w(n)[~m] == 0)

    # GMP from resume_iteration 500 of pruning 1000 + tuning 1000 with 20 steps
    cfg = {"stable_iterations": 0, "pruning_iterations": 1000, "tunning_iterations": 1000,
           "resume_iteration": 500, "pruning_steps": 20, "initial_ratio": 0.15}
    sched = GMPSchedule.from_configs(cfg, 0.8)
    s4 = Session(RES, "momentum")
    p4 = s4.pruner(GMPUnstructuredPruner, ratio=0.8, configs=cfg)
    names = p4.prunable_params
    total = sum(s4.w(n).size for n in names)
    seen = []
    for it in range(500, 552):
        s4.run(2)
        p4.step()
        assert p4.ratio == sched.ratio_at(it)
        zeros = sum(int((s4.w(n) == 0).sum()) for n in names)
        assert zeros == round(p4.ratio * total)  # distinct random weights: exact count
        seen.append(p4.ratio)
    assert seen[0] == pytest.approx(0.15 + 0.65 * (1 - 0.5 ** 3)) and len(set(seen)) == 2  # changes at 550
    cfg_end = dict(cfg, resume_iteration=995)
    s5 = Session(RES, "momentum")
    p5 = s5.pruner(GMPUnstructuredPruner, ratio=0.8, configs=cfg_end)
    for it in range(995, 1002):
        p5.step()
    assert p5.ratio == 0.8 and abs(1 - sum(s5.w(n).astype(bool).sum() for n in names) / total - 0.8) < 1e-3


def test_methods_report_and_change_exactly_what_the_seed_documents(static):
    s = Session(MOBILE, "momentum")
    p = s.pruner(UnstructuredPruner, "ratio", ratio=0.4)
    assert p.mode == "ratio" and p.ratio == 0.4 and p.threshold == 0.01 and p.thresholds == {}
    assert set(p.skip_params) == {n for n in UnstructuredPruner.sparse_by_layer(s.net.main, s.scope)
                                  if n.startswith("batch_norm") or len(s.w(n).shape) == 1}
    prunable = {n: s.w(n) for n in p.prunable_params}
    mags = np.sort(np.concatenate([np.abs(w).ravel() for w in prunable.values()]))
    for r in (0.1, 0.5, 1.0):
        assert p.summarize_weights(s.net.main, r) == float(mags[max(0, math.ceil(r * mags.size) - 1)])
    p.update_threshold()  # ratio mode: threshold from the weights, masks untouched
    assert p.threshold == float(mags[round(0.4 * mags.size)])
    assert all(scope_mask(s.scope, v, s.w(n).shape).all() for n, v in p.masks.items())
    p.step()
    every = [s.w(n) for n in UnstructuredPruner.sparse_by_layer(s.net.main, s.scope)]  # BN stats included
    zeros = sum(int((w == 0).sum()) for w in every)
    assert zeros - sum(int((s.w(n) == 0).sum()) for n in p.skip_params) == round(0.4 * mags.size)
    assert density(s.net.main, s.scope) == UnstructuredPruner.total_sparse(s.net.main, s.scope)
    assert sparsity(s.net.main, s.scope) == pytest.approx(zeros / sum(w.size for w in every), abs=1e-12)
    # set_static_masks: the zero pattern becomes the mask
    w = s.w("linear_0.w_0")
    w[:, :3] = 0
    s.scope.find_var("linear_0.w_0").get_tensor().set(w, paddle.CPUPlace())
    p.set_static_masks()
    np.testing.assert_array_equal(p.mask_arrays()["linear_0.w_0"], w != 0)
    # mask_arrays returns copies
    arrs = p.mask_arrays()
    arrs["linear_0.w_0"][:] = False
    assert p.mask_arrays()["linear_0.w_0"].any()
    # skip_params_func replaces the default rule
    s2 = Session(MLP, "momentum")
    p2 = s2.pruner(UnstructuredPruner, "ratio", ratio=0.5, skip_params_func=lambda prog: ["linear_0.w_0"])
    assert "linear_0.w_0" not in p2.prunable_params and "linear_0.b_0" in p2.prunable_params


def test_bad_arguments_and_nan_weights_raise_naming_the_problem(static):
    s = Session(MLP, "momentum")
    with pytest.raises(ValueError, match="mode"):
        s.pruner(UnstructuredPruner, "magic")
    with pytest.raises(ValueError, match="local_sparsity"):
        s.pruner(UnstructuredPruner, "threshold", local_sparsity=True)
    with pytest.raises(ValueError, match="ratio"):
        s.pruner(UnstructuredPruner, "ratio", ratio=1.5)
    with pytest.raises(ValueError, match="configs"):
        s.pruner(GMPUnstructuredPruner, ratio=0.5)
    with pytest.raises(ValueError, match="neither parameters"):
        s.pruner(UnstructuredPruner, "ratio", skip_params_func=lambda prog: ["nope"])
    with pytest.raises(TypeError, match="startup_program"):
        UnstructuredPruner(s.net.main, "ratio", startup_program="x")
    p = s.pruner(UnstructuredPruner, "ratio", ratio=0.5)
    w = s.w("linear_0.w_0")
    w[0, 0] = np.nan
    s.scope.find_var("linear_0.w_0").get_tensor().set(w, paddle.CPUPlace())
    with pytest.raises(ValueError, match="linear_0.w_0.*NaN"):
        p.step()
