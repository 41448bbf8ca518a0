"""A pruner's saved state is validated as a whole before anything is applied, in both modes: every key, type and
range, the provenance (the configuration of the pruner that wrote it) and that the model's weights are the ones it
was saved with (so pruner.set_state_dict before model.set_state_dict raises); the masks it restores are in force
before the next forward / exe.run; version-1 states are still read."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

import paddleslim_dygraph as dy
import paddleslim_static as st
from nets import NETS, assert_same, batch, dygraph_model, scope_array, static_mode, static_net

MLP = NETS["mlp"]
GMP = dict(stable_iterations=0, pruning_iterations=40, tunning_iterations=10, resume_iteration=0, pruning_steps=2,
           initial_ratio=0.3)


class Dygraph:
    """A dygraph MLP and its pruner."""

    def __init__(self, seed=0, gmp=False, **kw):
        self.model = dygraph_model(MLP, seed)
        self.opt = paddle.optimizer.SGD(0.1, parameters=self.model.parameters())
        if gmp:
            self.pruner = dy.GMPUnstructuredPruner(self.model, ratio=kw.pop("ratio", 0.8), configs=kw.pop("configs", GMP),
                                                   **kw)
        else:
            self.pruner = dy.UnstructuredPruner(self.model, kw.pop("mode", "ratio"), ratio=kw.pop("ratio", 0.5), **kw)

    def train(self, steps=2, prune=True):
        for i in range(steps):
            x, _ = batch(MLP, 8, i)
            self.model(paddle.to_tensor(x)).pow(2).mean().backward()
            self.opt.step()
            self.opt.clear_grad()
            if prune:
                self.pruner.step()

    def weights(self):  # the raw parameters (no state-dict hook)
        return {p.name: p.numpy().copy() for p in self.model.parameters()}

    def load_weights(self, other):
        for p, q in zip(self.model.parameters(), other.model.parameters()):
            p.set_value(q.numpy())

    def revive(self):
        for p in self.model.parameters():
            p.set_value(p.numpy() + 0.01)

    def forward(self, x):
        return self.model(paddle.to_tensor(x)).numpy()

    def snapshot(self):
        out = {"w:" + k: v for k, v in self.weights().items()}
        out.update({"m:" + k: m.numpy().copy() for k, m in self.pruner.masks.items()})
        p = self.pruner
        out.update(ratio=p.ratio, threshold=p.threshold, thresholds=dict(p.thresholds), it=p.cur_iteration)
        return out


class Static:
    """The same MLP as a PIR program with SGD, in its own scope, and its pruner."""

    def __init__(self, seed=0, gmp=False, **kw):
        self.net = static_net(MLP, lambda: paddle.optimizer.SGD(0.1))
        self.scope, self.exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(self.scope):
            self.exe.run(self.net.startup)
        rng = np.random.default_rng(seed)  # seeded weights, like the dygraph model's
        for p in self.net.main.global_block().all_parameters():
            t = self.scope.find_var(p.name).get_tensor()
            t.set(rng.standard_normal(np.array(t).shape).astype("float32") * 0.3, paddle.CPUPlace())
        common = dict(scope=self.scope, startup_program=self.net.startup)
        if gmp:
            self.pruner = st.GMPUnstructuredPruner(self.net.main, ratio=kw.pop("ratio", 0.8),
                                                   configs=kw.pop("configs", GMP), **common, **kw)
        else:
            self.pruner = st.UnstructuredPruner(self.net.main, kw.pop("mode", "ratio"), ratio=kw.pop("ratio", 0.5),
                                                **common, **kw)

    def _names(self):
        return [p.name for p in self.net.main.global_block().all_parameters()]

    def train(self, steps=2, prune=True):
        for i in range(steps):
            x, y = batch(MLP, 8, i)
            with paddle.static.scope_guard(self.scope):
                self.exe.run(self.net.main, feed={"x": x, "y": y}, fetch_list=[self.net.loss])
            if prune:
                self.pruner.step()

    def weights(self):
        return {n: scope_array(self.scope, n).copy() for n in self._names()}

    def load_weights(self, other):
        for n, w in other.weights().items():
            self.scope.find_var(n).get_tensor().set(w, paddle.CPUPlace())

    def revive(self):
        for n, w in self.weights().items():
            self.scope.find_var(n).get_tensor().set(w + np.float32(0.01), paddle.CPUPlace())

    def forward(self, x):  # the eval program: no mask ops, so it computes with what the scope holds
        with paddle.static.scope_guard(self.scope):
            y = np.zeros((len(x), 1), "int64")
            return self.exe.run(self.net.test, feed={"x": x, "y": y}, fetch_list=[self.net.out_test])[0]

    def snapshot(self):
        out = {"w:" + k: v for k, v in self.weights().items()}
        out.update({"m:" + k: m for k, m in self.pruner.mask_arrays().items()})
        p = self.pruner
        out.update(ratio=p.ratio, threshold=p.threshold, thresholds=dict(p.thresholds), it=p.cur_iteration)
        return out


@pytest.fixture(params=["dygraph", "static"])
def mode(request):
    if request.param == "dygraph":
        yield Dygraph
    else:
        with static_mode():
            yield Static


def _first_key(state):
    return state["prunable"][0]


def _bad_states(good):
    k = _first_key(good)
    cases = [
        ("threshold", float("nan"), ValueError), ("threshold", -0.5, ValueError), ("threshold", 1e39, ValueError),
        ("threshold", "0.1", TypeError), ("threshold", None, TypeError),
        ("iteration", -3, ValueError), ("iteration", 2.5, TypeError), ("iteration", "2", TypeError),
        ("iteration", True, TypeError),
        ("ratio", "0.5", TypeError), ("ratio", 1.0, ValueError), ("ratio", float("nan"), ValueError),
        ("ratio", 0.25, ValueError),  # a valid ratio, but not this pruner's
        ("version", "2", ValueError), ("version", 3, ValueError), ("version", 2.0, ValueError),
        ("version", None, ValueError), ("version", True, ValueError),
        ("mode", "threshold", ValueError), ("mode", 7, ValueError),
        ("prunable", good["prunable"][::-1], ValueError), ("prunable", "abc", TypeError),
        ("masks", {k: np.zeros(3, np.uint8)}, ValueError),
        ("masks", {k: np.ones((2, 2), bool)}, ValueError),
        ("masks", {"no.such.param": np.zeros(1, np.uint8)}, ValueError),
        ("masks", {k: [1, 2, 3]}, TypeError), ("masks", [], TypeError),
        # per-parameter thresholds into a global pruner (only layers the collapse guard protected have one, below
        # the global threshold)
        ("thresholds", {k: good["threshold"] + 0.1}, ValueError),
        ("thresholds", {k: "x"}, TypeError),
        ("config", dict(good["config"], sparse_block=[2, 2]), ValueError),
        ("config", dict(good["config"], bogus=1), ValueError), ("config", "ratio", TypeError),
        ("fingerprint", {}, ValueError), ("fingerprint", dict(good["fingerprint"], **{k: [1, 2, 3]}), TypeError),
        ("fingerprint", dict(good["fingerprint"], **{k: [-1, 0]}), ValueError),
    ]
    return [(key, dict(good, **{key: value}), exc) for key, value, exc in cases] + [
        ("version", {x: v for x, v in good.items() if x != "fingerprint"}, ValueError),  # missing key
        ("surprise", dict(good, surprise=1), ValueError),  # unknown key
        ("state", [1, 2], TypeError),
    ]


def test_every_bad_key_type_and_range_is_refused_and_changes_nothing(mode):
    run = mode()
    run.train()
    good = run.pruner.state_dict()
    assert good["version"] == 2
    before = run.snapshot()
    for key, bad, exc in _bad_states(good):
        with pytest.raises(exc, match=key) as info:
            run.pruner.set_state_dict(bad)
        assert "\n" not in str(info.value)
        assert_same(before, run.snapshot())
    run.pruner.set_state_dict(good)  # the good state still loads
    assert_same(before, run.snapshot())


def test_a_bad_threshold_never_wipes_the_model(mode):
    """The issue's worst case: a threshold-mode state with threshold 1e30 / NaN would zero every weight at step()."""
    run = mode(mode="threshold", threshold=0.05)
    run.train(1)
    good = run.pruner.state_dict()
    for bad in (1e39, float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="threshold"):
            run.pruner.set_state_dict(dict(good, threshold=bad))
    run.pruner.step()
    w = run.weights()
    assert all(np.count_nonzero(w[n]) > 0 for n in run.pruner.prunable_params)


