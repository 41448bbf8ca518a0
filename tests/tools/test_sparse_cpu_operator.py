"""The sparse CPU operators against numpy: every instruction set, batch sizes, ranks, ties with the panel widths,
16- and 32-bit indices, empty rows, threads; and the swap of layers in a real model."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from hypothesis import given, settings, strategies as st

from paddleslim_tools.runtime import SparseConv1x1, SparseLinear, load_library
from paddleslim_tools.runtime.convert import convert_layers, layer_candidates, plan_conversion
from paddleslim_tools.runtime.csr import csr_from_rows

RTOL = 1e-5


def _sparse_weight(rng, shape, zeros):
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < zeros] = 0
    return w


def _rel_err(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def linear_case(rng, n_in, n_out, zeros, x_shape, bias=True):
    lin = paddle.nn.Linear(n_in, n_out, bias_attr=None if bias else False)
    lin.weight.set_value(_sparse_weight(rng, (n_in, n_out), zeros))
    x = rng.standard_normal(x_shape + (n_in,)).astype(np.float32)
    ref = x.astype(np.float64) @ lin.weight.numpy().astype(np.float64)
    if bias:
        ref = ref + lin.bias.numpy()
    return SparseLinear.from_dense(lin), x, ref


@settings(max_examples=40)
@given(n_in=st.integers(1, 300), n_out=st.integers(1, 90), zeros=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
       lead=st.lists(st.integers(0, 70), min_size=0, max_size=2), bias=st.booleans(), seed=st.integers(0, 9))
def test_linear_matches_numpy_any_shape_and_batch(n_in, n_out, zeros, lead, bias, seed):
    rng = np.random.default_rng(seed)
    layer, x, ref = linear_case(rng, n_in, n_out, zeros, tuple(lead), bias)
    got = layer(paddle.to_tensor(x)).numpy()
    assert got.shape == ref.shape
    if ref.size:
        assert _rel_err(got, ref) < RTOL


@settings(max_examples=30)
@given(c_in=st.integers(1, 80), c_out=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 21),
       n=st.integers(1, 3), zeros=st.sampled_from([0.0, 0.7, 0.95, 1.0]), seed=st.integers(0, 9))
def test_conv1x1_matches_numpy(c_in, c_out, h, w, n, zeros, seed):
    rng = np.random.default_rng(seed)
    conv = paddle.nn.Conv2D(c_in, c_out, 1)
    conv.weight.set_value(_sparse_weight(rng, (c_out, c_in, 1, 1), zeros))
    x = rng.standard_normal((n, c_in, h, w)).astype(np.float32)
    ref = np.einsum("oc,nchw->nohw", conv.weight.numpy()[:, :, 0, 0].astype(np.float64), x) \
        + conv.bias.numpy()[None, :, None, None]
    got = SparseConv1x1.from_dense(conv)(paddle.to_tensor(x)).numpy()
    assert got.shape == ref.shape and _rel_err(got, ref) < RTOL
    assert np.allclose(got, conv(paddle.to_tensor(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_wide_inputs_use_32bit_indices_and_stay_exact():
    rng = np.random.default_rng(0)
    layer, x, ref = linear_case(rng, 70_000, 3, 0.999, (2,))
    assert layer.cols.dtype == paddle.int32  # 16-bit indices cannot address 70000 inputs
    assert _rel_err(layer(paddle.to_tensor(x)).numpy(), ref) < RTOL
    small, _, _ = linear_case(rng, 65_536, 1, 0.9999, (1,))
    assert small.cols.dtype == paddle.int16  # the largest width 16-bit indices (read unsigned) can address


def test_csr_round_trip_keeps_exactly_the_nonzeros():
    rng = np.random.default_rng(1)
    m = _sparse_weight(rng, (37, 300), 0.8)
    m[3] = 0  # an empty row
    m[5, 7] = -0.0
    c = csr_from_rows(m)
    assert c.nnz == np.count_nonzero(m) and np.array_equal(c.to_dense(), m)
    with pytest.raises(ValueError, match="NaN"):
        csr_from_rows(np.array([[np.nan]], np.float32))
    with pytest.raises(TypeError, match="float32"):
        csr_from_rows(np.zeros((2, 2), np.float64))


def test_threads_give_the_same_outputs_as_one():
    lib = load_library()
    rng = np.random.default_rng(2)
    layer, x, _ = linear_case(rng, 1024, 1024, 0.9, (33,))
    xt = paddle.to_tensor(x)
    before = lib.num_threads()
    try:
        lib.set_num_threads(1)
        one = layer(xt).numpy()
        lib.set_num_threads(2)
        assert lib.num_threads() == 2
        two = layer(xt).numpy()
    finally:
        lib.set_num_threads(before)  # 0: follow Paddle again
    assert np.array_equal(one, two)  # rows are split between threads, each row summed the same way


_ISA_SCRIPT = r"""
import numpy as np, paddle
from paddleslim_tools.runtime import SparseLinear, SparseConv1x1, load_library
rng = np.random.default_rng(3)
worst = 0.0
for n_in, n_out, lead in [(5, 3, (1,)), (300, 70, (1,)), (300, 70, (3,)), (300, 70, (4,)), (300, 70, (17,)),
                          (300, 70, (2, 40)), (257, 129, (65,))]:
    lin = paddle.nn.Linear(n_in, n_out)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32); w[rng.random(w.shape) < 0.85] = 0
    lin.weight.set_value(w)
    x = rng.standard_normal(lead + (n_in,)).astype(np.float32)
    ref = x.astype(np.float64) @ w + lin.bias.numpy()
    got = SparseLinear.from_dense(lin)(paddle.to_tensor(x)).numpy()
    worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
