"""Dygraph pruners: options, masks as buffers, the forward guarantee, GMP resume, errors, real training."""
import os

import numpy as np
import paddle
import pytest
from paddle.vision.models import LeNet, mobilenet_v1

from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner, density, sparsity

import paths
import reference as ref

GMP = dict(stable_iterations=0, pruning_iterations=60, tunning_iterations=20, resume_iteration=0,
           pruning_steps=4, initial_ratio=0.2)


def weights_of(model, names):
    by_name = {p.name: p for p in model.parameters()}
    return {n: by_name[n].numpy() for n in names}


def lenet(seed=0):
    paddle.seed(seed)
    return LeNet(num_classes=10)


def test_masks_are_bool_buffers_and_checkpoints_carry_only_the_zeros():
    model = lenet()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.6)
    pruner.step()
    buffers = {k for k, _ in model.named_buffers()}
    assert sorted(k for k in buffers if k.endswith("_mask")) == [
        "fc.0.weight_mask", "fc.1.weight_mask", "fc.2.weight_mask", "features.0.weight_mask",
        "features.3.weight_mask"]
    assert all(m.dtype == paddle.bool for m in pruner.masks.values())
    assert not [k for k in model.state_dict() if k.endswith("_mask")]  # the zeros carry the masks
    # a fresh model + pruner restores masks, threshold and weights from the two state dicts
    sd, psd = model.state_dict(), pruner.state_dict()
    assert psd["masks"] == {}  # every mask is exactly weight != 0: nothing stored
    model2 = lenet(seed=1)
    pruner2 = UnstructuredPruner(model2, "ratio", ratio=0.6)
    model2.set_state_dict(sd)
    pruner2.set_state_dict(psd)
    assert pruner2.threshold == pruner.threshold
    for (n, a), (n2, b) in zip(pruner.masks.items(), pruner2.masks.items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # mask memory: 1 byte per element, a quarter of the float32 mask PaddleSlim keeps
    mask_bytes = sum(m.numpy().nbytes for m in pruner.masks.values())
    weight_bytes = sum(w.nbytes for w in weights_of(model, pruner.masks).values())
    assert mask_bytes * 4 == weight_bytes


def test_step_zeroes_exactly_the_reference_mask():
    model = lenet()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.7)
    before = weights_of(model, pruner.masks)
    t = ref.ratio_threshold(list(before.values()), 0.7)
    pruner.step()
    assert np.float32(pruner.threshold) == t and pruner.thresholds == {}
    after = weights_of(model, pruner.masks)
    for n, w in before.items():
        keep = np.abs(w) >= t
        np.testing.assert_array_equal(pruner.masks[n].numpy(), keep)
        np.testing.assert_array_equal(after[n], np.where(keep, w, 0))


def test_forward_never_sees_revived_weights():
    model = lenet()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.8)
    pruner.step()
    masks = {n: m.numpy() for n, m in pruner.masks.items()}
    seen = []

    def spy(layer, inputs):  # runs after the pruner's model-level hook
        w = layer.weight.numpy()
        seen.append(int(np.count_nonzero(w[~masks[layer.weight.name]])))

    model.fc[0].register_forward_pre_hook(spy)
    opt = paddle.optimizer.Adam(0.05, parameters=model.parameters())
    x = paddle.rand([4, 1, 28, 28])
    for _ in range(3):  # optimizer runs, the user forgets pruner.step()
        model(x).sum().backward()
        opt.step()
        opt.clear_grad()
        assert np.count_nonzero(model.fc[0].weight.numpy()[~masks[model.fc[0].weight.name]]) > 0
    model(x)
    assert seen and all(c == 0 for c in seen)


