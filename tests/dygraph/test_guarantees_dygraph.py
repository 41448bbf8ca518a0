"""Dygraph guarantees: pruned stays pruned under misuse, and a call that fails changes nothing."""
import os

import numpy as np
import paddle
import pytest

from nets import assert_same
from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner, folded

GMP = dict(stable_iterations=0, pruning_iterations=40, tunning_iterations=10, resume_iteration=0,
           pruning_steps=2, initial_ratio=0.3)


def mlp(seed=0):
    paddle.seed(seed)
    return paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 4))


def snapshot(model, pruner=None):
    """Everything a failed call must leave as it was."""
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    state.update({"buffer:" + k: v.numpy().copy() for k, v in model.named_buffers()})
    # Paddle 3.3 has no public way to list a layer's forward pre-hooks; the count is the one structural observable
    # (the hooks' effect is tested by behaviour elsewhere: armed forwards re-apply the masks)
    state["hooks"] = len(model._forward_pre_hooks)
    if pruner is not None:
        state.update(ratio=pruner.ratio, threshold=pruner.threshold, thresholds=dict(pruner.thresholds),
                     iteration=pruner.cur_iteration)
        state.update({"mask:" + n: m.numpy().copy() for n, m in pruner.masks.items()})
    return state




def train_step(model, opt, seed=0):
    x = paddle.to_tensor(np.random.default_rng(seed).standard_normal((4, 8)).astype("float32"))
    model(x).pow(2).mean().backward()
    opt.step()
    opt.clear_grad()


def pruned_values(model, pruner):
    params = {p.name: p for p in model.parameters()}
    return np.concatenate([params[n].numpy()[~m.numpy()] for n, m in pruner.masks.items()])


# -- one pruner per model ------------------------------------------------------------------------------
def test_second_pruner_on_a_live_model_is_an_error_naming_the_first():
    model = mlp()
    first = UnstructuredPruner(model, "ratio", ratio=0.5)
    first.step()
    before = snapshot(model, first)
    with pytest.raises(ValueError, match="already pruned by UnstructuredPruner .*finalize"):
        UnstructuredPruner(model, "threshold", threshold=0.1)
    with pytest.raises(ValueError, match="already pruned"):  # a sublayer shares the parameters
        GMPUnstructuredPruner(model[0], ratio=0.5, configs=GMP)
    assert_same(before, snapshot(model, first))
    first.finalize()
    second = UnstructuredPruner(model, "ratio", ratio=0.75)  # explicit hand-over
    second.step()
    assert len(model._forward_pre_hooks) == 1
    with pytest.raises(RuntimeError, match="finalize"):
        first.step()


# -- a failed call changes nothing ---------------------------------------------------------------------
def test_constructor_that_raises_on_a_later_layer_changes_nothing():
    model = mlp()
    model[2].weight_mask = paddle.zeros([1])  # the last layer already has the attribute a mask would take
    before = snapshot(model)
    with pytest.raises(ValueError, match="weight_mask"):
        UnstructuredPruner(model, "ratio", ratio=0.5)
    assert_same(before, snapshot(model))
    assert not hasattr(model[0], "weight_mask")


@pytest.mark.parametrize("returned, shown", [(None, "None"), ("0.w_0", "'0.w_0'"), (5, "5"), ([1], r"\[1\]")])
def test_skip_params_func_must_return_names(returned, shown):
    model = mlp()
    before = snapshot(model)
    with pytest.raises(TypeError, match=f"skip_params_func must return .*{shown}"):
        UnstructuredPruner(model, "ratio", ratio=0.5, skip_params_func=lambda m: returned)
    assert_same(before, snapshot(model))


def test_gmp_step_that_raises_changes_nothing():
    model = mlp()
    pruner = GMPUnstructuredPruner(model, ratio=0.8, configs=GMP)
    opt = paddle.optimizer.SGD(0.01, parameters=model.parameters())
    for i in range(20):  # ratio changes at iteration 20
        train_step(model, opt, i)
        pruner.step()
    with paddle.no_grad():
        w = model[2].weight.numpy()
        w[0, 0] = np.nan
        model[2].weight.set_value(w)
    before = snapshot(model, pruner)
    with pytest.raises(ValueError, match=f"{model[2].weight.name}.*NaN"):
        pruner.step()
    assert_same(before, snapshot(model, pruner))


@pytest.mark.parametrize("threshold", [1e39, 3.5e38])
def test_threshold_beyond_float32_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold must fit in float32"):
        UnstructuredPruner(mlp(), "threshold", threshold=threshold)


