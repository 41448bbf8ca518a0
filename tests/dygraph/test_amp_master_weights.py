"""AMP O2: an optimizer with ``multi_precision=True`` keeps an fp32 master weight per float16/bfloat16 parameter and
(on a GPU) writes ``cast(master)`` back at every step, so a mask that reaches only the low-precision weight is undone
by the next ``optimizer.step()``. ``pruner.mask_master_weights(optimizer)`` masks the masters too.

What runs here: Paddle's CPU kernels take only bfloat16 parameters with SGD (no CPU matmul/momentum/adam kernels in
bfloat16/float16), so the model is element-wise and the optimizer SGD, which creates the master weights but (on the
CPU) updates the bfloat16 weight directly and never reads or writes its master. So these tests check that the masks
reach the masters the optimizer holds, in both engines, and emulate the GPU kernel's master update by writing the
master directly; that the GPU optimizer then keeps the zeros is not verified here.
"""
import paddle
import pytest

import paddleslim_dygraph as dy


class Elementwise(paddle.nn.Layer):
    """A bfloat16 parameter used through a float32 cast (the CPU has bfloat16 cast and SGD kernels, not matmul)."""

    def __init__(self):
        super().__init__()
        self.weight = self.create_parameter([16, 8], dtype="bfloat16")

    def forward(self, x):
        return (self.weight.astype("float32") * x).sum()


def setup(engine, monkeypatch, mask_masters):
    monkeypatch.setenv("PADDLESLIM_ENGINE", engine)
    paddle.seed(0)
    model = Elementwise()
    opt = paddle.optimizer.SGD(0.1, parameters=model.parameters(), multi_precision=True)
    model(paddle.randn([16, 8])).backward()  # the first step creates the master weights
    opt.step()
    opt.clear_grad()
    pruner = dy.UnstructuredPruner(model, "ratio", ratio=0.5)
    if mask_masters:
        pruner.mask_master_weights(opt)
    return model, opt, pruner


def revive(master):
    """What a GPU optimizer step does to a pruned entry's master (the CPU SGD kernel leaves masters alone)."""
    with paddle.no_grad():
        paddle.assign(master + 1.0, output=master)


@pytest.mark.parametrize("engine", ["numpy", "paddle"])
def test_masks_reach_the_master_weights(engine, monkeypatch):
    model, opt, pruner = setup(engine, monkeypatch, mask_masters=True)
    pruner.step()
    pruned = ~pruner.masks[model.weight.name].numpy()
    assert pruned.sum() == 64
    master = opt._master_weights[model.weight.name]
    assert master.dtype == paddle.float32
    assert (master.numpy()[pruned] == 0).all() and (master.numpy()[~pruned] != 0).all()
    revive(master)
    pruner.update_params()
    assert (master.numpy()[pruned] == 0).all() and (master.numpy()[~pruned] != 0).all()


@pytest.mark.parametrize("engine", ["numpy", "paddle"])
def test_without_mask_master_weights_the_masters_keep_pruned_values(engine, monkeypatch):
    """The failure the feature prevents (so the test above can fail)."""
    model, opt, pruner = setup(engine, monkeypatch, mask_masters=False)
    pruner.step()
    pruned = ~pruner.masks[model.weight.name].numpy()
    assert (opt._master_weights[model.weight.name].numpy()[pruned] != 0).all()


def test_masters_follow_gmp_quiet_steps_and_armed_forwards(monkeypatch):
    model, opt, first = setup("paddle", monkeypatch, mask_masters=False)
    first.finalize()
    pruner = dy.GMPUnstructuredPruner(model, ratio=0.5, configs=dict(
        stable_iterations=0, pruning_iterations=100, tunning_iterations=1, pruning_steps=2, initial_ratio=0.5,
        resume_iteration=-1))
    pruner.mask_master_weights(opt)
    while pruner.ratio != 0.5:  # the schedule's first steps
        pruner.step()
    pruned = ~pruner.masks[model.weight.name].numpy()
    master = opt._master_weights[model.weight.name]
    x = paddle.randn([16, 8])
    for _ in range(3):
        model(x).backward()  # arms the pruner
        opt.step()
        opt.clear_grad()
        revive(master)
        model(x)  # armed forward: the masks reach the weight and its master
        assert (master.numpy()[pruned] == 0).all()
        assert (model.weight.astype("float32").numpy()[pruned] == 0).all()
        revive(master)
        before = pruner.ratio
        pruner.step()  # a GMP step without a ratio change re-applies the masks
        assert pruner.ratio == before
        assert (master.numpy()[pruned] == 0).all()


def test_mask_master_weights_rejects_a_non_optimizer():
    model = paddle.nn.Linear(4, 4)
    pruner = dy.UnstructuredPruner(model, "ratio", ratio=0.5)
    with pytest.raises(TypeError, match="optimizer must be a paddle.optimizer.Optimizer"):
        pruner.mask_master_weights(object())


def test_fit_masks_the_master_weights_of_its_optimizer():
    """paddle.Model.fit with PruningCallback: the callback hands fit's optimizer to the pruner."""
    from paddleslim_dygraph.hapi import PruningCallback

    class Batches(paddle.io.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            x = paddle.randn([16, 8]).numpy()
            return x, x[:1, :1] * 0

    paddle.seed(0)
    net = Elementwise()
    model = paddle.Model(net)
    opt = paddle.optimizer.SGD(0.1, parameters=net.parameters(), multi_precision=True)
    model.prepare(opt, loss=lambda out, y: out)
    pruner = dy.UnstructuredPruner(net, "ratio", ratio=0.5)
    model.fit(Batches(), batch_size=1, epochs=1, verbose=0, callbacks=[PruningCallback(pruner)])
    pruned = ~pruner.masks[net.weight.name].numpy()
    assert (opt._master_weights[net.weight.name].numpy()[pruned] == 0).all()
