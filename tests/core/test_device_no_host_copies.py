"""Device mode keeps weights and masks where they live: with the Paddle engine (``PADDLESLIM_ENGINE=paddle``, forced
on this CPU-only machine) no weight or mask is converted to numpy or written back; a ratio step moves a few scalars
whatever the model size; a GMP step without a ratio change, an armed forward and the state-dict hook move nothing;
read-only calls write nothing. The transfers are counted by ``paddleslim_static.traffic`` (the real Paddle calls run,
they are only counted), and the same meter shows the numpy/C engine reading every weight, so the test can fail.
"""
import numpy as np
import paddle
import pytest

import paddleslim_dygraph as dy
import paddleslim_static as st
from nets import NETS, batch, dygraph_model, scope_array, scope_mask, static_mode, static_net
from paddleslim_static.traffic import host_traffic
from paths import ROOT

GMP = dict(stable_iterations=0, pruning_iterations=22, tunning_iterations=2, pruning_steps=2, initial_ratio=0.2,
           resume_iteration=-1)


def mlp(width):
    paddle.seed(0)
    return paddle.nn.Sequential(paddle.nn.Linear(32, width), paddle.nn.ReLU(), paddle.nn.Linear(width, width),
                                paddle.nn.ReLU(), paddle.nn.Linear(width, 10))


def train_once(model, opt, x):
    model(x).mean().backward()
    opt.step()
    opt.clear_grad()


def shapes_of(model, pruner):
    return {tuple(p.shape) for p in model.parameters() if p.name in pruner.prunable_params}


@pytest.fixture
def device_engine(monkeypatch):
    monkeypatch.setenv("PADDLESLIM_ENGINE", "paddle")


@pytest.mark.parametrize("kw", [dict(), dict(sparse_block=(2, 2)), dict(local_sparsity=True)])
def test_ratio_step_moves_a_few_scalars_whatever_the_model_size(device_engine, kw):
    moved = []
    for width in (64, 256):
        model = mlp(width)
        pruner = dy.UnstructuredPruner(model, "ratio", ratio=0.6, **kw)
        opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
        train_once(model, opt, paddle.randn([4, 32]))
        with host_traffic() as meter:
            pruner.step()
        assert not meter.of("to_device") and not meter.of("host_view"), meter.events  # nothing written back
        weight_shapes = shapes_of(model, pruner)
        assert all(e.shape not in weight_shapes for e in meter.events), meter.events  # no weight or mask came over
        assert 0 < meter.bytes <= 1024, meter.events
        moved.append(meter.bytes)
        for p in model.parameters():  # and the step did prune, on the device
            if p.name in pruner.prunable_params:
                assert np.array_equal(p.numpy() == 0, ~pruner.masks[p.name].numpy()) or kw.get("sparse_block")
    assert moved[0] == moved[1]  # independent of the model size


def test_gmp_steps_without_a_ratio_change_and_armed_forwards_move_nothing(device_engine):
    model = mlp(64)
    pruner = dy.GMPUnstructuredPruner(model, ratio=0.6, configs=GMP)
    opt = paddle.optimizer.SGD(0.1, parameters=model.parameters())
    x = paddle.randn([4, 32])
    quiet_steps = 0
    for _ in range(8):
        train_once(model, opt, x)  # arms the pruner: the next forward re-applies the masks on the device
        with host_traffic() as forward:
            model(x)
        assert forward.events == []
        before = pruner.ratio
        with host_traffic() as meter:
            pruner.step()
        if pruner.ratio == before:
            assert meter.events == [], meter.events
            quiet_steps += 1
    assert quiet_steps >= 5
    with host_traffic() as meter:
        model.state_dict()  # the state-dict hook applies the masks, on the device
    assert not meter.of("to_device") and not meter.of("host_view")


def test_read_only_calls_write_nothing_back(device_engine):
    model = mlp(64)
    pruner = dy.UnstructuredPruner(model, "ratio", ratio=0.5)
    pruner.step()
    before = {p.name: p.numpy().copy() for p in model.parameters()}
    with host_traffic() as meter:
        pruner.update_threshold()
        value = pruner.summarize_weights(ratio=0.3)
        pruner.update_params()
    assert not meter.of("to_device") and not meter.of("host_view"), meter.events
    assert meter.bytes <= 256  # thresholds and non-finite counts: int64 scalars
    assert value == float(np.sort(np.abs(np.concatenate(
        [before[n].ravel() for n in pruner.prunable_params])))[int(np.ceil(0.3 * sum(before[n].size for n in
                                                                                       pruner.prunable_params))) - 1])
    for p in model.parameters():
        np.testing.assert_array_equal(p.numpy(), before[p.name])


