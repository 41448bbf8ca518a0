"""The Paddle-ops engine (``paddleslim_static.device_engine``) against the numpy/C core, bit for bit: thresholds
(global, local, blocks, across ranks), masks and the weights they zero, threshold mode, N:M, summaries, masks from
zeros, and the NaN/Inf errors - over float32/float16/float64/bfloat16 weights with ties, zeros, denormals and NaN.

Runs on the CPU (the engine is forced, as ``PADDLESLIM_ENGINE=paddle`` does); the core side gets what the dygraph
backend hands it on the host (bfloat16 widened to float32).
"""
import math

import numpy as np
import paddle
import pytest
from hypothesis import given, settings, strategies as st

import reference as ref
from paddleslim_static.core import engine
from paddleslim_static.core.nm import fill_nm_mask
from paddleslim_static.core.selection import NonFiniteScoreError, SelectionStats
from paddleslim_static.device_engine import PaddleEngine
from test_distributed_selection import ThreadWorld

E = PaddleEngine()
BLOCKS = [(1, 1), (2, 2), (3, 1), (1, 4), (4, 3)]
DTYPES = ["float32", "float16", "float64", "bfloat16"]


def to_device(w, dtype):
    """(host array the core sees, tensor the device engine sees) for one weight of ``dtype``."""
    if dtype == "bfloat16":
        t = paddle.to_tensor(w.astype(np.float32)).astype("bfloat16")
        bits = t.numpy().astype(np.uint32) << np.uint32(16)  # what host_array widens to
        return bits.view(np.float32).reshape(w.shape), t
    host = w.astype(dtype)
    return host, paddle.to_tensor(host)


def bits_of(t):
    """Exact bits of a tensor (bfloat16 widened like host_array) for bitwise comparison with the host array."""
    if t.dtype == paddle.bfloat16:
        return (t.numpy().astype(np.uint32) << np.uint32(16)).tobytes()
    return t.numpy().tobytes()


@st.composite
def weight_sets(draw, max_side=24, nan=True):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from(DTYPES))
    out = {}
    for i in range(draw(st.integers(1, 4))):
        shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=1, max_size=4)))
        w = rng.standard_normal(shape).astype(np.float32)
        style = draw(st.sampled_from(["normal", "ties", "zeros", "tiny", "signed_zeros"]
                                     + (["nan", "inf"] if nan else [])))
        if style == "ties":
            w = (np.round(w * 2) / 2).astype(np.float32)
        elif style == "zeros":
            w[rng.random(shape) < 0.6] = 0.0
        elif style == "tiny":  # denormals in float32 (and zeros after narrowing)
            w = (w * np.float32(1e-40)).astype(np.float32)
        elif style == "signed_zeros":
            w[rng.random(shape) < 0.5] = -0.0
        elif style in ("nan", "inf"):
            w.reshape(-1)[rng.integers(0, w.size)] = np.nan if style == "nan" else -np.inf
        out[f"p{i}"] = w
    pairs = {n: to_device(w, dtype) for n, w in out.items()}
    return {n: h for n, (h, _) in pairs.items()}, {n: t for n, (_, t) in pairs.items()}


def outcome(fn):
    """fn()'s result, or the type and message of the NonFiniteScoreError it raised."""
    try:
        return fn()
    except NonFiniteScoreError as e:
        return ("raised", str(e))


def thresholds_bytes(result):
    if isinstance(result, tuple) and result and result[0] == "raised":
        return result
    g, per = result
    return (None if g is None else np.float32(g).tobytes()), {n: np.float32(t).tobytes() for n, t in per.items()}


@settings(max_examples=60, deadline=None)
@given(weight_sets(), st.floats(0, 0.999), st.sampled_from(BLOCKS), st.booleans())
def test_ratio_thresholds_masks_and_weights_are_bitwise_equal(case, ratio, block, local):
    host, dev = case
    want = outcome(lambda: engine.ratio_thresholds(host, ratio, local, block))
    got = outcome(lambda: E.ratio_thresholds(dev, ratio, local, block))
    assert thresholds_bytes(got) == thresholds_bytes(want)
    if want[0] == "raised":
        return
    g, per = want
    masks = {n: np.ones(w.shape, bool) for n, w in host.items()}
    engine.fill_masks(host, masks, g, per, block, apply=True)
    dmasks = {n: paddle.ones(w.shape, "bool") for n, w in host.items()}
    E.fill_masks(dev, dmasks, got[0], got[1], block, apply=True)
    for n in host:
        np.testing.assert_array_equal(dmasks[n].numpy(), masks[n], err_msg=n)
        assert bits_of(dev[n]) == host[n].tobytes(), n