def test_threshold_mode_masks_from_construction_weights_untouched():
    model = lenet()
    w0 = weights_of(model, [model.fc[0].weight.name])
    pruner = UnstructuredPruner(model, "threshold", threshold=0.1)
    name = model.fc[0].weight.name
    np.testing.assert_array_equal(pruner.masks[name].numpy(), np.abs(w0[name]) >= np.float32(0.1))
    np.testing.assert_array_equal(model.fc[0].weight.numpy(), w0[name])  # until a forward/step
    pruner.step()
    assert pruner.threshold == 0.1


def test_local_sparsity_prunes_each_parameter_at_ratio():
    model = lenet()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.45, local_sparsity=True)
    before = weights_of(model, pruner.masks)
    pruner.step()
    for n, w in before.items():
        assert np.float32(pruner.thresholds[n]) == ref.ratio_threshold([w], 0.45)
        assert int((~pruner.masks[n].numpy()).sum()) == round(0.45 * w.size)


@pytest.mark.parametrize("block", [(2, 2), (4, 1), (5, 5)])
def test_sparse_block_masks_constant_per_block(block):
    model = lenet()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5, sparse_block=block)
    before = weights_of(model, pruner.masks)
    t = ref.ratio_threshold(list(before.values()), 0.5, block)
    pruner.step()
    assert np.float32(pruner.threshold) == t
    for n, w in before.items():
        np.testing.assert_array_equal(pruner.masks[n].numpy(), ref.element_scores(w, block) >= t)


def test_skip_params_func_by_param_and_layer_name():
    model = lenet()
    fc0 = model.fc[0]
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5,
                                skip_params_func=lambda m: [fc0.weight.name, m.features[0].full_name()])
    assert fc0.weight.name in pruner.skip_params
    assert model.features[0].weight.name not in pruner.masks
    assert model.fc[0].bias.name in pruner.masks  # the user's function replaced the default rule
    with pytest.raises(ValueError, match="neither parameters nor layers.*nope"):
        UnstructuredPruner(lenet(), "ratio", skip_params_func=lambda m: ["nope"])


def test_norm_params_skipped_and_conv1x1_only():
    paddle.seed(0)
    model = mobilenet_v1(scale=0.25, num_classes=10)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    params = {p.name: p for p in model.parameters()}
    assert all(len(params[n].shape) > 1 for n in pruner.masks)
    assert not any("batch_norm" in n for n in pruner.masks)
    c11 = UnstructuredPruner(mobilenet_v1(scale=0.25, num_classes=10), "ratio", ratio=0.5,
                             prune_params_type="conv1x1_only")
    shapes = [tuple(m.shape) for m in c11.masks.values()]
    assert shapes and all(len(s) == 4 and s[2:] == (1, 1) for s in shapes)
    c11.step()
    assert UnstructuredPruner.total_sparse_conv1x1(c11.model) == pytest.approx(0.5, abs=1e-3)


def test_set_static_masks_keeps_pattern_and_finalize():
    model = lenet()
    with paddle.no_grad():
        for p in model.parameters():
            if len(p.shape) > 1:
                p.set_value(p * (paddle.rand(p.shape) > 0.3).astype("float32"))
    pattern = {p.name: p.numpy() != 0 for p in model.parameters() if len(p.shape) > 1}
    pruner = UnstructuredPruner(model, "ratio", ratio=0.1)
    pruner.set_static_masks()
    opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
    model(paddle.rand([2, 1, 28, 28])).sum().backward()
    opt.step()
    pruner.update_params()
    for p in model.parameters():
        if p.name in pattern:
            np.testing.assert_array_equal(p.numpy() != 0, pattern[p.name])
    pruner.finalize()
    assert not any(k.endswith("_mask") for k in model.state_dict())
    model(paddle.rand([2, 1, 28, 28]))  # no hook left; still runs
    with pytest.raises(RuntimeError, match="finalize"):
        pruner.step()


def test_density_helpers_and_sparse_by_layer():
    model = lenet()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    pruner.step()
    by_layer = UnstructuredPruner.sparse_by_layer(model)
    assert set(by_layer) == {p.name for p in model.parameters()}
    for p in model.parameters():
        assert by_layer[p.name] == np.count_nonzero(p.numpy()) / p.size
    assert sparsity(model) == pytest.approx(1 - density(model))
    assert UnstructuredPruner.total_sparse(model) == density(model)