def test_the_numpy_engine_is_seen_reading_every_weight(monkeypatch):
    """The meter's other side: on the CPU default every pruned weight and mask is viewed from the host."""
    monkeypatch.delenv("PADDLESLIM_ENGINE", raising=False)
    model = mlp(64)
    pruner = dy.UnstructuredPruner(model, "ratio", ratio=0.5)
    with host_traffic() as meter:
        pruner.step()
    assert len(meter.of("host_view")) == 2 * len(pruner.prunable_params)


def test_device_and_numpy_engines_prune_identically_in_dygraph(monkeypatch):
    results = []
    for name in ("numpy", "paddle"):
        monkeypatch.setenv("PADDLESLIM_ENGINE", name)
        model = dygraph_model(NETS["lenet"], seed=3)
        pruner = dy.GMPUnstructuredPruner(model, ratio=0.7, configs=GMP, sparse_block=(1, 1))
        opt = paddle.optimizer.SGD(0.05, parameters=model.parameters())
        x, y = batch(NETS["lenet"], 4, 0)
        for _ in range(14):
            paddle.nn.functional.cross_entropy(model(paddle.to_tensor(x)), paddle.to_tensor(y)).backward()
            opt.step()
            opt.clear_grad()
            pruner.step()
        results.append((pruner.threshold, {n: m.numpy() for n, m in pruner.masks.items()},
                        {p.name: p.numpy() for p in model.parameters()}))
    (t0, m0, w0), (t1, m1, w1) = results
    assert np.float32(t0).tobytes() == np.float32(t1).tobytes()
    for n in m0:
        np.testing.assert_array_equal(m0[n], m1[n])
    for n in w0:
        assert w0[n].tobytes() == w1[n].tobytes(), n


def test_bad_engine_name_raises_before_anything_changes(monkeypatch):
    model = mlp(16)
    pruner = dy.UnstructuredPruner(model, "ratio", ratio=0.5)
    before = {p.name: p.numpy().copy() for p in model.parameters()}
    monkeypatch.setenv("PADDLESLIM_ENGINE", "cuda")
    with pytest.raises(ValueError, match="PADDLESLIM_ENGINE"):
        pruner.step()
    for p in model.parameters():
        np.testing.assert_array_equal(p.numpy(), before[p.name])


@pytest.mark.parametrize("packed", [True, False])
def test_static_step_keeps_weights_and_masks_in_the_scope(device_engine, packed):
    spec = NETS["lenet"]
    x, y = batch(spec, 4, 0)
    with static_mode():
        net = static_net(spec, lambda: paddle.optimizer.SGD(0.05))
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(net.startup)
            pruner = st.UnstructuredPruner(net.main, "ratio", ratio=0.6, scope=scope, startup_program=net.startup,
                                           packed_masks=packed)
            assert pruner.place is None  # no CPUPlace default: every tensor is written where it lives
            exe.run(net.main, feed={"x": x, "y": y}, fetch_list=[net.loss])
            with host_traffic() as meter:
                pruner.step()
            masks = {n: scope_mask(scope, v, scope_array(scope, n).shape) for n, v in pruner.masks.items()}
            weights = {n: scope_array(scope, n) for n in pruner.masks}
    assert not meter.of("host_view"), meter.events
    assert all(e.nbytes <= 4 for e in meter.of("to_device")), meter.events  # the threshold scalar, no write-back
    weight_shapes = {w.shape for w in weights.values()}
    assert all(e.shape not in weight_shapes for e in meter.events), meter.events
    assert meter.bytes <= 256, meter.events  # the ready flag, thresholds and non-finite counts
    for n in masks:
        np.testing.assert_array_equal(weights[n] != 0, masks[n], err_msg=n)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.size for m in masks.values())
    assert kept == total - round(0.6 * total)  # exactly the ratio (no ties among trained float weights)