def test_float64_weights_beyond_float32_range_name_the_parameter():
    model = mlp()
    model.to(dtype="float64")
    with paddle.no_grad():
        w = model[0].weight.numpy()
        w[1, 1] = 1e300
        model[0].weight.set_value(w)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    with pytest.raises(ValueError, match=f"{model[0].weight.name}.*float32 range"):
        pruner.step()


def test_nan_error_names_the_parameter_on_a_tiny_model():
    model = paddle.nn.Linear(3, 2)
    with paddle.no_grad():
        model.weight.set_value(np.array([[1, 2], [np.inf, 3], [4, 5]], "float32"))
    with pytest.raises(ValueError, match=f"{model.weight.name}.*(NaN|Inf)"):
        UnstructuredPruner(model, "ratio", ratio=0.5).step()


# -- pruned stays pruned -------------------------------------------------------------------------------
def test_replaced_weight_is_an_error_not_a_silent_dense_layer():
    model = mlp()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    pruner.step()
    model[0].weight = model[0].create_parameter([8, 16])
    with pytest.raises(RuntimeError, match=r"replaced after the pruner was built.*finalize"):
        pruner.step()


def test_integer_parameters_are_never_pruned():
    class WithTable(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(4, 4)
            self.table = self.create_parameter([4, 4], dtype="int64",
                                               default_initializer=paddle.nn.initializer.Constant(3))

        def forward(self, x):
            return self.fc(x)

    model = WithTable()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    pruner.step()
    assert model.table.name in pruner.skip_params and model.table.name not in pruner.masks
    assert (model.table.numpy() == 3).all()


@pytest.mark.parametrize("save", ["jit", "state_dict"])
def test_saving_right_after_optimizer_step_stores_the_pruned_zeros(tmp_path, save):
    model = mlp()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.6)
    opt = paddle.optimizer.Adam(0.05, parameters=model.parameters())
    train_step(model, opt)
    pruner.step()
    train_step(model, opt, 1)  # revives pruned weights; no pruner.step(), no update_params()
    assert np.count_nonzero(pruned_values(model, pruner)) > 0
    model.eval()
    x = paddle.ones([2, 8])
    if save == "jit":
        path = str(tmp_path / "m")
        paddle.jit.save(model, path, input_spec=[paddle.static.InputSpec([None, 8], "float32")])
        loaded = paddle.jit.load(path)
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    else:
        path = str(tmp_path / "m.pdparams")
        paddle.save(model.state_dict(), path)
        state = paddle.load(path)
        for n, m in pruner.masks.items():
            key = next(k for k, p in model.named_parameters() if p.name == n)
            assert np.all(np.asarray(state[key])[~m.numpy()] == 0)
    assert np.count_nonzero(pruned_values(model, pruner)) == 0


def test_forwards_reapply_masks_only_after_a_backward():
    model = mlp()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    opt = paddle.optimizer.Momentum(0.1, parameters=model.parameters())
    pruner.step()
    name, mask = next(iter(pruner.masks.items()))
    param = next(p for p in model.parameters() if p.name == name)
    idx = tuple(np.argwhere(~mask.numpy())[0])
    # eval forwards after step()/update_params() leave the weights alone (they cost nothing) ...
    with paddle.no_grad():
        w = param.numpy()
        w[idx] = 7.0
        param.set_value(w)
    model(paddle.ones([1, 8]))
    assert param.numpy()[idx] == 7.0
    pruner.update_params()
    # ... while a forward after backward + optimizer step never sees a revived weight (step() forgotten)
    for i in range(3):
        train_step(model, opt, i)
        seen = []
        h = model[0].register_forward_pre_hook(lambda layer, inp: seen.append(pruned_values(model, pruner)))
        model(paddle.ones([1, 8]))
        h.remove()
        assert np.count_nonzero(seen[0]) == 0


def test_folded_detaches_and_reattaches():
    model = mlp()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    pruner.step()
    with folded(model) as pruners:
        assert pruners == [pruner]
        assert not [k for k, _ in model.named_buffers() if k.endswith("_mask")]
        assert len(model._forward_pre_hooks) == 0
    assert len(model._forward_pre_hooks) == 1
    assert sorted(k for k, _ in model.named_buffers()) == ["0.weight_mask", "2.weight_mask"]
    pruner.step()


# -- checkpoints ---------------------------------------------------------------------------------------
def _file_size(obj, path):
    paddle.save(obj, path)
    return os.path.getsize(path)


