"""The numerical core against a full-sort reference: random shapes, ratios, ties, zeros, blocks."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from paddleslim_static.core import (
    NonFiniteScoreError, ScoreSource, block_scores, fill_masks, kth_smallest, prune_count, ratio_threshold,
    ratio_thresholds, summarize,
)
from paddleslim_static.core.selection import _select_in

import reference as ref
from paddleslim_static.core import kernels


@pytest.fixture(autouse=True, scope="module", params=["c-kernels", "numpy"])
def backend(request):
    """Every test here runs on the C kernels (when built) and on the numpy code."""
    if request.param == "c-kernels" and not kernels.available():
        pytest.skip("C kernels not built (no compiler at install time)")
    previous = kernels.use_c(request.param == "c-kernels")
    yield request.param
    kernels.use_c(previous)

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)


@st.composite
def weight_sets(draw):
    arrays = []
    for _ in range(draw(st.integers(1, 4))):
        shape = draw(shapes)
        style = draw(st.sampled_from(["normal", "ties", "zeros", "tiny"]))
        seed = draw(st.integers(0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        w = rng.standard_normal(shape).astype(np.float32)
        if style == "ties":
            w = (np.round(w * 2) / 2).astype(np.float32)  # few distinct magnitudes, signs differ
        elif style == "zeros":
            w[rng.random(shape) < 0.4] = 0.0
            w[rng.random(shape) < 0.1] = -0.0
        elif style == "tiny":
            w *= np.float32(1e-39)  # subnormals
        arrays.append(w)
    return arrays


# small chunk / direct_max force the streaming, sampled path on small inputs
paths = st.sampled_from([dict(), dict(chunk=7, direct_max=0), dict(chunk=64, direct_max=10)])


@given(weight_sets(), st.floats(0, 0.999), paths)
def test_ratio_threshold_matches_sort(ws, ratio, kw):
    got = ratio_threshold([ScoreSource(w) for w in ws], ratio, **kw)
    assert got.tobytes() == ref.ratio_threshold(ws, ratio).tobytes()


@given(weight_sets(), st.floats(0, 0.999), st.sampled_from([(1, 1), (2, 2), (3, 1), (1, 4), (5, 5)]), paths)
def test_block_threshold_and_masks_match_sort(ws, ratio, block, kw):
    from paddleslim_static.core import score_source
    got = ratio_threshold([score_source(w, block) for w in ws], ratio, **kw)
    want = ref.ratio_threshold(ws, ratio, block)
    assert got.tobytes() == want.tobytes()
    named = {f"w{i}": w for i, w in enumerate(ws)}
    masks = {n: np.empty(w.shape, bool) for n, w in named.items()}
    fill_masks(named, masks, got, {}, block)
    for n, w in named.items():
        np.testing.assert_array_equal(masks[n], ref.element_scores(w, block) >= want)


@given(weight_sets(), st.floats(0, 0.999))
def test_pruned_count_is_k_when_scores_distinct(ws, ratio):
    flat = np.concatenate([w.ravel() for w in ws])
    distinct = np.unique(np.abs(flat)).size == flat.size
    named = {f"w{i}": w for i, w in enumerate(ws)}
    g, _ = ratio_thresholds(named, ratio, local=False, block=(1, 1))
    masks = {n: np.empty(w.shape, bool) for n, w in named.items()}
    fill_masks(named, masks, g, {}, (1, 1))
    pruned = sum(int((~m).sum()) for m in masks.values())
    k = prune_count(flat.size, ratio)
    if distinct:
        assert pruned == k
    else:  # ties at the threshold are kept, so at most k are pruned
        assert pruned <= k


@given(weight_sets(), st.floats(0, 0.999), paths)
def test_local_thresholds_are_per_parameter(ws, ratio, kw):
    named = {f"w{i}": w for i, w in enumerate(ws)}
    g, per = ratio_thresholds(named, ratio, local=True, block=(1, 1))
    assert g is None
    for n, w in named.items():
        assert per[n].tobytes() == ref.ratio_threshold([w], ratio).tobytes()


@given(weight_sets(), st.floats(0, 1))
def test_summarize_matches_sort(ws, ratio):
    named = {f"w{i}": w for i, w in enumerate(ws)}
    assert summarize(named, ratio) == ref.summarize(ws, ratio)


def test_existing_zeros_count_among_pruned():
    w = np.array([0, 0, 0, 0, 1, 2, 3, 4, 5, 6], np.float32)
    assert ratio_threshold([ScoreSource(w)], 0.3) == 0.0  # k=3 < 4 zeros: nothing nonzero goes
    assert ratio_threshold([ScoreSource(w)], 0.5) == 2.0  # k=5: the four zeros and 1


def test_ratio_zero_prunes_nothing_and_tiny_ratio_one_element():
    w = np.array([3.0, -1.0, 2.0], np.float32)
    assert ratio_threshold([ScoreSource(w)], 0.0) == 1.0
    assert ratio_threshold([ScoreSource(np.ones(1, np.float32))], 0.9) == np.inf  # round(0.9)=1=n


def test_round_half_to_even():
    assert prune_count(10, 0.25) == 2 and prune_count(10, 0.35) == 4 and prune_count(3, 0.5) == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kw", [dict(), dict(chunk=5, direct_max=0)])
def test_non_finite_weights_raise(bad, kw):
    w = np.linspace(-1, 1, 50).astype(np.float32)
    w[17] = bad
    with pytest.raises(NonFiniteScoreError, match="NaN|Inf"):
        ratio_threshold([ScoreSource(w, name="fc.w")], 0.5, **kw)


def test_bracket_miss_falls_back_exactly():
    # heavy duplication at the k-th value with the sampled path: whatever the sample sees, the result is exact
    rng = np.random.default_rng(3)
    w = np.concatenate([np.full(200_000, 0.5, np.float32), rng.standard_normal(100_000).astype(np.float32)])
    for ratio in (0.01, 0.3, 0.5, 0.69, 0.99):
        got = ratio_threshold([ScoreSource(w)], ratio, chunk=4096, direct_max=0)
        assert got == ref.ratio_threshold([w], ratio)


def test_kth_rejects_out_of_range():
    with pytest.raises(ValueError, match="k must be"):
        kth_smallest([ScoreSource(np.ones(3, np.float32))], 3)


def test_weighted_select():
    keys = np.array([5, 1, 3], np.uint32)
    counts = np.array([1, 2, 3])
    # expanded: 1 1 3 3 3 5
    assert [_select_in(keys, counts, r) for r in range(6)] == [1, 1, 3, 3, 3, 5]


def test_block_scores_edges_and_trailing_axes():
    w = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) - 5
    s, c = block_scores(w, (2, 2))
    assert s.shape == (1, 2) and c.tolist() == [[8, 4]]
    assert s[0, 0] == np.float32(np.abs(w[:, :2]).mean())
    assert s[0, 1] == np.float32(np.abs(w[:, 2:]).mean())


def test_other_dtypes_scored_in_float32():
    w64 = np.array([0.1, -0.3, 0.2, 0.4], np.float64)
    w16 = np.array([0.1, -0.3, 0.2, 0.4], np.float16)
    assert ratio_threshold([ScoreSource(w64)], 0.5) == np.float32(0.3)
    assert ratio_threshold([ScoreSource(w16)], 0.5) == np.float32(np.float16(0.3))


@pytest.mark.parametrize("ratio", [0.1, 0.69, 0.7, 0.71, 0.9])
def test_mostly_zero_weights_exact_and_not_gathered(ratio):
    # 70% exact zeros (an already sparse model, or step() called twice): the zeros must be counted, not gathered
    from paddleslim_static.core import selection
    rng = np.random.default_rng(0)
    w = rng.standard_normal(400_000).astype(np.float32)
    w[rng.random(w.size) < 0.7] = 0.0
    stats = selection.SelectionStats()
    got = ratio_threshold([ScoreSource(w)], ratio, chunk=1 << 14, direct_max=0, stats=stats)
    assert got == ref.ratio_threshold([w], ratio)
    assert stats.largest_band < 0.05 * w.size


@given(st.integers(0, 2**31 - 1), st.floats(0, 0.999), st.integers(1, 6))
def test_quantized_weights_many_ties(seed, ratio, levels):
    rng = np.random.default_rng(seed)
    w = (rng.integers(-levels, levels + 1, 5000) / levels).astype(np.float32)
    got = ratio_threshold([ScoreSource(w)], ratio, chunk=257, direct_max=0)
    assert got == ref.ratio_threshold([w], ratio)


def test_second_step_on_pruned_weights_takes_one_pass():
    # after a step exactly k weights are 0: the k-th is the smallest nonzero, right above the run of zeros
    from paddleslim_static.core import selection
    rng = np.random.default_rng(2)
    w = rng.standard_normal(500_000).astype(np.float32)
    t = ref.ratio_threshold([w], 0.7)
    w[np.abs(w) < t] = 0.0
    stats = selection.SelectionStats()
    assert ratio_threshold([ScoreSource(w)], 0.7, chunk=1 << 15, direct_max=0, stats=stats) == t
    assert stats.passes == 1
