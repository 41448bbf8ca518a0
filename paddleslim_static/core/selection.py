"""Exact k-th smallest score by selection, without sorting all scores.

Scores are non-negative float32, so their IEEE-754 bit patterns, read as uint32, sort like the values.
Magnitudes are read straight from the weights (sign bit cleared), so no ``|w|`` copy is made.

Algorithm (one streaming pass in cache-sized chunks, plus a rare fallback pass):

1. Sample ~2**16 scores with a fixed-seed RNG and take a narrow key bracket [lo, hi] that contains
   the k-th score with overwhelming probability.
2. Stream all scores once: count (or weigh) the keys below ``lo`` and gather the keys inside the bracket.
3. If the k-th lies inside the bracket, select it there (``np.partition`` on ~1-2% of the data).
   Otherwise widen the bracket to the side that holds it and stream again. The result is always exact;
   the sample only decides how fast it is.

A *source* is a float array of scores (weights, whose sign is ignored, or precomputed non-negative block
scores) and optionally an int array of the same size giving how many elements each score stands for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ScoreSource", "kth_smallest", "prune_count", "ratio_threshold", "NonFiniteScoreError"]

_ABS = np.uint32(0x7FFFFFFF)
_INF_KEY = np.uint32(0x7F800000)
CHUNK = 1 << 18
DIRECT_MAX = 1 << 16
SAMPLE = 1 << 16


class NonFiniteScoreError(ValueError):
    """A weight or score is NaN or infinite, so no meaningful ratio threshold exists."""


@dataclass(frozen=True)
class ScoreSource:
    """Scores of one tensor: ``values`` (any float dtype; sign ignored) and optional ``counts``."""

    values: np.ndarray
    counts: Optional[np.ndarray] = None
    name: str = ""

    def keys_array(self) -> np.ndarray:
        """The uint32 view (no copy for contiguous float32) the chunks are cut from."""
        v = self.values
        if v.dtype != np.float32:
            v = np.abs(v).astype(np.float32)  # scores are compared in float32 in every mode
        return np.ascontiguousarray(v).reshape(-1).view(np.uint32)

    @property
    def total(self) -> int:
        return int(self.values.size if self.counts is None else self.counts.sum())


def prune_count(n: int, ratio: float) -> int:
    """k = round(ratio * n) (Python's round: halves go to the even integer)."""
    return int(round(ratio * n))


def _chunks(keys: np.ndarray, chunk: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, keys.size, chunk):
        yield start, min(start + chunk, keys.size)


def _check_finite(max_key: int, name: str) -> None:
    if max_key >= int(_INF_KEY):
        what = "NaN" if max_key > int(_INF_KEY) else "Inf"
        where = f" in {name!r}" if name else ""
        raise NonFiniteScoreError(
            f"weights{where} contain {what}; ratio mode cannot place a threshold among non-finite values"
        )


def _select_in(keys: np.ndarray, counts: Optional[np.ndarray], r: int) -> int:
    """r-th (0-based) smallest key of a small array, each key repeated counts[i] times."""
    if counts is None:
        return int(np.partition(keys, r)[r])
    order = np.argsort(keys, kind="stable")
    cum = np.cumsum(counts[order])
    return int(keys[order[int(np.searchsorted(cum, r, side="right"))]])


def _direct(sources: Sequence[ScoreSource], k: int) -> int:
    keys = np.concatenate([s.keys_array() & _ABS for s in sources])
    if keys.size:
        _check_finite(int(keys.max()), "")
    if all(s.counts is None for s in sources):
        return _select_in(keys, None, k)
    counts = np.concatenate(
        [np.ones(s.values.size, np.int64) if s.counts is None else s.counts.reshape(-1).astype(np.int64)
         for s in sources]
    )
    return _select_in(keys, counts, k)


def _bracket(key_arrays: List[np.ndarray], q: float, rng: np.random.Generator) -> Tuple[int, int]:
    sizes = np.array([a.size for a in key_arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.sort(rng.integers(0, offsets[-1], SAMPLE))
    which = np.searchsorted(offsets, idx, side="right") - 1
    sample = np.empty(SAMPLE, np.uint32)
    for j, a in enumerate(key_arrays):
        sel = which == j
        if sel.any():
            sample[sel] = a[idx[sel] - offsets[j]]
    sample &= _ABS
    sample.sort()
    margin = 8.0 * math.sqrt(SAMPLE * max(q * (1.0 - q), 1.0 / SAMPLE)) + 2
    pos = q * (SAMPLE - 1)
    lo = int(sample[max(0, int(pos - margin))])
    hi = int(sample[min(SAMPLE - 1, int(math.ceil(pos + margin)))])
    return lo, hi


def _stream(sources: Sequence[ScoreSource], key_arrays: List[np.ndarray], lo: int, hi: int, chunk: int):
    """One pass: weight below ``lo`` and the keys (with counts) in ``[lo, hi]``."""
    buf = np.empty(chunk, np.uint32)
    shifted = np.empty(chunk, np.uint32)
    below_m = np.empty(chunk, bool)
    band_m = np.empty(chunk, bool)
    lo_k, width = np.uint32(lo), np.uint32(hi - lo)
    below = 0
    band_keys: List[np.ndarray] = []
    band_counts: List[np.ndarray] = []
    weighted = any(s.counts is not None for s in sources)
    for src, keys in zip(sources, key_arrays):
        counts = None if src.counts is None else src.counts.reshape(-1)
        for a, b in _chunks(keys, chunk):
            n = b - a
            key = np.bitwise_and(keys[a:b], _ABS, out=buf[:n])
            _check_finite(int(key.max()), src.name)
            bm = np.less(key, lo_k, out=below_m[:n])
            # (key - lo) wraps around for key < lo, so one unsigned compare finds lo <= key <= hi
            dm = np.less_equal(np.subtract(key, lo_k, out=shifted[:n]), width, out=band_m[:n])
            if counts is None:
                below += int(np.count_nonzero(bm))
                band_keys.append(key[dm])
                if weighted:
                    band_counts.append(np.ones(band_keys[-1].size, np.int64))
            else:
                c = counts[a:b]
                below += int(c[bm].sum())
                band_keys.append(key[dm])
                band_counts.append(c[dm].astype(np.int64))
    keys_out = np.concatenate(band_keys) if band_keys else np.empty(0, np.uint32)
    counts_out = np.concatenate(band_counts) if weighted and band_counts else None
    return below, keys_out, counts_out


def kth_smallest(
    sources: Sequence[ScoreSource],
    k: int,
    *,
    chunk: int = CHUNK,
    direct_max: int = DIRECT_MAX,
    seed: int = 0,
) -> np.float32:
    """The k-th (0-based) smallest score over all sources, exactly.

    >>> import numpy as np
    >>> w = np.array([0.5, -0.1, 0.3, -0.9], np.float32)
    >>> float(kth_smallest([ScoreSource(w)], 1))
    0.30000001192092896

    Raises NonFiniteScoreError when a score is NaN or Inf.
    """
    sources = [s for s in sources if s.values.size]
    total = sum(s.total for s in sources)
    if not 0 <= k < total:
        raise ValueError(f"k must be in [0, {total}); got {k}")
    if total <= direct_max:
        return np.uint32(_direct(sources, k)).view(np.float32)
    key_arrays = [s.keys_array() for s in sources]
    lo, hi = _bracket(key_arrays, k / total, np.random.default_rng(seed))
    while True:
        below, band, band_counts = _stream(sources, key_arrays, lo, hi, chunk)
        r = k - below
        band_total = band.size if band_counts is None else int(band_counts.sum())
        if 0 <= r < band_total:
            return np.uint32(_select_in(band, band_counts, r)).view(np.float32)
        if r < 0:  # the k-th is below the bracket
            lo, hi = 0, lo - 1
        else:
            lo, hi = hi + 1, int(_INF_KEY)


def ratio_threshold(sources: Sequence[ScoreSource], ratio: float, **kw) -> np.float32:
    """Smallest kept score when the round(ratio*n) lowest-scored elements are pruned.

    Returns +inf when every element is pruned (possible only for tiny n).

    >>> import numpy as np
    >>> float(ratio_threshold([ScoreSource(np.arange(10, dtype=np.float32))], 0.3))
    3.0
    """
    total = sum(s.total for s in sources)
    k = prune_count(total, ratio)
    if k >= total:
        return np.float32(np.inf)
    return kth_smallest(sources, k, **kw)