def test_gmp_follows_schedule_and_resume_matches_uninterrupted():
    model = lenet()
    pruner = GMPUnstructuredPruner(model, ratio=0.8, configs=GMP)
    ratios = []
    for it in range(40):
        pruner.step()
        ratios.append(pruner.ratio)
        if it == 24:
            snapshot = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    assert ratios[0] == pytest.approx(0.2) and ratios == sorted(ratios)
    assert pruner.ratio == pruner.schedule.ratio_at(39)
    # resume at 25 from the weights of iteration 24: same ratio, thresholds, masks as never stopping
    resumed_model = lenet(seed=5)
    resumed = GMPUnstructuredPruner(resumed_model, ratio=0.8, configs=dict(GMP, resume_iteration=25))
    resumed_model.set_state_dict({k: paddle.to_tensor(v) for k, v in snapshot.items()})
    assert resumed.ratio == pruner.schedule.ratio_at(24)
    for _ in range(15):
        resumed.step()
    assert resumed.ratio == pruner.ratio and resumed.cur_iteration == pruner.cur_iteration == 40
    assert resumed.threshold == pruner.threshold
    assert len(resumed.masks) == len(pruner.masks)
    for a, b in zip(resumed.masks.values(), pruner.masks.values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_gmp_recomputes_only_when_ratio_changes():
    model = lenet()
    pruner = GMPUnstructuredPruner(model, ratio=0.8, configs=GMP)
    rng = np.random.default_rng(0)
    changes, last = [], None
    for _ in range(80):
        with paddle.no_grad():  # weights drift between steps, as in training: a recompute moves the threshold
            for p in model.parameters():
                p.set_value(p.numpy() * (1 + 0.01 * rng.standard_normal(p.shape)).astype("float32"))
        masks_before = {n: m.numpy().copy() for n, m in pruner.masks.items()}
        pruner.step()
        if pruner.threshold != last:
            changes.append(pruner.cur_iteration - 1)
        else:  # no recompute: the masks did not move either
            for n, m in pruner.masks.items():
                np.testing.assert_array_equal(m.numpy(), masks_before[n])
        last = pruner.threshold
    assert changes == [0, 15, 30, 45, 60]


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(mode="ratioo"), ValueError, "mode must be one of"),
    (dict(mode=None), TypeError, "mode must be a str"),
    (dict(mode="ratio", ratio=1.0), ValueError, r"ratio must be in \[0, 1\); got 1.0"),
    (dict(mode="ratio", ratio=-0.1), ValueError, "ratio"),
    (dict(mode="ratio", ratio=float("nan")), ValueError, "ratio"),
    (dict(mode="ratio", ratio="0.5"), TypeError, "ratio"),
    (dict(mode="threshold", threshold=-1), ValueError, "threshold must be finite and >= 0; got -1"),
    (dict(mode="threshold", threshold=float("nan")), ValueError, "threshold"),
    (dict(mode="threshold", threshold=float("inf")), ValueError, "threshold"),
    (dict(mode="ratio", sparse_block=(0, 2)), ValueError, "sparse_block"),
    (dict(mode="ratio", sparse_block=(2,)), TypeError, "sparse_block"),
    (dict(mode="ratio", sparse_block=(1.5, 2)), TypeError, "sparse_block"),
    (dict(mode="ratio", prune_params_type="conv3x3"), ValueError, "prune_params_type"),
    (dict(mode="threshold", local_sparsity=True), ValueError, "local_sparsity"),
    (dict(mode="ratio", local_sparsity=1), TypeError, "local_sparsity"),
    (dict(mode="ratio", skip_params_func="fc"), TypeError, "skip_params_func"),
])
def test_bad_arguments(kwargs, exc, match):
    model = lenet()
    with pytest.raises(exc, match=match):
        UnstructuredPruner(model, **kwargs)
    assert not any(k.endswith("_mask") for k in model.state_dict())  # no side effects on failure


