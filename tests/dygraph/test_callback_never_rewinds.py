"""PruningCallback never moves a pruner back: by default it continues from the pruner's own iteration (a state
restored with set_state_dict, or resume_iteration), a global_step behind the pruner is refused before training
starts, and so are finalized pruners and non-pruners (nothing trained, nothing changed)."""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn
import pytest

import paddleslim_static
from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner
from paddleslim_dygraph.hapi import PruningCallback

CONFIGS = {"stable_iterations": 0, "pruning_iterations": 22, "tunning_iterations": 10, "resume_iteration": 0,
           "pruning_steps": 2, "initial_ratio": 0.4}  # ratio changes at iterations 0, 11, 22
BATCHES, BATCH = 6, 8


class Recording(GMPUnstructuredPruner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.iterations = []

    def step(self):
        self.iterations.append(self.cur_iteration)
        super().step()


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCHES * BATCH, 8)).astype("float32")
    y = rng.integers(0, 3, (BATCHES * BATCH, 1)).astype("int64")
    return paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])


DATA = _data()


def _setup(configs=CONFIGS):
    paddle.seed(3)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    pruner = Recording(net, ratio=0.8, configs=configs)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.05, parameters=net.parameters()), nn.CrossEntropyLoss())
    return net, pruner, model


def _fit(model, callback, epochs=1):
    model.fit(DATA, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[callback])


def _weights(net):
    return [p.numpy().copy() for p in net.parameters()]


def test_a_restored_pruner_continues_from_its_own_iteration(tmp_path):
    net, full, model = _setup()
    _fit(model, PruningCallback(full), 3)  # 18 optimizer steps, through the ratio change at 11

    net1, first, model1 = _setup()
    _fit(model1, PruningCallback(first), 2)  # 12 steps
    model1.save(str(tmp_path / "ckpt"))
    paddle.save(first.state_dict(), str(tmp_path / "ckpt.pdpruner"))

    net2, second, model2 = _setup()
    model2.load(str(tmp_path / "ckpt"))
    second.set_state_dict(paddle.load(str(tmp_path / "ckpt.pdpruner")))
    callback = PruningCallback(second)  # no global_step: the pruner's iteration (12), not 0
    _fit(model2, callback, 1)
    assert second.iterations == list(range(12, 18)) and callback.global_step == 18
    assert first.iterations + second.iterations == full.iterations
    for a, b in zip(_weights(net), _weights(net2)):
        np.testing.assert_array_equal(a, b)


def test_the_state_may_arrive_after_the_callback_is_built(tmp_path):
    _, first, model1 = _setup()
    _fit(model1, PruningCallback(first), 1)
    state = first.state_dict()
    model1.save(str(tmp_path / "ckpt"))
    _, second, model2 = _setup()
    callback = PruningCallback(second)
    model2.load(str(tmp_path / "ckpt"))
    second.set_state_dict(state)
    _fit(model2, callback, 1)
    assert second.iterations == list(range(6, 12))


def test_a_pruner_built_with_resume_iteration_is_not_moved_back():
    _, pruner, model = _setup(dict(CONFIGS, resume_iteration=11))
    _fit(model, PruningCallback(pruner), 1)
    assert pruner.iterations == list(range(11, 17))


def test_a_global_step_behind_the_pruner_is_refused_before_training():
    net, pruner, model = _setup(dict(CONFIGS, resume_iteration=11))
    before = _weights(net)
    with pytest.raises(ValueError, match=r"global_step=4 is behind .* iteration 11"):
        _fit(model, PruningCallback(pruner, global_step=4), 1)
    assert pruner.iterations == [] and pruner.cur_iteration == 11
    for a, b in zip(before, _weights(net)):
        np.testing.assert_array_equal(a, b)
    # ahead of the pruner is a resume without a pruner state: the pruner is moved forward
    _fit(model, PruningCallback(pruner, global_step=14), 1)
    assert pruner.iterations == list(range(14, 20))


def test_a_finalized_pruner_or_a_non_pruner_is_refused_before_training():
    net, pruner, model = _setup()
    pruner.finalize()
    with pytest.raises(ValueError, match="finalize"):
        PruningCallback(pruner)

    net, pruner, model = _setup()
    callback = PruningCallback(pruner)
    pruner.finalize()  # between building the callback and fit
    before = _weights(net)
    with pytest.raises(ValueError, match="finalize"):
        _fit(model, callback, 1)
    for a, b in zip(before, _weights(net)):  # not one optimizer step was taken
        np.testing.assert_array_equal(a, b)

    for bad in (None, net, model, paddleslim_static.UnstructuredPruner, UnstructuredPruner):
        with pytest.raises(TypeError, match="pruner must be"):
            PruningCallback(bad)
