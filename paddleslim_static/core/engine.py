"""Thresholds and masks for a set of named weight arrays: the computation both modes run.

Every function takes host numpy arrays (zero-copy views of the Paddle tensors on CPU) and is pure
apart from writing into the ``masks`` / ``weights`` arrays it is handed.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from . import kernels, threads
from .distributed import Collectives, Group
from .nm import fill_nm_mask
from .scores import mask_from_threshold, score_source
from .selection import (
    HINT_WIDTH, SOLO, ScoreSource, SelectionStats, count_threshold, kth_smallest, ratio_threshold,
)

__all__ = ["score_sources", "ratio_thresholds", "fill_masks", "apply_masks", "masks_from_nonzero", "summarize",
           "Engine", "HostEngine", "HOST"]

Block = Tuple[int, int]
Sources = Mapping[str, ScoreSource]


def score_sources(weights: Mapping[str, np.ndarray], block: Block) -> Dict[str, ScoreSource]:
    """The selection source of every weight: the weight itself, or its block scores (computed once per step and
    handed to both :func:`ratio_thresholds` and :func:`fill_masks`)."""
    out: Dict[str, ScoreSource] = {}

    def one(name: str) -> None:
        out[name] = score_source(weights[name], block, name)
    _over_arrays(one, weights)
    return {n: out[n] for n in weights}


Hint = Union[None, float, Mapping[str, float]]
_WIDTH_MIN, _WIDTH_MAX = 2.0 ** -11, 2.0 ** -6


def _next_width(previous: Optional[float], new: Optional[np.float32]) -> float:
    """The warm bracket's half-width for the next call: 4x the relative drift just seen, in [2^-11, 2^-6]
    (a narrow bracket gathers fewer keys; a miss costs one more pass)."""
    if previous is None or new is None or not previous > 0 or not math.isfinite(float(new)):
        return HINT_WIDTH
    return min(_WIDTH_MAX, max(_WIDTH_MIN, 4.0 * abs(float(new) / previous - 1.0)))


def ratio_thresholds(
    weights: Mapping[str, np.ndarray], ratio: float, local: bool, block: Block, sources: Optional[Sources] = None,
    *, hint: Hint = None, hint_width: Optional[float] = None, collectives: Optional["Collectives"] = None,
    prune_counts: Optional[Mapping[str, int]] = None, max_scores: Optional[Dict[str, float]] = None,
    stats: Optional[SelectionStats] = None,
) -> Tuple[Optional[np.float32], Dict[str, np.float32]]:
    """(global threshold, per-parameter thresholds) for ratio mode; exactly one of them is filled. A pure function
    of its arguments: no state survives the call.

    ``hint``: the caller's previous threshold (a float; local mode: {name: float}) to warm-start the selection
    from, with ``hint_width`` (the half-width of the warm bracket, relative; ``stats.next_width`` suggests the next
    one). Hints change only the speed, never the result. ``stats``: a :class:`.selection.SelectionStats` the
    passes, samples and band sizes are added to.

    ``collectives``: when the model's parameters are split across processes, an object with
    ``allreduce_sum`` and ``allgather`` (see :mod:`.distributed`); each rank passes its own weights and every
    rank gets the global threshold one process would pick over all of them, bit for bit (local mode needs no
    communication: each parameter's threshold is its own).

    ``prune_counts`` (local mode): how many elements of each parameter to prune instead of ``round(ratio * n)``
    (a sparsity allocation, :mod:`.allocation`); a count >= the parameter's size gives +inf (all pruned).
    ``max_scores`` (global mode): a dict that receives each parameter's largest score (this rank's), read in the
    selection's own pass at no extra cost; left empty when no pass ran (everything pruned).

    >>> import numpy as np
    >>> w = {'a': np.array([[1., -2.], [3., 0.]], np.float32), 'b': np.array([[0.5, 4.]], np.float32)}
    >>> g, per = ratio_thresholds(w, 0.5, local=False, block=(1, 1))
    >>> float(g), per
    (2.0, {})
    """
    sources = score_sources(weights, block) if sources is None else sources
    width = HINT_WIDTH if hint_width is None else float(hint_width)
    if local:
        hints = hint if isinstance(hint, Mapping) else {}
        if prune_counts is None:
            per = {n: ratio_threshold([sources[n]], ratio, hint=hints.get(n), stats=stats) for n in weights}
        else:
            per = {n: count_threshold([sources[n]], int(prune_counts[n]), hint=hints.get(n), stats=stats)
                   for n in weights}
        return None, per
    g_hint = None if hint is None or isinstance(hint, Mapping) else float(hint)
    comm = SOLO if collectives is None else Group(collectives)
    keys: Optional[Dict[str, int]] = None if max_scores is None else {}
    g = ratio_threshold([sources[n] for n in weights], ratio, hint=g_hint, hint_width=width, comm=comm,
                        max_keys=keys, stats=stats)
    if keys:
        max_scores.update({n: float(np.uint32(keys[n]).view(np.float32)) for n in weights if n in keys})
    if stats is not None:
        stats.next_width = _next_width(g_hint, g)
    return g, {}


def fill_masks(
    weights: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    threshold: Optional[float],
    thresholds: Mapping[str, float],
    block: Block,
    apply: bool = False,
    sources: Optional[Sources] = None,
) -> None:
    """masks[n] = score(weights[n]) >= threshold (per-parameter ``thresholds`` win when present).

    ``apply=True`` also zeroes the pruned weights, in the same pass. ``sources`` (from :func:`score_sources`)
    saves recomputing block scores.
    """
    def one(name: str) -> None:
        w = weights[name]
        t = thresholds.get(name, threshold)
        src = None if sources is None else sources.get(name)
        scores = src.values if src is not None and src.weighted else None
        mask_from_threshold(w, np.float32(t), block, masks[name], apply=apply, scores=scores)
    _over_arrays(one, weights)


def _over_arrays(fn, weights: Mapping[str, np.ndarray]) -> None:
    """fn(name) for every array: on the C path with several threads, arrays go to the pool (each array is one
    task, big ones are split further inside the kernels); disjoint arrays, so the bits do not change."""
    names = list(weights)
    sizes = [int(weights[n].size) for n in names]
    # one dominant array: leave it to the kernels, which split it across the threads themselves
    if kernels.enabled() and threads.num_threads() > 1 and len(names) > 1 and 2 * max(sizes) <= sum(sizes):
        threads.run_parts(fn, names)
    else:
        for name in names:
            fn(name)


def apply_masks(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
    """weights[n] *= masks[n], in place."""
    def one(name: str) -> None:
        w = weights[name]
        if kernels.eligible(w, masks[name]):
            kernels.apply(w, masks[name])
        else:
            np.multiply(w, masks[name], out=w)
    _over_arrays(one, weights)


def masks_from_nonzero(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
    """masks[n] = weights[n] != 0: keep an existing sparsity pattern."""
    for name, w in weights.items():
        np.not_equal(w, 0, out=masks[name])


def summarize(weights: Mapping[str, np.ndarray], ratio: float) -> float:
    """|w| at sorted position max(0, ceil(ratio * N) - 1) over all given weights.

    >>> import numpy as np
    >>> summarize({'w': np.array([-4., 1., 3., -2.], np.float32)}, 0.5)
    2.0
    """
    n = sum(int(w.size) for w in weights.values())
    if n == 0:
        raise ValueError("summarize_weights: the model has no prunable weights")
    k = max(0, math.ceil(ratio * n) - 1)
    return float(kth_smallest([ScoreSource(w, None, name) for name, w in weights.items()], k))


try:  # Python 3.8+: typing.Protocol
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]


class Engine(Protocol):
    """What the core pruner runs on a backend's arrays. :data:`HOST` (numpy/C over host arrays) and
    ``paddleslim_static.device_engine.PaddleEngine`` (Paddle operations on the tensors' device) compute the same
    bits; a backend hands out its arrays together with the engine that works on them."""

    name: str

    def score_sources(self, weights: Mapping[str, Any], block: Block) -> Mapping[str, Any]: ...

    def ratio_thresholds(self, weights: Mapping[str, Any], ratio: float, local: bool, block: Block,
                         sources: Optional[Mapping[str, Any]] = None, **kw: Any
                         ) -> Tuple[Optional[np.float32], Dict[str, np.float32]]: ...

    def fill_masks(self, weights: Mapping[str, Any], masks: Mapping[str, Any], threshold: Optional[float],
                   thresholds: Mapping[str, float], block: Block, apply: bool = False,
                   sources: Optional[Mapping[str, Any]] = None) -> None: ...

    def fill_nm(self, weights: Mapping[str, Any], masks: Mapping[str, Any], n: int, m: int,
                layouts: Mapping[str, Any]) -> None: ...

    def apply_masks(self, weights: Mapping[str, Any], masks: Mapping[str, Any]) -> None: ...

    def masks_from_nonzero(self, weights: Mapping[str, Any], masks: Mapping[str, Any]) -> None: ...

    def masks_match_nonzero(self, weights: Mapping[str, Any], masks: Mapping[str, Any]) -> Dict[str, bool]: ...

    def summarize(self, weights: Mapping[str, Any], ratio: float) -> float: ...

    def max_abs_over_f32(self, weights: Mapping[str, Any], limit: float) -> Optional[Tuple[str, float]]: ...

    def first_nonfinite(self, weights: Mapping[str, Any]) -> Optional[str]: ...

    def to_host(self, x: Any) -> np.ndarray: ...


class HostEngine:
    """The numpy/C engine: the functions of this module over host numpy arrays (the fastest on CPU).

    >>> import numpy as np
    >>> w, m = {'w': np.array([3., 1., -2.], np.float32)}, {'w': np.ones(3, bool)}
    >>> HOST.fill_masks(w, m, 2.0, {}, (1, 1), apply=True); w['w'].tolist(), m['w'].tolist()
    ([3.0, 0.0, -2.0], [True, False, True])
    """

    name = "numpy"

    def score_sources(self, weights: Mapping[str, np.ndarray], block: Block) -> Dict[str, ScoreSource]:
        return score_sources(weights, block)

    def ratio_thresholds(self, weights: Mapping[str, np.ndarray], ratio: float, local: bool, block: Block,
                         sources: Optional[Sources] = None, **kw: Any
                         ) -> Tuple[Optional[np.float32], Dict[str, np.float32]]:
        return ratio_thresholds(weights, ratio, local, block, sources, **kw)

    def fill_masks(self, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                   threshold: Optional[float], thresholds: Mapping[str, float], block: Block, apply: bool = False,
                   sources: Optional[Sources] = None) -> None:
        fill_masks(weights, masks, threshold, thresholds, block, apply=apply, sources=sources)

    def fill_nm(self, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], n: int, m: int,
                layouts: Mapping[str, Any]) -> None:
        """masks[name] &= the N:M mask of weights[name] along ``layouts[name]``'s axis."""
        for name, w in weights.items():
            fill_nm_mask(w, n, m, layouts[name], out=masks[name], intersect=True)

    def apply_masks(self, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
        apply_masks(weights, masks)

    def masks_from_nonzero(self, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
        masks_from_nonzero(weights, masks)

    def masks_match_nonzero(self, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]
                            ) -> Dict[str, bool]:
        """Whether each mask equals ``weight != 0``."""
        return {n: bool(np.array_equal(masks[n], w != 0)) for n, w in weights.items()}

    def summarize(self, weights: Mapping[str, np.ndarray], ratio: float) -> float:
        return summarize(weights, ratio)

    def max_abs_over_f32(self, weights: Mapping[str, np.ndarray], limit: float) -> Optional[Tuple[str, float]]:
        """The first non-float32 weight whose max |w| exceeds ``limit`` and that max, or None."""
        for n, w in weights.items():
            if w.dtype != np.float32 and w.size and float(np.max(np.abs(w))) > limit:
                return n, float(np.max(np.abs(w)))
        return None

    def first_nonfinite(self, weights: Mapping[str, np.ndarray]) -> Optional[str]:
        return next((n for n, w in weights.items() if not np.isfinite(w).all()), None)

    def to_host(self, x: np.ndarray) -> np.ndarray:
        return x


HOST = HostEngine()