def test_nothing_to_prune_and_not_a_model():
    with pytest.raises(ValueError, match="nothing to prune"):
        UnstructuredPruner(paddle.nn.Sequential(paddle.nn.BatchNorm1D(4)), "ratio")
    with pytest.raises(TypeError, match="model must be a paddle.nn.Layer"):
        UnstructuredPruner("lenet", "ratio")
    with pytest.raises(ValueError, match="configs is required"):
        GMPUnstructuredPruner(lenet(), ratio=0.5)


def test_nan_weight_in_ratio_mode_raises():
    model = lenet()
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    with paddle.no_grad():
        w = model.fc[1].weight
        arr = w.numpy()
        arr[0, 0] = np.nan
        w.set_value(arr)
    with pytest.raises(ValueError, match="NaN"):
        pruner.step()


def _digits_28(n=256):
    data = np.load(os.path.join(paths.ROOT, "tools", "data", "digits.npz"))
    img = data["images"][:n].astype(np.float32) / 16.0
    img = np.pad(np.kron(img, np.ones((3, 3), np.float32)), ((0, 0), (2, 2), (2, 2)))
    return img[:, None], data["target"][:n].astype(np.int64)


@pytest.mark.parametrize("opt_name", ["SGD", "Momentum", "Adam"])
def test_real_training_reaches_and_keeps_target(opt_name):
    x, y = _digits_28()
    model = lenet()
    kw = dict(learning_rate=0.002) if opt_name == "Adam" else dict(learning_rate=0.05)
    opt = getattr(paddle.optimizer, opt_name)(parameters=model.parameters(), **kw)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.75)
    loss_fn = paddle.nn.CrossEntropyLoss()
    losses = []
    for epoch in range(4):
        for i in range(0, len(x), 32):
            loss = loss_fn(model(paddle.to_tensor(x[i:i + 32])), paddle.to_tensor(y[i:i + 32]))
            loss.backward()
            opt.step()
            opt.clear_grad()
            pruner.step()
            ws = weights_of(model, pruner.masks)
            n = sum(w.size for w in ws.values())
            zeros = sum(int((w == 0).sum()) for w in ws.values())
            assert zeros >= round(0.75 * n)  # target reached after every step (ties at 0 may add more)
            losses.append(float(loss))
    assert np.mean(losses[-8:]) < np.mean(losses[:8])  # it still learns


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_low_and_high_precision_weights(dtype):
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(16, 16), paddle.nn.Linear(16, 4))
    model.to(dtype=dtype)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.5)
    params = {p.name: p for p in model.parameters() if p.name in pruner.masks}
    as_f32 = {n: np.asarray(paddle.cast(p, "float32").numpy()) for n, p in params.items()}
    pruner.step()
    assert np.float32(pruner.threshold) == ref.ratio_threshold(list(as_f32.values()), 0.5)
    for n, p in params.items():
        assert p.dtype == getattr(paddle, dtype)
        after = paddle.cast(p, "float32").numpy()
        keep = np.abs(as_f32[n]) >= np.float32(pruner.threshold)
        np.testing.assert_array_equal(after, np.where(keep, as_f32[n], 0))


def test_summarize_weights_of_another_model_uses_the_default_rule():
    pruner = UnstructuredPruner(lenet(), "ratio", ratio=0.5, prune_params_type=None,
                                skip_params_func=lambda m: [m.fc[0].weight.name])
    other = lenet(seed=3)
    ws = [p.numpy() for p in other.parameters() if len(p.shape) > 1]  # default rule: fc[0] is not skipped there
    assert pruner.summarize_weights(other, 0.3) == ref.summarize(ws, 0.3)
    with pytest.raises(TypeError, match="paddle.nn.Layer"):
        pruner.summarize_weights("lenet", 0.3)
