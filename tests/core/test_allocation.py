"""Sparsity allocation across layers (core/allocation.py) against brute-force references: RigL's iterative ERK,
an exhaustive search over integer roundings, and a greedy global selection with per-layer quotas."""
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from paddleslim_static.core import allocation as al

shapes_st = st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple), min_size=1, max_size=6)
ratio_st = st.floats(0.0, 0.999, allow_nan=False)


def _sizes(shapes):
    return [math.prod(s) for s in shapes]


def rigl_erk(shapes, keep):
    """RigL's ERK (sparse_utils.get_sparsities): eps over the non-dense layers, layers whose density would exceed 1
    made dense, repeated until none does. Real-valued kept counts."""
    n = _sizes(shapes)
    raw = [Fraction(sum(s), math.prod(s)) for s in shapes]
    dense = set()
    while True:
        rhs = keep - sum(n[i] for i in dense)
        divisor = sum(raw[i] * n[i] for i in range(len(n)) if i not in dense)
        eps = Fraction(rhs) / divisor
        over = {i for i in range(len(n)) if i not in dense and eps * raw[i] > 1}
        if not over:
            return [Fraction(n[i]) if i in dense else eps * raw[i] * n[i] for i in range(len(n))]
        dense |= over


@settings(max_examples=300, deadline=None)
@given(shapes_st, ratio_st, st.sampled_from(["uniform", "erk"]), st.sampled_from([0.0, 0.0, 0.05, 0.2, 0.5]))
def test_prune_counts_sum_exactly_respect_floors_and_follow_the_real_shares(shapes, ratio, method, min_density):
    n = _sizes(shapes)
    total = sum(n)
    keep = total - int(round(ratio * total))
    lows = al.floors(n, min_density)
    if sum(lows) > keep:
        with pytest.raises(ValueError, match="min_density"):
            al.prune_counts(shapes, ratio, method, min_density)
        return
    counts = al.prune_counts(shapes, ratio, method, min_density)
    assert sum(counts) == int(round(ratio * total))  # the global count, exactly
    kept = [a - c for a, c in zip(n, counts)]
    assert all(lo <= k <= a for lo, k, a in zip(lows, kept, n))
    # the real shares: x_l = clip(eps * raw_l * n_l, low_l, n_l) for one eps, summing to keep
    raw = [Fraction(1) if method == "uniform" else Fraction(sum(s), math.prod(s)) for s in shapes]
    x = al.shares(n, raw, keep, lows)
    assert sum(x) == keep
    a = [r * m for r, m in zip(raw, n)]
    inner = [i for i in range(len(n)) if lows[i] < x[i] < n[i]]
    if inner:
        eps = x[inner[0]] / a[inner[0]]
        assert all(x[i] == min(max(eps * a[i], lows[i]), n[i]) for i in range(len(n)))
    else:  # every layer at a bound: some eps puts the floored ones below and the dense ones above
        hi = min([Fraction(lows[i]) / a[i] for i in range(len(n)) if x[i] == lows[i] < n[i]], default=None)
        lo = max([Fraction(n[i]) / a[i] for i in range(len(n)) if x[i] == n[i] > lows[i]], default=Fraction(0))
        assert hi is None or lo <= hi
    # the rounding: within one weight of the share, and minimal total deviation over all floor/ceil choices
    assert all(abs(k - v) < 1 for k, v in zip(kept, x))
    if len(n) <= 6:
        best = min(sum(abs(c - v) for c, v in zip(choice, x))
                   for choice in itertools.product(*[sorted({math.floor(v), math.ceil(v)}) for v in x])
                   if sum(choice) == keep)
        assert sum(abs(k - v) for k, v in zip(kept, x)) == best


