"""The optional C kernels compute exactly the bits the numpy code computes."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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


def _both(fn):
    out = []
    for flag in (True, False):
        previous = kernels.use_c(flag)
        try:
            out.append(fn())
        finally:
            kernels.use_c(previous)
    return out


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
    c, py = _both(run)
    assert c == py  # -0.0 and NaN included


@given(weights())
def test_apply_matches_numpy_bit_for_bit(w):
    mask = np.random.default_rng(0).random(w.shape) < 0.5
    def run():
        ww = w.copy()
        apply_masks({"w": ww}, {"w": mask})
        return ww.tobytes()
    c, py = _both(run)
    assert c == py


def test_thresholds_equal_on_large_input():
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal(300_000).astype(np.float32) for _ in range(3)]
    ws[1][rng.random(300_000) < 0.6] = 0
    for ratio in (0.1, 0.5, 0.7, 0.95):
        c, py = _both(lambda r=ratio: ratio_threshold([ScoreSource(w) for w in ws], r))
        assert c.tobytes() == py.tobytes()


def test_rejects_bad_buffers():
    with pytest.raises(ValueError, match="band_out"):
        kernels.stream(np.zeros(8, np.uint32), 0, 1, np.zeros(4, np.uint32))
    with pytest.raises(ValueError, match="lo <= hi"):
        kernels.stream(np.zeros(8, np.uint32), 5, 1, np.zeros(8, np.uint32))
