"""PruningCallback drives real pruners from paddle.Model.fit: one pruner step per optimizer step (gradient
accumulation, num_iters, AMP), update_params before eval/save, and a resumed fit continues the GMP schedule."""
from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner
from paddleslim_dygraph.hapi import PruningCallback

BATCHES = 15  # per epoch: odd, so accumulation hits hapi's "last batch of the epoch" rule
BATCH = 8
TARGET = 0.8
CONFIGS = {"stable_iterations": 0, "pruning_iterations": 22, "tunning_iterations": 10, "resume_iteration": 0,
           "pruning_steps": 2, "initial_ratio": 0.4}  # ratio changes at iterations 0, 11, 22 (target)


class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(1, 4, 3)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(nn.functional.relu(self.fc1(paddle.flatten(nn.functional.relu(self.conv(x)), 1))))


class CountingSGD(paddle.optimizer.SGD):
    """SGD that counts its updates (hapi calls minimize once per optimizer step, with or without AMP)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.updates = 0

    def minimize(self, *args, **kwargs):
        self.updates += 1
        return super().minimize(*args, **kwargs)


class RecordingGMP(GMPUnstructuredPruner):
    """GMP pruner recording (iteration, ratio) of each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history = []

    def step(self):
        it = self.cur_iteration
        super().step()
        self.history.append((it, self.ratio))


class RecordingPruner(UnstructuredPruner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history = []

    def step(self):
        super().step()
        self.history.append((None, self.ratio))


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCHES * BATCH, 1, 8, 8)).astype("float32")
    y = (x.reshape(len(x), -1) @ rng.standard_normal((64, 3))).argmax(1).astype("int64")[:, None]
    return paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])


DATA = _data()


def _model(pruner_cls=RecordingGMP, amp=None, **pruner_kwargs):
    paddle.seed(1)
    net = Net()
    if pruner_cls is RecordingGMP:
        pruner = RecordingGMP(net, ratio=TARGET, configs=pruner_kwargs.pop("configs", CONFIGS), **pruner_kwargs)
    else:
        pruner = pruner_cls(net, "ratio", ratio=TARGET, **pruner_kwargs)
    model = paddle.Model(net)
    opt = CountingSGD(learning_rate=0.05, parameters=net.parameters())
    model.prepare(opt, nn.CrossEntropyLoss(), paddle.metric.Accuracy(), amp_configs=amp)
    return net, pruner, model, opt


def _fit(model, callback, epochs, k=1, **kwargs):
    model.fit(DATA, batch_size=BATCH, epochs=epochs, accumulate_grad_batches=k, shuffle=False, verbose=0,
              callbacks=[callback], **kwargs)


def _sparsity(pruner):
    params = {p.name: p for p in pruner.model.parameters()}
    zeros = sum(int((params[n].numpy() == 0).sum()) for n in pruner.prunable_params)
    return zeros / sum(int(params[n].size) for n in pruner.prunable_params)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_one_pruner_step_per_optimizer_step_to_target(k):
    net, pruner, model, opt = _model()
    per_epoch = PruningCallback.steps_per_epoch(BATCHES, k)
    epochs = math.ceil(24 / per_epoch)
    cb = PruningCallback(pruner)
    _fit(model, cb, epochs, k)
    assert opt.updates == epochs * per_epoch == cb.global_step == len(pruner.history)
    assert [it for it, _ in pruner.history] == list(range(opt.updates))
    assert [r for _, r in pruner.history] == [pruner.schedule.ratio_at(i) for i in range(opt.updates)]
    assert pruner.ratio == TARGET
    assert abs(_sparsity(pruner) - TARGET) < 1e-3


@pytest.mark.parametrize("num_iters", [9, 15, 20])
def test_num_iters_with_accumulation(num_iters):
    _, pruner, model, opt = _model()
    cb = PruningCallback(pruner)
    _fit(model, cb, 1, 2, num_iters=num_iters)
    assert opt.updates == cb.global_step == len(pruner.history) > 0


@pytest.mark.parametrize("amp", ["O1", {"level": "O1", "init_loss_scaling": 1024.0}, "O2"])
def test_amp(amp):
    # On CPU Paddle 3.3.1 makes auto_cast and GradScaler no-ops (it warns), but hapi still takes its AMP branch
    # (scaler.scale / scaler.minimize): this covers the callback on that path, not float16 arithmetic.
    net, pruner, model, opt = _model(amp=amp)
    cb = PruningCallback(pruner)
    _fit(model, cb, 3, 2)  # 24 optimizer steps
    assert opt.updates == cb.global_step == len(pruner.history) == 24
    assert pruner.ratio == TARGET and abs(_sparsity(pruner) - TARGET) < 1e-3
    assert all(np.isfinite(p.numpy()).all() for p in net.parameters())


def test_plain_ratio_pruner_and_eval_save(tmp_path):
    net, pruner, model, opt = _model(RecordingPruner)
    cb = PruningCallback(pruner)
    _fit(model, cb, 2, 3, save_dir=str(tmp_path))
    assert opt.updates == len(pruner.history) == 10
    saved = paddle.load(str(tmp_path / "final.pdparams"))
    keys = [k for k, p in net.named_parameters() if p.name in set(pruner.prunable_params)]
    zeros = sum(int((saved[k].numpy() == 0).sum()) for k in keys)
    assert abs(zeros / sum(int(saved[k].size) for k in keys) - TARGET) < 1e-3
    # a pruned weight revived behind the pruner's back is re-masked before evaluation
    w = net.fc1.weight
    mask = pruner.masks[w.name].numpy()
    with paddle.no_grad():
        w.set_value(np.full(w.shape, 0.5, "float32"))
    model.evaluate(DATA, batch_size=BATCH, verbose=0, callbacks=[cb])
    assert (w.numpy()[~mask] == 0).all() and (w.numpy()[mask] == 0.5).all()