@pytest.mark.parametrize("theirs, ours, key", [
    (dict(ratio=0.5), dict(ratio=0.6), "ratio"),
    (dict(ratio=0.5), dict(ratio=0.5, local_sparsity=True), "local_sparsity"),
    (dict(ratio=0.5), dict(ratio=0.5, sparse_block=[2, 1]), "sparse_block"),
    (dict(ratio=0.5), dict(ratio=0.5, sparse_pattern="2:4"), "sparse_pattern"),
    (dict(gmp=True, ratio=0.8), dict(gmp=True, ratio=0.7), "ratio"),
    (dict(gmp=True), dict(gmp=True, configs=dict(GMP, initial_ratio=0.2)), "schedule"),
    (dict(gmp=True), dict(gmp=True, configs=dict(GMP, pruning_steps=3)), "schedule"),
    (dict(gmp=True), dict(ratio=0.8), "schedule"),
])
def test_a_state_from_another_configuration_is_an_error_naming_the_key_and_both_values(mode, theirs, ours, key):
    a = mode(**theirs)
    a.train()
    state = a.pruner.state_dict()
    b = mode(**ours)
    b.load_weights(a)
    before = b.snapshot()
    with pytest.raises(ValueError, match=key) as info:
        b.pruner.set_state_dict(state)
    assert_same(before, b.snapshot())
    if key not in ("mode", "schedule") and "config" in str(info.value):
        theirs_value = state["config"][key]
        ours_value = b.pruner.state_dict()["config"][key]
        assert repr(theirs_value) in str(info.value) and repr(ours_value) in str(info.value)