def test_checkpoint_at_most_a_32nd_larger_than_dense(tmp_path):
    from paddle.vision.models import LeNet

    paddle.seed(0)
    model = LeNet()
    dense = _file_size(model.state_dict(), str(tmp_path / "dense.pdparams"))
    weight_bytes = sum(p.numpy().nbytes for p in model.parameters())
    pruner = GMPUnstructuredPruner(model, ratio=0.9, configs=dict(GMP, resume_iteration=30))
    pruner.step()
    sparse = _file_size(model.state_dict(), str(tmp_path / "sparse.pdparams"))
    state = _file_size(pruner.state_dict(), str(tmp_path / "sparse.pdpruner"))
    assert sparse == dense  # the zeros carry the masks
    assert sparse + state - dense <= weight_bytes / 32
    assert state < 1024


def _run(model, opt, pruner, steps, start=0):
    for i in range(start, start + steps):
        train_step(model, opt, i)
        pruner.step()


@pytest.mark.parametrize("block", [(1, 1), (2, 2)])
def test_gmp_resume_from_state_dicts_is_bit_identical(tmp_path, block):
    def build():
        with paddle.utils.unique_name.guard():  # the optimizer's state is keyed by parameter names
            model = mlp()
        # SGD: Adam's accumulators get process-unique names, so its state cannot move to a second model here
        opt = paddle.optimizer.SGD(0.05, parameters=model.parameters())
        pruner = GMPUnstructuredPruner(model, ratio=0.8, configs=GMP, sparse_block=block)
        return model, opt, pruner

    model, opt, pruner = build()
    _run(model, opt, pruner, 27)  # mid-period: the resumed run must not recompute masks
    for name, obj in (("m", model.state_dict()), ("o", opt.state_dict()), ("p", pruner.state_dict())):
        paddle.save(obj, str(tmp_path / name))
    _run(model, opt, pruner, 30, start=27)

    model2, opt2, pruner2 = build()
    model2.set_state_dict(paddle.load(str(tmp_path / "m")))
    opt2.set_state_dict(paddle.load(str(tmp_path / "o")))
    pruner2.set_state_dict(paddle.load(str(tmp_path / "p")))
    assert pruner2.cur_iteration == 27
    _run(model2, opt2, pruner2, 30, start=27)

    assert (pruner2.ratio, pruner2.cur_iteration, pruner2.threshold) == (
        pruner.ratio, pruner.cur_iteration, pruner.threshold)
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    for a, b in zip(pruner.masks.values(), pruner2.masks.values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_state_dict_keeps_masks_that_zeros_cannot_tell():
    model = mlp()
    with paddle.no_grad():  # exact zeros that ratio 0.25 keeps (more zeros than k): mask True, weight 0
        w = model[0].weight.numpy()
        w[:4] = 0
        model[0].weight.set_value(w)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.05, local_sparsity=True)
    pruner.step()
    state = pruner.state_dict()
    assert list(state["masks"]) == ["0.weight"]  # only the parameter whose mask is not weight != 0
    model2 = mlp(1)
    model2.set_state_dict(model.state_dict())
    pruner2 = UnstructuredPruner(model2, "ratio", ratio=0.05, local_sparsity=True)
    pruner2.set_state_dict(state)
    for a, b in zip(pruner.masks.values(), pruner2.masks.values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert list(pruner2.thresholds.values()) == list(pruner.thresholds.values())


def test_set_state_dict_validates_before_changing_anything():
    model = mlp()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    pruner.step()
    good = pruner.state_dict()
    before = snapshot(model, pruner)
    bad_mask = dict(good, masks={"0.weight": np.zeros(3, np.uint8)})
    for bad, exc in ((dict(good, mode="threshold"), ValueError), ({"ratio": 0.1}, ValueError),
                     (dict(good, prunable=["x"]), ValueError), (bad_mask, ValueError), ([1, 2], TypeError)):
        with pytest.raises(exc):
            pruner.set_state_dict(bad)
        assert_same(before, snapshot(model, pruner))


def test_to_static_training_never_uses_a_revived_weight():
    model = mlp()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.6)
    opt = paddle.optimizer.Adam(0.05, parameters=model.parameters())
    static_model = paddle.jit.to_static(model, full_graph=True)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((4, 8)).astype("float32"))
    for _ in range(3):  # the optimizer revives pruned weights; step() is called only once, at the start
        static_model(x).pow(2).mean().backward()
        opt.step()
        opt.clear_grad()
        if pruner.cur_iteration == 0:
            pruner.step()
        out = static_model(x)
        assert np.count_nonzero(pruned_values(model, pruner)) == 0
        w = {p.name: p.numpy() for p in model.parameters()}
        h = np.maximum(x.numpy() @ w[model[0].weight.name] + w[model[0].bias.name], 0)
        np.testing.assert_allclose(out.numpy(), h @ w[model[2].weight.name] + w[model[2].bias.name], rtol=1e-5,
                                   atol=1e-6)