conv = paddle.nn.Conv2D(40, 24, 1)
x = rng.standard_normal((2, 40, 7, 9)).astype(np.float32)
ref = conv(paddle.to_tensor(x)).numpy()
got = SparseConv1x1.from_dense(conv)(paddle.to_tensor(x)).numpy()
worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
print(load_library().isa, worst)
"""


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_every_instruction_set_matches_numpy(isa):
    proc = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PADDLESLIM_SPARSE_ISA=isa))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got_isa, err = proc.stdout.split()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if isa == "portable" or f" {isa}" in flags.replace("avx512f", "avx512"):
        assert got_isa == isa  # the forced kernels really ran
    assert float(err) < RTOL


def test_convert_layers_swaps_inside_the_block_and_restores_after():
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(64, 64), paddle.nn.ReLU(), paddle.nn.Linear(64, 10))
    with paddle.no_grad():
        net[0].weight.set_value(net[0].weight * (paddle.rand([64, 64]) > 0.9).astype("float32"))
    x = paddle.randn([5, 64])
    ref = net(x).numpy()
    dense0 = net[0]
    with convert_layers(net, ["0"]) as m:
        assert isinstance(m[0], SparseLinear) and m[0].nnz == int(np.count_nonzero(dense0.weight.numpy()))
        assert np.allclose(m(x).numpy(), ref, rtol=1e-5, atol=1e-6)
    assert net[0] is dense0
    with pytest.raises(ValueError, match="not convertible"):
        with convert_layers(net, ["1"]):
            pass
    assert net[0] is dense0


def test_plan_measures_each_candidate_on_its_real_input():
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 16, 1), paddle.nn.Flatten(), paddle.nn.Linear(16 * 4 * 4, 8))
    with paddle.no_grad():
        net[2].weight.set_value(net[2].weight * (paddle.rand(net[2].weight.shape) > 0.95).astype("float32"))
    net.eval()
    plans = plan_conversion(net, [paddle.randn([2, 3, 4, 4])], rounds=2, min_seconds=0.001)
    assert [(p.name, p.kind) for p in plans] == [("0", "conv1x1"), ("2", "linear")]
    dense_conv, lin = plans
    assert dense_conv.input_shape == (2, 3, 4, 4) and not dense_conv.converted and "density" in dense_conv.reason
    assert lin.input_shape == (2, 256) and lin.dense_ms > 0 and lin.sparse_ms > 0 and len(lin.rounds) == 2
    assert lin.converted == (np.median(lin.rounds) >= 1.1)
    assert [c.name for c in layer_candidates(net)] == ["0", "2"]


_ONEDNN_SCRIPT = r"""
import sys, numpy as np, paddle
from paddle.vision.models import mobilenet_v1
from paddleslim_tools.runtime import create_predictor
from paddleslim_tools.runtime.convert import convert_layers, layer_candidates
paddle.seed(0)
net = mobilenet_v1(scale=0.25, num_classes=10)
net.eval()
names = [c.name for c in layer_candidates(net)]
assert sum(c.kind == "conv1x1" for c in layer_candidates(net)) == 13
spec = [paddle.static.InputSpec([None, 3, 32, 32], "float32", "x")]
d = sys.argv[1]
paddle.jit.save(net, d + "/dense", spec)
with convert_layers(net, names):
    paddle.jit.save(net, d + "/sparse", spec)