@settings(max_examples=200, deadline=None)
@given(shapes_st, ratio_st)
def test_erk_matches_rigls_iterative_algorithm_when_no_floor_binds(shapes, ratio):
    n = _sizes(shapes)
    keep = sum(n) - int(round(ratio * sum(n)))
    assume(keep > 0)
    ref = rigl_erk(shapes, keep)
    assume(all(v >= 1 for v in ref))  # the 1-weight floor does not bind
    x = al.shares(n, [al.erk_raw(s) for s in shapes], keep, al.floors(n, 0.0))
    assert x == ref


@settings(max_examples=200, deadline=None)
@given(shapes_st, ratio_st)
def test_uniform_is_the_ratio_in_every_layer_within_one_weight(shapes, ratio):
    n = _sizes(shapes)
    k = int(round(ratio * sum(n)))
    assume(all(Fraction(sum(n) - k, sum(n)) * m >= 1 for m in n))  # the 1-weight floor does not bind
    counts = al.prune_counts(shapes, ratio, "uniform")
    real = [Fraction(k, sum(n)) * m for m in n]  # the rounded global ratio in every layer
    assert all(abs(c - v) < 1 for c, v in zip(counts, real))


def test_erk_gives_small_layers_more_density_and_caps_them_at_dense():
    shapes = [(3, 3, 1, 8), (3, 3, 8, 16), (144, 32), (32, 6)]
    counts = al.prune_counts(shapes, 0.95, "erk")
    density = [1 - c / math.prod(s) for c, s in zip(counts, shapes)]
    assert density[1] < density[2] < density[3] < density[0] < 1.0  # sum(dims) / prod(dims) order
    assert sum(counts) == round(0.95 * sum(math.prod(s) for s in shapes))
    counts = al.prune_counts(shapes, 0.5, "erk")  # the first convolution would exceed 1: dense, the rest scaled up
    assert counts[0] == 0 and counts[3] == 0 and sum(counts) == round(0.5 * sum(math.prod(s) for s in shapes))


def greedy_global(scores, lows, k):
    """Reference: walk all scores in increasing order, pruning each unless its layer already prunes n - floor."""
    quota = {n: len(v) - lows[n] for n, v in scores.items()}
    pruned = {n: 0 for n in scores}
    order = sorted((v, n) for n, vs in scores.items() for v in vs)
    done = 0
    for v, n in order:
        if done == k:
            break
        if pruned[n] < quota[n]:
            pruned[n] += 1
            done += 1
    return pruned


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=5), st.floats(0.0, 0.999), st.sampled_from([0.0, 0.1, 0.3]),
       st.lists(st.floats(0.01, 100.0), min_size=5, max_size=5), st.randoms(use_true_random=False))
def test_protect_global_is_greedy_selection_with_per_layer_quotas(sizes, ratio, min_density, scales, rnd):
    names = [f"l{i}" for i in range(len(sizes))]
    total = sum(sizes)
    k = int(round(ratio * total))
    lows = dict(zip(names, al.floors(sizes, min_density)))
    assume(sum(lows.values()) <= total - k)
    values = rnd.sample(range(1, 10 * total + 1), total)  # distinct scores, layers on different scales
    scores, at = {}, 0
    for i, (name, m) in enumerate(zip(names, sizes)):
        scores[name] = [v * scales[i] for v in values[at:at + m]]
        at += m

    def select(free, kk):  # brute force: the kk-th smallest over the free layers (inf: all pruned)
        pool = sorted(v for n in free for v in scores[n])
        return pool[kk] if kk < len(pool) else math.inf

    floor_scores = {n: sorted(scores[n])[len(scores[n]) - lows[n]] for n in names}
    t, pinned = al.protect_global(dict(zip(names, sizes)), lows, floor_scores, k, select)
    got = {n: sum(v < (floor_scores[n] if n in pinned else t) for v in scores[n]) for n in names}
    assert got == greedy_global(scores, lows, k)
    assert sum(got.values()) == k
    assert all(len(scores[n]) - got[n] >= lows[n] for n in names)


def test_floors_use_the_decimal_min_density():
    assert al.floors([1000, 7, 0, 3], 0.01) == [10, 1, 0, 1]
    assert al.floors([10], 1.0) == [10]


