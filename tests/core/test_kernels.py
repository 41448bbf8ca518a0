"""The optional C kernels compute exactly the bits the numpy code computes."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import reference as ref
from paddleslim_static.core import ScoreSource, fill_masks, kernels, ratio_threshold
from paddleslim_static.core.engine import apply_masks

pytestmark = pytest.mark.skipif(not kernels.available(), reason="C kernels not built (no compiler at install time)")


@st.composite
def weights(draw):
    n = draw(st.integers(0, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    w = rng.standard_normal(n).astype(np.float32)
    for special in draw(st.lists(st.sampled_from([0.0, -0.0, np.nan, -np.inf, 1e-40, -1e-40]), max_size=5)):
        if n:
            w[rng.integers(0, n)] = special
    return w


@pytest.fixture(params=["avx2", "portable"])
def stream_version(request):
    from paddleslim_static.core import _kernels
    if request.param == "avx2" and not _kernels.has_avx2():
        pytest.skip("no AVX2 on this CPU")
    previous = _kernels.set_avx2(request.param == "avx2")
    yield request.param
    _kernels.set_avx2(previous)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 33, 100, 1000])
@pytest.mark.parametrize("lo_hi", [(0, 0), (0, 0x3F800000), (0x3F000000, 0x3F800000), (0x3F800000, 0x3F800000),
                                   (0x3F800000, 0x7F800000), (0x7F7FFFFF, 0x7F800000)])
def test_stream_block_edges(stream_version, n, lo_hi):
    rng = np.random.default_rng(n)
    w = rng.standard_normal(n).astype(np.float32)
    w[: n // 3] = 0.0
    _check_stream(w, *lo_hi)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(weights(), st.integers(0, 0x7F800000), st.integers(0, 0x7F800000))
def test_stream_matches_numpy(stream_version, w, a, b):
    _check_stream(w, min(a, b), max(a, b))


def _check_stream(w, lo, hi):
    keys = w.view(np.uint32)
    band = np.empty(max(1, keys.size), np.uint32)
    n_le, nb, mx = kernels.stream(keys, lo, hi, band)
    k = keys & np.uint32(0x7FFFFFFF)
    assert n_le == int((k <= lo).sum())
    np.testing.assert_array_equal(band[:nb], k[(k > lo) & (k <= hi)])
    assert mx == (int(k.max()) if k.size else 0)


@given(weights(), st.floats(0, 3, width=32), st.booleans())
def test_mask_apply_matches_numpy_bit_for_bit(w, t, apply):
    def run():
        ww, m = w.copy(), np.empty(w.shape, bool)
        fill_masks({"w": ww}, {"w": m}, np.float32(t), {}, (1, 1), apply=apply)
        return ww.tobytes(), m.tobytes()
    c, py = ref.on_c_and_numpy(run)
    assert c == py  # -0.0 and NaN included


@given(weights())
def test_apply_matches_numpy_bit_for_bit(w):
    mask = np.random.default_rng(0).random(w.shape) < 0.5
    def run():
        ww = w.copy()
        apply_masks({"w": ww}, {"w": mask})
        return ww.tobytes()
    c, py = ref.on_c_and_numpy(run)
    assert c == py


def test_thresholds_equal_on_large_input():
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal(300_000).astype(np.float32) for _ in range(3)]
    ws[1][rng.random(300_000) < 0.6] = 0
    for ratio in (0.1, 0.5, 0.7, 0.95):
        c, py = ref.on_c_and_numpy(lambda r=ratio: ratio_threshold([ScoreSource(w) for w in ws], r))
        assert c.tobytes() == py.tobytes()


def test_rejects_bad_buffers():
    with pytest.raises(ValueError, match="band_out"):
        kernels.stream(np.zeros(8, np.uint32), 0, 1, np.zeros(4, np.uint32))
    with pytest.raises(ValueError, match="lo <= hi"):
        kernels.stream(np.zeros(8, np.uint32), 5, 1, np.zeros(8, np.uint32))


# -- argument safety (issue 7, item 14): each of these was accepted before and gave UB or wrong answers --------
def _misaligned(n, dtype=np.float32):
    raw = np.zeros(n * np.dtype(dtype).itemsize + 1, np.uint8)
    a = raw[1:].view(dtype)
    assert not a.flags.aligned
    return a


def test_eligible_refuses_misaligned_and_foreign_arrays():
    w = _misaligned(64)
    mask = np.empty(64, bool)
    assert not kernels.eligible(w, mask)
    assert not kernels.eligible(np.zeros(64, ">f4"), mask)  # byte-swapped float32
    assert not kernels.eligible(np.zeros(64, np.float32), np.empty(63, bool))  # sizes differ
    assert not kernels.keys_eligible(_misaligned(64, np.uint32))
    assert not kernels.keys_eligible(np.zeros(64, np.int32))
    assert kernels.eligible(np.zeros(64, np.float32), mask)


def test_misaligned_weights_give_the_numpy_bits():
    rng = np.random.default_rng(5)
    base = rng.standard_normal(1001).astype(np.float32)
    w = _misaligned(1001)
    w[:] = base

    def run():  # on the misaligned view itself (a copy would be aligned)
        m = np.empty(w.shape, bool)
        fill_masks({"w": w}, {"w": m}, np.float32(0.5), {}, (1, 1))
        return m.tobytes()
    c, py = ref.on_c_and_numpy(run)
    assert c == py == (np.abs(base) >= np.float32(0.5)).tobytes()
    assert ratio_threshold([ScoreSource(w)], 0.3, direct_max=0, chunk=64) == ratio_threshold([ScoreSource(base)], 0.3)


def test_kernels_defined_on_misaligned_buffers():
    # called directly (no eligibility check): loads go through memcpy, so this is defined behaviour (the
    # sanitizer run below checks it) and gives the aligned answer
    from paddleslim_static.core import _kernels
    rng = np.random.default_rng(6)
    base = rng.standard_normal(100).astype(np.float32)
    w = _misaligned(100)
    w[:] = base
    band = _misaligned(100, np.uint32)
    n_le, nb, mx = _kernels.stream(w.view(np.uint32), 0x3E000000, 0x3F800000, band)
    k = base.view(np.uint32) & np.uint32(0x7FFFFFFF)
    assert n_le == int((k <= 0x3E000000).sum()) and mx == int(k.max())
    np.testing.assert_array_equal(band[:nb], k[(k > 0x3E000000) & (k <= 0x3F800000)])
    m = np.empty(101, np.uint8)[1:]
    _kernels.mask_apply(w, m, 0x3F000000, True)
    np.testing.assert_array_equal(m.astype(bool), k >= 0x3F000000)
    np.testing.assert_array_equal(w, base * (k >= 0x3F000000))


@pytest.mark.parametrize("bad", [2**64 + 5, 2**32 + 5, -1, 2**31])
def test_integer_arguments_checked_for_overflow(bad):
    from paddleslim_static.core import _kernels
    keys, band = np.zeros(8, np.uint32), np.zeros(8, np.uint32)
    with pytest.raises(ValueError, match="lo|hi"):
        _kernels.stream(keys, bad, 2**31 - 1, band)
    with pytest.raises(ValueError, match="hi"):
        _kernels.stream(keys, 0, bad, band)
    if bad >= 2**32 or bad < 0:
        with pytest.raises(ValueError, match="t_key"):
            _kernels.mask_apply(np.zeros(8, np.float32), np.zeros(8, bool), bad, True)


def test_buffer_dtypes_checked():
    from paddleslim_static.core import _kernels
    band = np.zeros(8, np.uint32)
    with pytest.raises(TypeError, match="keys"):  # float64 keys used to be read as 16 uint32 "keys"
        _kernels.stream(np.zeros(8, np.float64), 0, 1, band)
    with pytest.raises(TypeError, match="keys"):
        _kernels.stream(np.zeros(8, np.int32), 0, 1, band)
    with pytest.raises(TypeError, match="band_out"):
        _kernels.stream(np.zeros(8, np.uint32), 0, 1, np.zeros(8, np.float32))
    with pytest.raises(TypeError, match="w"):
        _kernels.mask_apply(np.zeros(8, np.float64), np.zeros(16, bool), 0, True)
    with pytest.raises(TypeError, match="mask"):
        _kernels.mask_apply(np.zeros(8, np.float32), np.zeros(8, np.int32), 0, True)
    with pytest.raises(TypeError, match="mask"):
        _kernels.apply(np.zeros(8, np.float32), np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="keys"):
        _kernels.stream(b"\0" * 32, 0, 1, band)  # raw bytes carry no dtype
    with pytest.raises((TypeError, ValueError, BufferError)):
        _kernels.stream(np.zeros((4, 4), np.uint32)[:, ::2], 0, 1, np.zeros(16, np.uint32))  # not contiguous


def test_block_kernels_check_geometry():
    from paddleslim_static.core import _kernels
    w = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="geometry"):
        _kernels.block_scores(w, 5, 3, 2, 2, np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="m"):
        _kernels.block_scores(w, 4, 3, 0, 2, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="out"):
        _kernels.block_scores(w, 4, 3, 2, 2, np.zeros(3, np.float32))