def test_bench_device_counts_the_bytes_per_call(tmp_path):
    """benchmarks/bench_device.py runs here (CPU) and reports: O(1) bytes per Paddle-engine ratio step, none for a
    quiet GMP step or an armed forward; the numpy engine reads every weight and mask (4 + 1 bytes each)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "bench.json"
    script = Path(ROOT) / "benchmarks" / "bench_device.py"
    subprocess.run([sys.executable, str(script), "--quick", "--reps", "2", "--json", str(out)], check=True,
                   capture_output=True, timeout=300)
    res = json.loads(out.read_text())["results"]
    n = res["numpy"]["weights"]
    assert res["paddle"]["ratio step bytes"] <= 1024
    assert res["paddle"]["gmp quiet step bytes"] == 0 and res["paddle"]["armed forward bytes"] == 0
    assert res["numpy"]["gmp quiet step bytes"] == 5 * n and res["numpy"]["armed forward bytes"] == 5 * n


def test_state_dict_reads_without_writing_back(device_engine):
    """A checkpoint needs the weights on the host (fingerprint, packed masks): they are read, never written back."""
    model = mlp(64)
    pruner = dy.UnstructuredPruner(model, "ratio", ratio=0.5)
    pruner.step()
    with host_traffic() as meter:
        state = pruner.state_dict()
    assert not meter.of("to_device") and not meter.of("host_view"), meter.events
    other = mlp(64)
    other.set_state_dict(model.state_dict())
    restored = dy.UnstructuredPruner(other, "ratio", ratio=0.5)
    restored.set_state_dict(state)
    for key, p in model.named_parameters():  # structured names: the two models' parameter names differ
        if p.name in pruner.prunable_params:
            np.testing.assert_array_equal(restored.masks[key].numpy(), pruner.masks[key].numpy())


def test_static_write_back_place_is_the_tensors_own():
    """A copy is written back to the place its tensor lives on, as the specific place type DenseTensor.set takes
    (the generic ``_place()`` the old fallback passed is refused). Only the CPU branch runs here."""
    from paddleslim_static.scope_io import own_place, tensor_of, write_scope

    scope = paddle.static.Scope()
    write_scope(scope, "v", np.arange(3, dtype=np.float32))  # a new variable, no place given: the CPU
    t = tensor_of(scope, "v")
    assert isinstance(own_place(t), type(paddle.CPUPlace()))
    with pytest.raises(TypeError):
        t.set(np.zeros(3, np.float32), t._place())
    write_scope(scope, "v", np.full(3, 7, np.float32), place=paddle.CPUPlace())  # existing: stays where it lives
    np.testing.assert_array_equal(np.array(tensor_of(scope, "v")), [7, 7, 7])
    assert tensor_of(scope, "v")._place().is_cpu_place()


@pytest.mark.parametrize("kw", [dict(), dict(sparse_block=(2, 2)), dict(local_sparsity=True)])
def test_device_and_numpy_engines_prune_identically_in_static_mode(monkeypatch, kw):
    """A static GMP run, trained and pruned with each engine: the same thresholds, masks and weights, bit for bit."""
    spec = NETS["lenet"]
    results = []
    for name in ("numpy", "paddle"):
        monkeypatch.setenv("PADDLESLIM_ENGINE", name)
        with static_mode():
            net = static_net(spec, lambda: paddle.optimizer.SGD(0.05))
            scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
            with paddle.static.scope_guard(scope):
                paddle.seed(0)
                exe.run(net.startup)
                pruner = st.GMPUnstructuredPruner(net.main, ratio=0.7, scope=scope, startup_program=net.startup,
                                                  configs=GMP, **kw)
                for i in range(6):
                    x, y = batch(spec, 4, i)
                    exe.run(net.main, feed={"x": x, "y": y}, fetch_list=[net.loss])
                    pruner.step()
                results.append((pruner.threshold, dict(pruner.thresholds),
                                {n: scope_mask(scope, v, scope_array(scope, n).shape) for n, v in pruner.masks.items()},
                                {n: scope_array(scope, n) for n in pruner.masks}))
    (t0, p0, m0, w0), (t1, p1, m1, w1) = results
    assert np.float32(t0).tobytes() == np.float32(t1).tobytes()
    assert {n: np.float32(v).tobytes() for n, v in p0.items()} == {n: np.float32(v).tobytes() for n, v in p1.items()}
    for n in m0:
        np.testing.assert_array_equal(m0[n], m1[n], err_msg=n)
        assert w0[n].tobytes() == w1[n].tobytes(), n