@settings(max_examples=40, deadline=None)
@given(weight_sets(), st.sampled_from([0.0, 1e-40, 0.1, 0.5, 1.0, 3.0]), st.sampled_from(BLOCKS))
def test_threshold_mode_masks_are_bitwise_equal(case, threshold, block):
    host, dev = case
    masks = {n: np.ones(w.shape, bool) for n, w in host.items()}
    engine.fill_masks(host, masks, threshold, {}, block, apply=True)
    dmasks = {n: paddle.ones(w.shape, "bool") for n, w in host.items()}
    E.fill_masks(dev, dmasks, threshold, {}, block, apply=True)
    for n in host:
        np.testing.assert_array_equal(dmasks[n].numpy(), masks[n], err_msg=n)
        assert bits_of(dev[n]) == host[n].tobytes(), n


@st.composite
def nm_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    m = draw(st.sampled_from([2, 4, 5, 8, 17]))
    n = draw(st.integers(1, m - 1))
    layout = draw(st.sampled_from(["linear", "conv"]))
    shape = ((draw(st.integers(m, 3 * m + 3)), draw(st.integers(1, 6))) if layout == "linear" else
             (draw(st.integers(1, 4)), draw(st.integers(m, 2 * m + 3)), draw(st.integers(1, 3)),
              draw(st.integers(1, 3))))
    w = rng.standard_normal(shape).astype(np.float32)
    if draw(st.booleans()):
        w = (np.round(w) / 2).astype(np.float32)  # many ties and zeros
    if draw(st.booleans()):
        w.reshape(-1)[rng.integers(0, w.size)] = np.nan
    return w, n, m, layout, draw(st.sampled_from(DTYPES))


@settings(max_examples=40, deadline=None)
@given(nm_cases())
def test_nm_masks_are_bitwise_equal(case):
    w, n, m, layout, dtype = case
    host, dev = to_device(w, dtype)
    start = np.random.default_rng(0).random(w.shape) < 0.8  # intersect with an existing magnitude mask
    want = start.copy()
    fill_nm_mask(host, n, m, layout, out=want, intersect=True)
    got = paddle.to_tensor(start)
    E.fill_nm({"w": dev}, {"w": got}, n, m, {"w": layout})
    np.testing.assert_array_equal(got.numpy(), want)


@settings(max_examples=40, deadline=None)
@given(weight_sets(), st.floats(0, 1))
def test_summarize_and_masks_from_nonzero_are_equal(case, ratio):
    host, dev = case
    assert outcome(lambda: E.summarize(dev, ratio)) == outcome(lambda: engine.summarize(host, ratio))
    masks = {n: np.ones(w.shape, bool) for n, w in host.items()}
    engine.masks_from_nonzero(host, masks)
    dmasks = {n: paddle.ones(w.shape, "bool") for n, w in host.items()}
    E.masks_from_nonzero(dev, dmasks)
    for n in host:
        np.testing.assert_array_equal(dmasks[n].numpy(), masks[n])


@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
@pytest.mark.parametrize("local", [False, True])
def test_large_model_against_full_sort(block, local):
    """Above the core's direct-selection size (its streamed path), and against a brute-force sort."""
    rng = np.random.default_rng(3)
    host = {"a": rng.standard_normal((300, 260)).astype(np.float32),
            "b": np.round(rng.standard_normal((64, 32, 3, 3)) * 4).astype(np.float32)}
    host["a"][:, :90] = 0.0
    dev = {n: paddle.to_tensor(w) for n, w in host.items()}
    want = engine.ratio_thresholds(host, 0.7, local, block)
    got = E.ratio_thresholds(dev, 0.7, local, block)
    assert thresholds_bytes(got) == thresholds_bytes(want)
    if not local:
        assert np.float32(got[0]).tobytes() == ref.ratio_threshold(list(host.values()), 0.7, block).tobytes()
    else:
        for n, w in host.items():
            assert np.float32(got[1][n]).tobytes() == ref.ratio_threshold([w], 0.7, block).tobytes()


