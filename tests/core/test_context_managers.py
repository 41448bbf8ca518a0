"""folded() blocks are re-entrant or refuse, in both modes: nested blocks, finalize() inside a block and a second
pruner built inside a block each have one defined outcome (docs/guarantees.md), never a bare KeyError
nor two pruners on the same weights."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

import paddleslim_dygraph as dy
import paddleslim_static as st
from nets import NETS, batch, dygraph_model, scope_array, static_mode, static_net
from paddleslim_dygraph.layers import live_pruners

MLP = NETS["mlp"]


# -- dygraph ------------------------------------------------------------------------------------------------------
def _dygraph():
    model = dygraph_model(MLP, 0)
    pruner = dy.UnstructuredPruner(model, "ratio", ratio=0.5)
    pruner.step()
    return model, pruner


def _mask_buffers(model):
    return sorted(k for k, _ in model.named_buffers() if k.endswith("_mask"))


def _revive_then_forward(model, pruner):
    """A backward + optimizer step revives pruned weights; an attached pruner re-applies its masks at the next
    forward, a detached one does not. Returns how many pruned weights the forward saw nonzero."""
    opt = paddle.optimizer.SGD(0.5, parameters=model.parameters())
    x = paddle.to_tensor(batch(MLP, 4, 1)[0])
    masks = {n: m.numpy().copy() for n, m in pruner.masks.items()}
    model(x).pow(2).mean().backward()
    opt.step()
    opt.clear_grad()
    model(x)
    w = {p.name: p.numpy() for p in model.parameters()}
    return sum(int(np.count_nonzero(w[n][~m])) for n, m in masks.items())


def test_nested_folded_blocks_keep_the_model_folded_until_the_outermost_ends():
    model, pruner = _dygraph()
    attached = _mask_buffers(model)
    with pruner.folded():
        with pruner.folded():
            assert _mask_buffers(model) == []
        assert _mask_buffers(model) == [] and pruner not in live_pruners()  # still folded after the inner block
        with dy.folded(model) as inner:
            assert inner == [pruner]  # the module-level helper sees the folded pruner too
        assert _mask_buffers(model) == []
    assert _mask_buffers(model) == attached and pruner in live_pruners()
    assert _revive_then_forward(model, pruner) == 0  # attached exactly once again: masks re-applied
    with dy.folded(model) as outer:
        with dy.folded(model) as inner:
            assert outer == inner == [pruner]
    assert _mask_buffers(model) == attached


def test_finalize_inside_folded_is_final():
    model, pruner = _dygraph()
    with pruner.folded():
        pruner.finalize()
    assert pruner.finalized and _mask_buffers(model) == [] and pruner not in live_pruners()
    with pytest.raises(RuntimeError, match="finalize"):
        pruner.step()
    with pytest.raises(RuntimeError, match="finalize"):
        with pruner.folded():
            pass
    with dy.folded(model) as pruners:  # the module-level helper: the same outcome
        assert pruners == []
    again = dy.UnstructuredPruner(model, "ratio", ratio=0.5)  # the model is free for a new pruner
    with dy.folded(model):
        again.finalize()
    assert again.finalized and _mask_buffers(model) == []


def test_a_second_pruner_inside_folded_is_refused_and_changes_nothing():
    model, pruner = _dygraph()
    with pruner.folded():
        before = {p.name: p.numpy().copy() for p in model.parameters()}
        with pytest.raises(ValueError, match=r"folded.*after the block"):
            dy.UnstructuredPruner(model, "ratio", ratio=0.3)
        with pytest.raises(ValueError, match="folded"):
            dy.GMPUnstructuredPruner(model.fcs[0], ratio=0.5, configs=dict(stable_iterations=0, pruning_iterations=40,
                                                             tunning_iterations=0, resume_iteration=0,
                                                             pruning_steps=2, initial_ratio=0.1))
        for p in model.parameters():
            np.testing.assert_array_equal(p.numpy(), before[p.name])
        assert _mask_buffers(model) == []
    assert [p for p in live_pruners() if p.model is model] == [pruner]
    assert _revive_then_forward(model, pruner) == 0


# -- static (PIR) -------------------------------------------------------------------------------------------------
class _Static:
    def __init__(self):
        self.net = static_net(MLP, lambda: paddle.optimizer.SGD(0.5))
        self.scope, self.exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(self.scope):
            self.exe.run(self.net.startup)
        self.pruner = st.UnstructuredPruner(self.net.main, "ratio", ratio=0.5, scope=self.scope,
                                            startup_program=self.net.startup)
        self.train()
        self.pruner.step()

    def train(self):
        x, y = batch(MLP, 8, 0)
        with paddle.static.scope_guard(self.scope):
            self.exe.run(self.net.main, feed={"x": x, "y": y}, fetch_list=[self.net.loss])

    def weights(self):
        return {n: scope_array(self.scope, n).copy() for n in self.pruner.prunable_params}

    def revive(self):  # pruned weights nonzero in the scope (e.g. loaded from elsewhere), masks unchanged
        for n, w in self.weights().items():
            self.scope.find_var(n).get_tensor().set(w + np.float32(0.01), paddle.CPUPlace())


@pytest.fixture
def static_run():
    with static_mode():
        yield _Static()


def test_static_nested_folded_restores_each_level(static_run):
    r = static_run
    r.revive()
    original = r.weights()
    masks = r.pruner.mask_arrays()
    with st.folded(r.net.main, r.scope):
        with st.folded(r.net.main, r.scope) as inner:
            assert sorted(inner) == sorted(masks)
        for n, w in r.weights().items():  # the inner block restored the outer one's folded weights
            np.testing.assert_array_equal(w, original[n] * masks[n])
    for n, w in r.weights().items():
        assert w.tobytes() == original[n].tobytes()


def test_static_finalize_inside_folded_is_final(static_run):
    r = static_run
    r.revive()
    original = r.weights()
    masks = r.pruner.mask_arrays()
    with st.folded(r.net.main, r.scope):
        with pytest.raises(ValueError, match="already pruned"):  # one pruner per program and scope, folded or not
            st.UnstructuredPruner(r.net.main, "ratio", ratio=0.3, scope=r.scope, startup_program=r.net.startup)
        r.pruner.finalize()
    assert r.pruner.finalized
    for n, w in r.weights().items():  # finalize() kept weight * mask: the revived values do not come back
        np.testing.assert_array_equal(w, original[n] * masks[n])


def test_static_weights_written_inside_folded_stay(static_run):
    r = static_run
    before = r.weights()
    with st.folded(r.net.main, r.scope):
        r.train()  # an optimizer step (and the mask ops) inside the block
        r.pruner.step()
        trained = r.weights()
    assert any(not np.array_equal(trained[n], before[n]) for n in before)
    for n, w in r.weights().items():
        np.testing.assert_array_equal(w, trained[n])
    for n, m in r.pruner.mask_arrays().items():  # and the masks agree with them
        assert np.count_nonzero(r.weights()[n][~m]) == 0