x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
def run(p):
    h = p.get_input_handle(p.get_input_names()[0]); h.reshape(x.shape); h.copy_from_cpu(x); p.run()
    return p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()
ref = run(create_predictor(d + "/dense.json", d + "/dense.pdiparams", mkldnn=False))
for mk in (True, False):
    got = run(create_predictor(d + "/sparse.json", d + "/sparse.pdiparams", mkldnn=mk))
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err < 1e-5, (mk, err)
print("ok")
"""


def test_oneDNN_layouts_reaching_the_operator_are_reordered(tmp_path):
    """With oneDNN on, Paddle Inference hands the operator oneDNN-blocked tensors after oneDNN convolutions; the
    operator must read them as NCHW (it produced garbage before it reordered them)."""
    proc = subprocess.run([sys.executable, "-c", _ONEDNN_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_one_library_per_process_and_its_stamp():
    import json

    from paddleslim_tools.runtime.build import LIB_NAME, paddle_stamp

    lib = load_library()
    assert load_library() is lib  # loaded once; a second library registering the ops would abort Paddle
    assert lib.origin in ("installed", "cache", "built") and lib.path.name == LIB_NAME
    stamp = json.loads((lib.path.parent / f"{LIB_NAME}.json").read_text())
    assert stamp == paddle_stamp()  # built for this Paddle build and these sources
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        lib.set_num_threads(-1)


_STALE_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from paddleslim_tools.runtime import loader
from paddleslim_tools.runtime.build import LIB_NAME
cache = loader.cache_dir()
cache.mkdir(parents=True)
(cache / LIB_NAME).write_bytes(b"not a library")
(cache / (LIB_NAME + ".json")).write_text(json.dumps({"paddle": "0.0", "commit": "x", "sources": "y"}))
loader._INSTALLED = Path(sys.argv[1])  # pretend nothing was installed
lib = loader.load_library()
print(lib.origin, lib.isa)
"""


def test_a_stale_cached_library_is_rebuilt_not_loaded(tmp_path):
    """A library stamped for another Paddle (or other sources) is never loaded: it is rebuilt (its C++ API would
    not match)."""
    proc = subprocess.run([sys.executable, "-c", _STALE_SCRIPT, str(tmp_path / "none")], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PADDLESLIM_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    origin, isa = proc.stdout.split()
    assert origin == "built" and isa in ("portable", "avx2", "avx512")


@pytest.mark.parametrize("name", ["paddleslim_tools.runtime", "paddleslim_tools.runtime.csr",
                                  "paddleslim_tools.runtime.timing", "paddleslim_tools.runtime.layers",
                                  "paddleslim_tools.runtime.loader", "paddleslim_tools.runtime.predictor",
                                  "paddleslim_tools.runtime.convert"])
def test_runtime_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
