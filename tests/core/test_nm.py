"""N:M core against a brute-force reference and Paddle ASP; the dygraph and static checkers."""
from __future__ import annotations

import doctest
import importlib
import itertools

import numpy as np
import paddle
import paddle.nn as nn
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paddleslim_static.core import nm

asp = pytest.importorskip("paddle.incubate.asp")


# -- brute-force reference ---------------------------------------------------------------------------------------
def _axis(layout, ndim):
    return {"linear": 0, "conv": 1}.get(layout, layout) % ndim


def ref_mask(w, n, m, layout):
    """Python loops: per group of M along the axis, sort by (NaN first, |w| desc, index asc) and keep N."""
    w = np.asarray(w)
    axis = _axis(layout, w.ndim)
    moved = np.moveaxis(w.astype(np.float64), axis, -1)
    out = np.zeros(moved.shape, bool)
    for idx in itertools.product(*[range(d) for d in moved.shape[:-1]]):
        row = moved[idx]
        for start in range(0, row.size, m):
            group = list(range(start, min(start + m, row.size)))
            order = sorted(group, key=lambda i: (not np.isnan(row[i]), -abs(row[i]) if not np.isnan(row[i]) else 0, i))
            for i in order[:n]:
                out[idx + (i,)] = True
    return np.moveaxis(out, -1, axis)


def ref_is_sparse(w, n, m, layout):
    w = np.asarray(w)
    moved = np.moveaxis(w, _axis(layout, w.ndim), -1)
    for idx in itertools.product(*[range(d) for d in moved.shape[:-1]]):
        row = moved[idx]
        for start in range(0, row.size, m):
            if np.count_nonzero(row[start:start + m]) > n:
                return False
    return True


# -- strategies ----------------------------------------------------------------------------------------------------
VALUES = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, np.inf]),
                   st.floats(-4, 4, allow_nan=False, width=16))


