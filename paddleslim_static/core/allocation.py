"""How many weights each layer prunes: the sparsity allocation across layers (pure, no Paddle, no weights).

Methods (``sparsity_allocation``):

* ``'global'`` (the seed's default): one magnitude threshold over all prunable weights; a layer's share
  follows its weights. Not computed here (it needs the scores); :func:`protect_global` adds the floors.
* ``'uniform'``: every layer at the target ratio.
* ``'erk'`` (Erdős–Rényi-Kernel, RigL): a layer's density is proportional to the sum of its weight's
  dimensions over their product, ``d_l = eps * sum(shape_l) / prod(shape_l)``, with ``eps`` scaled so the
  kept weights add up to the target; a layer whose ``d_l`` would exceed 1 is kept dense and the excess goes
  to the others.

Every method honours a per-layer **floor** (:func:`floors`): at least ``max(1, ceil(min_density * n_l))``
weights of a layer of ``n_l`` weights are kept, so no layer is ever emptied (layer collapse). The kept
share of a layer is ``x_l = clip(eps * raw_l * n_l, floor_l, n_l)`` (``raw_l`` = 1 for uniform, the ERK
term for erk), ``eps`` solved exactly in rational arithmetic so that ``sum x_l`` equals the kept count of the
target. The real shares are made integers by the **largest-remainder rule**: each layer keeps
``floor(x_l)`` weights and the ``K - sum floor(x_l)`` weights left over go one each to the layers with the
largest fractional parts of ``x_l``, the earlier layer first on ties. So ``sum(prune counts) ==
round(ratio * N)`` exactly — the same global count the ``'global'`` method prunes — and every layer is within
one weight of its real share.

>>> prune_counts([(4, 4), (100, 100)], 0.9, "uniform")
[14, 9000]
>>> prune_counts([(4, 4), (100, 100)], 0.9, "erk")  # the small layer stays dense
[0, 9014]
>>> sum(prune_counts([(3, 5), (7, 2, 3, 3)], 0.77, "erk")) == round(0.77 * (15 + 126))
True
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .validation import check_choice, check_ratio

__all__ = ["METHODS", "check_allocation", "check_min_density", "erk_raw", "floors", "check_feasible",
           "prune_counts", "shares", "largest_remainder", "protect_global"]

METHODS = ("global", "uniform", "erk")


def check_allocation(value: object) -> str:
    """``sparsity_allocation``: one of :data:`METHODS`."""
    return check_choice("sparsity_allocation", value, METHODS)


def check_min_density(value: object) -> float:
    """``min_density``: a real number in [0, 1]."""
    return check_ratio(value, "min_density", allow_one=True)


def _size(shape: Sequence[int]) -> int:
    return int(math.prod(int(d) for d in shape))


def erk_raw(shape: Sequence[int]) -> Fraction:
    """The Erdős–Rényi-Kernel density term of a weight: sum of its dimensions over their product.

    >>> erk_raw((3, 3, 16, 32)), erk_raw((64, 10))
    (Fraction(3, 256), Fraction(37, 320))
    """
    n = _size(shape)
    return Fraction(sum(int(d) for d in shape), n) if n else Fraction(0)


def floors(sizes: Sequence[int], min_density: float) -> List[int]:
    """Per layer, the fewest weights it keeps: ``max(1, ceil(min_density * n))`` (``n`` when smaller).

    >>> floors([10, 1000, 0], 0.01)
    [1, 10, 0]
    """
    md = Fraction(repr(float(min_density)))  # the decimal as written: ceil(0.01 * 1000) is 10, not 11
    return [min(n, max(1, math.ceil(md * n))) for n in sizes]


def check_feasible(names: Sequence[str], sizes: Sequence[int], ratio: float, min_density: float) -> None:
    """ValueError when the floors need more kept weights than ``ratio`` leaves (names the busiest layer)."""
    total = sum(sizes)
    keep = total - _prune_total(total, ratio)
    fl = floors(sizes, min_density)
    if sum(fl) > keep:
        big = max(range(len(sizes)), key=lambda i: fl[i])
        raise ValueError(
            f"min_density={min_density!r} keeps at least {sum(fl)} of {total} weights (e.g. {fl[big]} in "
            f"{names[big]!r}) but ratio={ratio!r} keeps only {keep}; lower min_density or the ratio")


def _prune_total(total: int, ratio: float) -> int:
    return int(round(ratio * total))  # selection.prune_count: the count the global threshold prunes


def shares(sizes: Sequence[int], raw: Sequence[Fraction], keep: int, lows: Sequence[int]) -> List[Fraction]:
    """Real kept shares ``x_l = clip(eps * raw_l * n_l, lows_l, n_l)`` with ``sum x_l == keep`` (exact).

    The sum is piecewise linear and non-decreasing in ``eps``: a layer starts to grow at ``eps = lows_l / a_l`` and
    stops at ``n_l / a_l`` (``a_l = raw_l * n_l``). One sweep over those events in order (O(L log L)) finds the
    segment holding ``keep``. Needs ``sum(lows) <= keep <= sum(sizes)``.
    """
    if not sum(lows) <= keep <= sum(sizes):
        raise ValueError(f"keep={keep} must lie in [{sum(lows)}, {sum(sizes)}]")
    a = [r * n for r, n in zip(raw, sizes)]
    live = [i for i in range(len(sizes)) if a[i] > 0 and lows[i] < sizes[i]]
    starts = [(Fraction(lows[i]) / a[i], a[i]) for i in live]
    events = sorted(starts + [(Fraction(sizes[i]) / a[i], -a[i]) for i in live], key=lambda e: e[0])
    eps, total, slope = Fraction(0), Fraction(sum(lows)), Fraction(0)  # at eps = 0 every layer sits at its floor
    for at, change in events:
        reach = total + slope * (at - eps)
        if reach >= keep and slope > 0:
            eps += (keep - total) / slope
            break
        eps, total, slope = at, reach, slope + change
    return [min(max(eps * a[i], Fraction(lows[i])), Fraction(sizes[i])) if a[i] > 0 else Fraction(lows[i])
            for i in range(len(sizes))]


def largest_remainder(x: Sequence[Fraction], total: int) -> List[int]:
    """Integers ``k_l`` in ``{floor(x_l), ceil(x_l)}`` with ``sum k_l == total`` (``sum x_l == total``): the
    leftover units go to the largest fractional parts, the earlier index first on ties.

    >>> largest_remainder([Fraction(3, 2), Fraction(3, 2), Fraction(1)], 4)
    [2, 1, 1]
    """
    base = [math.floor(v) for v in x]
    left = total - sum(base)
    order = sorted(range(len(x)), key=lambda i: (-(x[i] - base[i]), i))
    for i in order[:left]:
        base[i] += 1
    return base


def prune_counts(shapes: Sequence[Sequence[int]], ratio: float, method: str, min_density: float = 0.0) -> List[int]:
    """Per-layer prune counts of ``'uniform'`` or ``'erk'`` for ``ratio`` of all weights (see the module
    docstring): they sum to ``round(ratio * N)`` and every layer keeps at least its floor.

    >>> prune_counts([(10,), (1000,)], 0.95, "uniform")  # the small layer's share, 0.495, is lifted to 1
    [9, 951]
    >>> prune_counts([(8, 8), (32, 32), (128, 128)], 0.9, "erk")  # the largest layer keeps 8.2%
    [0, 687, 15038]
    >>> prune_counts([(8, 8), (32, 32), (128, 128)], 0.9, "erk", min_density=0.085)
    [0, 734, 14991]
    """
    if method not in ("uniform", "erk"):
        raise ValueError(f"prune_counts computes 'uniform' or 'erk'; got {method!r} ('global' depends on the scores)")
    sizes = [_size(s) for s in shapes]
    total = sum(sizes)
    check_feasible([str(i) for i in range(len(sizes))], sizes, ratio, min_density)
    keep = total - _prune_total(total, ratio)
    raw = [Fraction(1) if method == "uniform" else erk_raw(s) for s in shapes]
    kept = largest_remainder(shares(sizes, raw, keep, floors(sizes, min_density)), keep)
    return [n - k for n, k in zip(sizes, kept)]


def protect_global(
    sizes: Mapping[str, int],
    lows: Mapping[str, int],
    floor_scores: Mapping[str, float],
    k_total: int,
    select: Callable[[List[str], int], float],
    reduce_sum: Optional[Callable[[List[int]], List[int]]] = None,
) -> Tuple[float, List[str]]:
    """Global magnitude selection with floors: ``(threshold of the free layers, pinned layers)``.

    ``floor_scores[n]``: the score at which a layer keeps its ``lows[n]`` largest weights (its own threshold when
    it prunes ``sizes[n] - lows[n]``); ``select(free, k)``: the one threshold that prunes ``k`` weights over the
    layers ``free``. Under a threshold ``t`` a layer keeps fewer than its floor exactly when
    ``floor_scores[n] < t``; such a layer is *pinned* (its threshold becomes ``floor_scores[n]``: it keeps its
    floor) and the threshold is chosen again over the other layers for the rest of ``k_total``, until no free
    layer falls below its floor. Pinning only raises the others' threshold, so the pinned set only grows: at most
    one round per layer. Without a layer under its floor this is the plain global selection.

    ``reduce_sum`` sums a list of ints over processes when the layers are split across ranks (``k_total`` is then
    the count over all ranks, and every rank runs the same rounds).

    >>> scores = {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8]}
    >>> def select(free, k):  # brute force: the k-th smallest score over the free layers
    ...     return sorted(v for n in free for v in scores[n])[k]
    >>> protect_global({"a": 4, "b": 4}, {"a": 1, "b": 1}, {"a": 4, "b": 8}, 5, select)  # 'a' would keep none
    (7, ['a'])
    """
    reduce = reduce_sum or (lambda v: v)
    pinned: List[str] = []
    while True:
        free = [n for n in sizes if n not in pinned]
        k_free = k_total - reduce([sum(sizes[n] - lows[n] for n in pinned)])[0]
        t = select(free, k_free)
        low = [n for n in free if floor_scores[n] < t]
        if reduce([len(low)])[0] == 0:
            return t, pinned
        pinned += low