def test_resume_continues_the_schedule(tmp_path):
    k, epochs = 2, 5  # 8 optimizer steps per epoch; the resume at step 16 falls between ratio changes (11, 22)
    _, full, model, _ = _model()
    _fit(model, PruningCallback(full), epochs, k)
    assert full.ratio == TARGET

    # same process: the same callback keeps counting across fit calls
    _, again, model, _ = _model()
    cb = PruningCallback(again)
    _fit(model, cb, 2, k)
    _fit(model, cb, epochs - 2, k)
    assert again.history == full.history

    # new process: weights + optimizer from model.save, pruner state, and the global step
    net, first, model, _ = _model()
    cb = PruningCallback(first)
    _fit(model, cb, 2, k)
    model.save(str(tmp_path / "ckpt"))
    paddle.save(first.state_dict(), str(tmp_path / "ckpt.pdpruner"))
    steps_done = cb.global_step
    assert steps_done == 2 * PruningCallback.steps_per_epoch(BATCHES, k)
    first.finalize()

    net2, second, model2, _ = _model()
    model2.load(str(tmp_path / "ckpt"))
    second.set_state_dict(paddle.load(str(tmp_path / "ckpt.pdpruner")))
    _fit(model2, PruningCallback(second, global_step=steps_done), epochs - 2, k)
    assert first.history + second.history == full.history
    for a, b in zip(full.model.parameters(), net2.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # without the pruner state the callback seeks the fresh pruner to the global step: same ratios, target reached
    net3, third, model3, _ = _model()
    model3.load(str(tmp_path / "ckpt"))
    _fit(model3, PruningCallback(third, global_step=steps_done), epochs - 2, k)
    assert first.history + third.history == full.history
    assert abs(_sparsity(third) - TARGET) < 1e-3


def test_arguments_and_wrong_network():
    net, pruner, model, _ = _model()
    with pytest.raises(TypeError, match="pruner"):
        PruningCallback(object())
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="global_step"):
            PruningCallback(pruner, global_step=bad)
    with pytest.raises(ValueError, match="num_batches"):
        PruningCallback.steps_per_epoch(0)
    other = paddle.Model(Net())
    other.prepare(paddle.optimizer.SGD(0.1, parameters=other.network.parameters()), nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="network"):
        _fit(other, PruningCallback(pruner), 1)
    assert pruner.history == []


def test_docstring_examples():
    import doctest

    import paddleslim_dygraph.hapi as mod

    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


class LogsSeen(paddle.callbacks.Callback):
    """Records, after every batch, the values the pruning callback put into fit's logs (it runs after it)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, step, logs=None):
        self.seen.append((logs.get("prune_ratio"), logs.get("sparsity")))


def test_ratio_and_measured_sparsity_in_fits_logs_and_progress_bar(capsys):
    _, pruner, model, _ = _model()
    seen = LogsSeen()
    ratios, measured = [], []

    class Measure(paddle.callbacks.Callback):  # brute-force reference, read right after the pruner's step
        def on_train_batch_end(self, step, logs=None):
            ratios.append(pruner.ratio)
            measured.append(_sparsity(pruner))

    model.fit(DATA, batch_size=BATCH, epochs=2, shuffle=False, verbose=2, log_freq=5,
              callbacks=[PruningCallback(pruner), seen, Measure()])
    assert [r for r, _ in seen.seen] == ratios and len(set(ratios)) == 3  # CONFIGS: three ratios in 30 steps
    np.testing.assert_allclose([s for _, s in seen.seen], measured, rtol=0, atol=1e-12)
    # the bar (it runs before the callback) prints the state after the previous optimizer step: the weights the
    # printed batch ran with
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert len(lines) == 6, lines  # steps 5, 10, 15 of each epoch
    for i, ln in enumerate(lines):
        done = (i // 3) * BATCHES + (i % 3 + 1) * 5 - 1  # optimizer steps before this batch's
        assert f"prune_ratio: {ratios[done - 1]:.4f}" in ln and f"sparsity: {measured[done - 1]:.4f}" in ln, ln


def test_threshold_mode_logs_the_threshold():
    paddle.seed(1)
    net = Net()
    pruner = UnstructuredPruner(net, "threshold", threshold=0.05)
    model = paddle.Model(net)
    model.prepare(paddle.optimizer.SGD(0.05, parameters=net.parameters()), nn.CrossEntropyLoss())
    seen = LogsSeen()
    logs = {}

    class Keep(paddle.callbacks.Callback):
        def on_train_batch_end(self, step, l=None):
            logs.update(l)

    model.fit(DATA, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[PruningCallback(pruner), seen,
                                                                                      Keep()])
    assert logs["prune_threshold"] == 0.05  # (hapi reuses one logs dict across fits: other keys may linger)
    assert logs["sparsity"] == _sparsity(pruner) > 0