@st.composite
def cases(draw, allow_nan=False):
    m = draw(st.sampled_from([2, 3, 4, 4, 4, 8, 16, 17, 20]))
    n = draw(st.integers(1, m - 1))
    kind = draw(st.sampled_from(["linear", "conv", "axis"]))
    if kind == "linear":
        shape = (draw(st.integers(1, 2 * m + 3)), draw(st.integers(1, 4)))
    elif kind == "conv":
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 2 * m + 3)), draw(st.integers(1, 3)),
                 draw(st.integers(1, 2)))
    else:  # the group axis up to 2M+1 long, the others short (hypothesis caps the element count)
        shape = list(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
        pos = draw(st.integers(0, len(shape)))
        shape = tuple(shape[:pos] + [draw(st.integers(1, 2 * m + 1))] + shape[pos:])
    layout = kind if kind != "axis" else draw(st.sampled_from([pos, pos - len(shape)]))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    values = VALUES if not allow_nan else st.one_of(VALUES, st.just(float("nan")))
    flat = draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return np.array(flat, dtype=dtype).reshape(shape), n, m, layout


@given(cases(allow_nan=True))
def test_mask_matches_brute_force(case):
    w, n, m, layout = case
    got = nm.nm_mask(w, n, m, layout)
    assert got.dtype == np.bool_ and got.shape == w.shape
    np.testing.assert_array_equal(got, ref_mask(w, n, m, layout))


@given(cases())
def test_masked_weights_are_nm_and_checker_matches_reference(case):
    w, n, m, layout = case
    assert nm.is_nm_sparse(w, n, m, layout) == ref_is_sparse(w, n, m, layout)
    pruned = np.where(nm.nm_mask(w, n, m, layout), w, 0)
    assert nm.is_nm_sparse(pruned, n, m, layout) and ref_is_sparse(pruned, n, m, layout)
    bad, groups = nm.nm_violations(w, n, m, layout)
    length = w.shape[_axis(layout, w.ndim)]
    assert groups == w.size // length * -(-length // m)
    assert (bad == 0) == ref_is_sparse(w, n, m, layout)


@given(cases())
def test_fill_intersect_and_apply(case):
    w, n, m, layout = case
    rng = np.random.default_rng(w.size)
    prior = rng.random(w.shape) < 0.7
    out = prior.copy()
    w2 = w.copy()
    nm.fill_nm_mask(w2, n, m, layout, out, apply=True, intersect=True)
    np.testing.assert_array_equal(out, prior & ref_mask(w, n, m, layout))
    np.testing.assert_array_equal(w2, np.where(out, w, 0))
    assert nm.is_nm_sparse(w2, n, m, layout)


def test_fill_into_non_contiguous_out():
    w = np.arange(1, 33, dtype=np.float32).reshape(8, 4)
    big = np.zeros((8, 8), bool)
    out = big[:, ::2]
    nm.fill_nm_mask(w, 2, 4, "linear", out)
    np.testing.assert_array_equal(big[:, ::2], ref_mask(w, 2, 4, "linear"))
    assert not big[:, 1::2].any()


def test_rules_by_example():
    # ties: the earlier weight is kept; existing zeros are the smallest; tail of r < M keeps min(N, r)
    assert nm.nm_mask(np.array([1, 1, 1, 1, 5, 0], np.float32), 2, 4, 0).tolist() == [1, 1, 0, 0, 1, 1]
    assert nm.nm_mask(np.array([0, 0, 0, 7, 0, 3, 1], np.float32), 2, 4, 0).tolist() == [1, 0, 0, 1, 0, 1, 1]
    assert nm.nm_mask(np.array([-0.0, 0.0, 9, 1], np.float32), 2, 4, 0).tolist() == [0, 0, 1, 1]
    # exact in float64: values that round to the same float32 are not tied
    a = 1.0 + 2.0 ** -40
    assert nm.nm_mask(np.array([1.0, a, 0.0, 0.0]), 1, 4, 0).tolist() == [0, 1, 0, 0]
    # conv groups run along the input channels at fixed (out, kh, kw)
    w = np.zeros((1, 4, 1, 2), np.float32)
    w[0, :, 0, 0] = [1, 2, 3, 4]
    w[0, :, 0, 1] = [4, 3, 2, 1]
    mask = nm.nm_mask(w, 2, 4, "conv")
    assert mask[0, :, 0, 0].tolist() == [0, 0, 1, 1] and mask[0, :, 0, 1].tolist() == [1, 1, 0, 0]


def test_pattern_parsing_and_validation():
    assert nm.parse_pattern("2:4") == (2, 4)
    assert nm.parse_pattern(" 1 : 8 ") == (1, 8)
    assert nm.parse_pattern([4, 16]) == (4, 16)
    for bad in ("4:4", "0:4", "3:2", "2/4", "2:4:8", "", "-1:4"):
        with pytest.raises(ValueError, match="sparse_pattern"):
            nm.parse_pattern(bad)
    for bad in (None, 2, (2.0, 4), (True, 4), (2, 4, 8)):
        with pytest.raises(TypeError, match="sparse_pattern"):
            nm.parse_pattern(bad)
    with pytest.raises(ValueError, match="pattern_x"):
        nm.parse_pattern("5:4", name="pattern_x")


def test_argument_errors_do_not_write():
    w = np.ones((4, 4), np.float32)
    out = np.zeros((4, 4), bool)
    for kwargs, exc in [
        (dict(layout="conv"), ValueError), (dict(layout="rows"), ValueError), (dict(layout=2), ValueError),
        (dict(layout=1.0), TypeError), (dict(n=4), ValueError), (dict(out=np.zeros((4, 4), np.int8)), ValueError),
        (dict(out=np.zeros((4, 3), bool)), ValueError),
    ]:
        args = dict(w=w, n=2, m=4, layout="linear", out=out, apply=True)
        args.update(kwargs)
        with pytest.raises(exc):
            nm.fill_nm_mask(**args)
        assert not out.any() and (w == 1).all()
    with pytest.raises(TypeError, match="float"):
        nm.nm_mask(np.ones((4, 4), np.int32), 2, 4, "linear")
    assert nm.nm_skip_reason((3, 8), 4, "linear") is not None
    assert nm.nm_skip_reason((8, 3, 3, 3), 4, "conv") is not None
    assert nm.nm_skip_reason((8, 4, 3, 3), 4, "conv") is None


# -- Paddle ASP compatibility -------------------------------------------------------------------------------------
@given(st.sampled_from([(2, 4), (1, 4), (3, 4), (4, 8)]), st.sampled_from(["linear", "conv"]),
       st.integers(0, 2 ** 31 - 1), st.integers(0, 7))
def test_asp_checker_and_masks_agree(pattern, layout, seed, extra):
    n, m = pattern
    rng = np.random.default_rng(seed)
    shape = (m * 2 + extra, 5) if layout == "linear" else (3, m + extra, 2, 3)
    w = rng.standard_normal(shape).astype(np.float32)  # distinct magnitudes: ASP's argsort has no ties to break
    mask = nm.nm_mask(w, n, m, layout)
    # ASP prunes the transpose (cuSPARSELt's direction) and its n counts zeros: ours keeps n, so pass m - n
    asp_mask = asp.create_mask(w.T, func_name=asp.MaskAlgo.MASK_1D, n=m - n, m=m).T
    np.testing.assert_array_equal(mask, asp_mask.astype(bool))
    for arr in (w * mask, w * (rng.random(shape) < 0.5), w):
        asp_ok = asp.check_sparsity(arr.T, func_name=asp.CheckMethod.CHECK_1D, n=m - n, m=m)
        assert nm.is_nm_sparse(arr, n, m, layout) == bool(asp_ok)


def test_asp_pruned_model_passes_our_dygraph_checker():
    paddle.seed(3)
    net = nn.Sequential(nn.Conv2D(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 3))
    asp.prune_model(net, n=2, m=4, with_mask=False)
    verdicts = dygraph_nm.check_nm(net, 2, 4)
    checked = {k for k, v in verdicts.items() if not v.skipped}
    assert checked == {net[0].weight.name, net[2].weight.name, net[3].weight.name}  # Linear(16, 3): in=16 >= M
    assert nm.all_nm_sparse(verdicts)


# -- model and program checkers -----------------------------------------------------------------------------------
dygraph_nm = importlib.import_module("paddleslim_dygraph.nm")
static_nm = importlib.import_module("paddleslim_static.nm")


class Net(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(8, 16, 3, padding=1)       # qualifies: in=8
        self.dw = nn.Conv2D(16, 16, 3, padding=1, groups=16)  # skipped: 1 input per group
        self.bn = nn.BatchNorm2D(16)
        self.up = nn.Conv2DTranspose(16, 8, 2, stride=2)  # skipped: transposed
        self.fc = nn.Linear(8 * 8 * 8, 12)                # qualifies
        self.head = nn.Linear(12, 3)                      # qualifies (in=12); tail-free
        self.tiny = nn.Linear(3, 5)                       # skipped: in=3 < M

    def forward(self, x):
        x = self.up(self.bn(self.dw(self.conv(x))))
        return self.tiny(self.head(self.fc(paddle.flatten(x, 1))))


def _sparsify(arrays):
    """N:M-prune the qualifying weights (2:4) in place, given name -> (array, layout)."""
    for arr, layout in arrays.values():
        nm.fill_nm_mask(arr, 2, 4, layout, np.empty(arr.shape, bool), apply=True)


def _build(static):
    with paddle.utils.unique_name.guard():
        paddle.seed(0)
        return Net()


def test_dygraph_checker_verdicts():
    net = _build(False)
    v = dygraph_nm.check_nm(net, 2, 4)
    layouts = {k: x.layout for k, x in v.items() if not x.skipped}
    assert layouts == {net.conv.weight.name: "conv", net.fc.weight.name: "linear", net.head.weight.name: "linear"}
    assert "transposed" in v[net.up.weight.name].reason.lower() or "Conv2DTranspose" in v[net.up.weight.name].reason
    assert "< M=4" in v[net.dw.weight.name].reason and "< M=4" in v[net.tiny.weight.name].reason
    assert "normalization" in v[net.bn.weight.name].reason
    assert not nm.all_nm_sparse(v) and all(x.violations > 0 for x in v.values() if not x.skipped)
    with paddle.no_grad():
        for name in layouts:
            p = dict((q.name, q) for q in net.parameters())[name]
            p.set_value(p.numpy() * nm.nm_mask(p.numpy(), 2, 4, layouts[name]))
    v = dygraph_nm.check_nm(net, 2, 4)
    assert nm.all_nm_sparse(v) and v[net.fc.weight.name].groups == 8 * 8 * 8 // 4 * 12
    assert not nm.all_nm_sparse(dygraph_nm.check_nm(net, 1, 4))
    with pytest.raises(ValueError, match="n, m"):
        dygraph_nm.check_nm(net, 4, 4)
    with pytest.raises(TypeError, match="model"):
        dygraph_nm.check_nm("net", 2, 4)


@pytest.mark.parametrize("pir", [True, False])
def test_static_checker_matches_dygraph(pir, tmp_path):
    from paddleslim_static.programs import static_mode

    net = _build(False)
    dy = dygraph_nm.check_nm(net, 2, 4)
    with static_mode(pir):
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            snet = _build(True)
            x = paddle.static.data("x", [None, 8, 4, 4])
            out = snet(x)
            loss = out.mean()
            paddle.optimizer.SGD(0.1).minimize(loss)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            paddle.static.Executor(paddle.CPUPlace()).run(startup)
        st_v = static_nm.check_nm(main, 2, 4, scope)
        assert {k: (x.layout, x.ok) for k, x in st_v.items()} == {k: (x.layout, x.ok) for k, x in dy.items()}
        layouts = {k: x.layout for k, x in st_v.items() if not x.skipped}
        arrays = {k: (np.array(scope.find_var(k).get_tensor()), lay) for k, lay in layouts.items()}
        _sparsify(arrays)
        for k, (arr, _) in arrays.items():
            scope.find_var(k).get_tensor().set(arr, paddle.CPUPlace())
        after = static_nm.check_nm(main, 2, 4, scope)
        assert nm.all_nm_sparse(after)
        # an inference model saved and loaded back (legacy IR: no Parameter objects, persistable tensors instead)
        exe = paddle.static.Executor(paddle.CPUPlace())
        prefix = str(tmp_path / "inference")
        with paddle.static.scope_guard(scope):
            paddle.static.save_inference_model(prefix, [x], [out], exe, program=main)
        loaded_scope = paddle.static.Scope()
        with paddle.static.scope_guard(loaded_scope):
            loaded, _, _ = paddle.static.load_inference_model(prefix, exe)
        reloaded = static_nm.check_nm(loaded, 2, 4, loaded_scope)
        assert {k: (v.layout, v.ok) for k, v in reloaded.items()} == {k: (v.layout, v.ok) for k, v in after.items()}
        with pytest.raises(RuntimeError, match="startup"):
            static_nm.check_nm(main, 2, 4, paddle.static.Scope())
        with pytest.raises(TypeError, match="program"):
            static_nm.check_nm(net, 2, 4)


@pytest.mark.parametrize("name", ["paddleslim_static.core.nm", "paddleslim_dygraph.nm", "paddleslim_static.nm"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_core_nm_does_not_import_paddle():
    import subprocess
    import sys

    code = "import sys, paddleslim_static.core.nm; assert 'paddle' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