@pytest.mark.parametrize("size", [1000, 300_000])
def test_non_finite_raises_the_cores_error(size):
    """Same type and message on the small (direct) and the large (streamed) path of the core."""
    w = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    w[size // 3] = np.nan
    host = {"ok": np.ones(10, np.float32), "bad": w}
    dev = {n: paddle.to_tensor(v) for n, v in host.items()}
    want = outcome(lambda: engine.ratio_thresholds(host, 0.5, False, (1, 1)))
    assert want[0] == "raised"
    assert outcome(lambda: E.ratio_thresholds(dev, 0.5, False, (1, 1))) == want
    assert outcome(lambda: E.ratio_thresholds(dev, 0.5, True, (1, 1))) == outcome(
        lambda: engine.ratio_thresholds(host, 0.5, True, (1, 1)))


def test_all_pruned_and_empty_edge_cases():
    one = {"w": paddle.to_tensor(np.array([3.0], np.float32))}
    assert math.isinf(E.ratio_thresholds(one, 0.9, False, (1, 1))[0])  # round(0.9 * 1) = 1 >= 1
    assert math.isinf(E.ratio_thresholds(one, 0.9, True, (1, 1))[1]["w"])
    with pytest.raises(ValueError, match="no prunable weights"):
        E.summarize({"w": paddle.zeros([0])}, 0.5)


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("block", [(1, 1), (2, 2)])
def test_across_ranks_equals_one_process(local, block):
    rng = np.random.default_rng(5)
    host = {f"l{i}": np.round(rng.standard_normal(s) * 3).astype(np.float32)
            for i, s in enumerate([(40, 30), (16, 8, 3, 3), (33, 17)])}
    want = thresholds_bytes(engine.ratio_thresholds(host, 0.55, local, block))

    def rank(r, c):
        mine = {n: paddle.to_tensor(w) for i, (n, w) in enumerate(host.items()) if i % 2 == r}
        g, per = E.ratio_thresholds(mine, 0.55, local, block, collectives=c)
        return g, per
    for r, got in enumerate(ThreadWorld(2).run(rank)):
        g, per = thresholds_bytes(got)
        assert g == want[0]
        assert per == {n: t for n, t in want[1].items() if n in per}


def test_stats_count_passes_and_bytes():
    w = {"a": paddle.to_tensor(np.random.default_rng(1).standard_normal((500, 400)).astype(np.float32))}
    stats = SelectionStats()
    E.ratio_thresholds(w, 0.5, False, (1, 1), stats=stats)
    assert (stats.passes, stats.host_bytes) == (2, 16)  # two int64 scalars: the key and the non-finite count


@settings(max_examples=30, deadline=None)
@given(weight_sets(nan=False), st.floats(0, 0.999), st.sampled_from(BLOCKS))
def test_prune_counts_and_max_scores_match_the_core(case, ratio, block):
    """The two options the sparsity allocation uses: per-layer prune counts (local) and each layer's largest score
    (global), as the core computes them."""
    host, dev = case
    counts = {n: int(round(ratio * w.size * (0.5 + i % 3 / 2))) for i, (n, w) in enumerate(host.items())}
    want = engine.ratio_thresholds(host, ratio, True, block, prune_counts=counts)
    got = E.ratio_thresholds(dev, ratio, True, block, prune_counts=counts)
    assert thresholds_bytes(got) == thresholds_bytes(want)
    want_max, got_max = {}, {}
    g1 = engine.ratio_thresholds(host, ratio, False, block, max_scores=want_max)[0]
    g2 = E.ratio_thresholds(dev, ratio, False, block, max_scores=got_max)[0]
    assert np.float32(g1).tobytes() == np.float32(g2).tobytes()
    if want_max:  # the core leaves it empty when no pass ran (everything pruned)
        assert got_max == want_max