def test_another_resume_iteration_is_not_another_schedule(mode):
    a = mode(gmp=True)
    a.train(3)
    assert "resume_iteration" not in a.pruner.state_dict()["config"]["schedule"]
    b = mode(gmp=True, configs=dict(GMP, resume_iteration=25))
    b.load_weights(a)
    b.pruner.set_state_dict(a.pruner.state_dict())
    assert b.pruner.cur_iteration == 3 and b.pruner.ratio == a.pruner.ratio


def test_pruner_state_before_the_model_weights_raises_and_after_works(mode, tmp_path):
    a = mode()
    a.train(3)
    state = a.pruner.state_dict()
    b = mode(seed=1)
    before = b.snapshot()
    with pytest.raises(ValueError, match=r"fingerprint.*load the model's weights"):
        b.pruner.set_state_dict(state)  # b still holds its own (dense) weights
    assert_same(before, b.snapshot())
    b.load_weights(a)
    b.pruner.set_state_dict(state)
    for n, m in a.snapshot().items():
        if n.startswith(("w:", "m:")):
            np.testing.assert_array_equal(b.snapshot()[n], m, err_msg=n)
    # weights of another checkpoint of the same sparsity: the zero pattern differs, same count per parameter
    d = mode(seed=2, local_sparsity=True)
    d.train(2)
    e = mode(seed=3, local_sparsity=True)
    e.train(2)
    with pytest.raises(ValueError, match="zero pattern"):
        e.pruner.set_state_dict(d.pruner.state_dict())


def test_restored_masks_are_in_force_before_the_next_forward(mode):
    a = mode()
    a.train(2)
    a.revive()  # pruned weights come back (dygraph: an optimizer step before any forward); the masks stay
    state = a.pruner.state_dict()
    assert state["masks"], "the revived weights make the masks differ from weight != 0: stored exactly"
    masks = {n: m for n, m in a.snapshot().items() if n.startswith("m:")}
    b = mode(seed=1)
    b.train(1)  # a live, stepped pruner (dygraph: disarmed, so no forward re-applies masks on its own)
    b.load_weights(a)  # the raw (revived) weights
    b.pruner.set_state_dict(state)
    w = b.weights()
    for n in b.pruner.prunable_params:
        assert np.count_nonzero(w[n][~masks["m:" + n]]) == 0, n
    x, _ = batch(MLP, 4, 7)
    h = x
    names = [p for p in sorted(w) if w[p].ndim == 2]
    for i, n in enumerate(names):  # brute force forward over the masked weights (MLP: Linear + ReLU)
        bias = next(v for k, v in w.items() if v.ndim == 1 and v.shape[0] == w[n].shape[1] and
                    k.split(".")[0] == n.split(".")[0])
        h = h @ w[n] + bias
        if i < len(names) - 1:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(b.forward(x), h, rtol=1e-5, atol=1e-5)


def test_version_1_states_are_still_read_and_checked(mode):
    a = mode(gmp=True)
    a.train(3)
    v2 = a.pruner.state_dict()
    v1 = {k: v for k, v in v2.items() if k not in ("config", "fingerprint")}
    v1["version"] = 1
    b = mode(gmp=True)
    b.load_weights(a)
    with pytest.raises(ValueError, match=r"state\['ratio'\].*schedule"):  # a ratio this schedule never gives there
        b.pruner.set_state_dict(dict(v1, ratio=0.5))
    with pytest.raises(ValueError, match="unknown keys"):  # version 1 with version-2 keys is not a version-1 state
        b.pruner.set_state_dict(dict(v2, version=1))
    b.pruner.set_state_dict(v1)
    assert (b.pruner.cur_iteration, b.pruner.ratio, b.pruner.threshold) == (3, a.pruner.ratio, a.pruner.threshold)


def test_a_state_survives_paddle_save_and_load(mode, tmp_path):
    a = mode(local_sparsity=True)
    a.train(2)
    a.revive()  # exact masks stored: paddle.load hands them back as Tensors (static mode: DenseTensors)
    paddle.save(a.pruner.state_dict(), str(tmp_path / "p.pdpruner"))
    loaded = paddle.load(str(tmp_path / "p.pdpruner"))
    assert loaded["masks"] and not any(isinstance(v, np.ndarray) for v in loaded["masks"].values())
    assert isinstance(loaded["fingerprint"], dict) and loaded["config"]["local_sparsity"] is True
    b = mode(seed=1, local_sparsity=True)
    b.load_weights(a)
    b.pruner.set_state_dict(loaded)
    assert b.pruner.thresholds == a.pruner.thresholds and b.pruner.threshold == a.pruner.threshold