@pytest.mark.parametrize("value,exc", [("erk ", ValueError), ("ERK", ValueError), (None, TypeError), (1, TypeError)])
def test_check_allocation_names_the_argument(value, exc):
    with pytest.raises(exc, match="sparsity_allocation"):
        al.check_allocation(value)


@pytest.mark.parametrize("value,exc", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                       (True, TypeError), ("0.1", TypeError), (np.float32(0.1), None)])
def test_check_min_density_names_the_argument(value, exc):
    if exc is None:
        assert al.check_min_density(value) == float(value)
        return
    with pytest.raises(exc, match="min_density"):
        al.check_min_density(value)


@pytest.mark.parametrize("block", [(1, 1), (2, 3)])
@pytest.mark.parametrize("size", [300, 200_000])  # the direct selection and the streaming one
def test_max_scores_of_the_global_selection_are_each_layers_largest_score(block, size):
    from reference import element_scores, on_c_and_numpy

    from paddleslim_static.core import engine
    rng = np.random.default_rng(size)
    w = {f"w{i}": rng.standard_normal((size // 100, 100 // (i + 1))).astype(np.float32) * (i + 1) for i in range(3)}
    w["w1"][0, 0] = 0.0

    def run():
        out = []
        for _ in range(2):  # cold, then warm-started from the cache
            maxes = {}
            g, _ = engine.ratio_thresholds(w, 0.7, False, block, max_scores=maxes)
            out.append((float(g), maxes))
        return out
    for got in on_c_and_numpy(run):
        for g, maxes in got:
            assert maxes == {n: float(element_scores(a, block).max()) for n, a in w.items()}
            assert g == float(np.sort(np.concatenate([element_scores(a, block).ravel() for a in w.values()]))[
                round(0.7 * sum(a.size for a in w.values()))])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=4), st.floats(0.0, 0.995),
       st.sampled_from(["global", "uniform", "erk"]), st.sampled_from([0.0, 0.0, 0.1, 0.3]),
       st.lists(st.sampled_from([2.0 ** -13, 2.0 ** -7, 1.0, 8.0]), min_size=4, max_size=4), st.integers(0, 2 ** 31))
def test_the_pruner_prunes_each_layers_smallest_weights_by_its_allocation(shapes, ratio, method, min_density,
                                                                          scales, seed):
    from paddleslim_static.core.backend import ArrayBackend
    from paddleslim_static.core.pruner import Pruner
    sizes = [a * b for a, b in shapes]
    k = int(round(ratio * sum(sizes)))
    lows = al.floors(sizes, min_density)
    assume(sum(lows) <= sum(sizes) - k)
    rng = np.random.default_rng(seed)
    values = 2 * rng.permutation(sum(sizes)).astype(np.float32) + 1  # odd x power of two: distinct magnitudes
    w, at = {}, 0
    for i, (shape, m) in enumerate(zip(shapes, sizes)):
        w[f"l{i}"] = (values[at:at + m] * scales[i] * rng.choice([-1, 1], m)).astype(np.float32).reshape(shape)
        at += m
    ref = {n: np.abs(a).ravel() for n, a in w.items()}
    Pruner(ArrayBackend(w), mode="ratio", ratio=ratio, sparsity_allocation=method, min_density=min_density).step()
    pruned = {n: int((a == 0).sum()) for n, a in w.items()}
    if method == "global":
        expect = greedy_global({n: list(v) for n, v in ref.items()}, dict(zip(w, lows)), k)
    else:
        expect = dict(zip(w, al.prune_counts([s for s in shapes], ratio, method, min_density)))
    assert pruned == expect
    for n, a in w.items():  # each layer pruned exactly its smallest magnitudes
        order = np.argsort(ref[n], kind="stable")
        assert (a.ravel()[order[:pruned[n]]] == 0).all() and (a.ravel()[order[pruned[n]:]] != 0).all()
