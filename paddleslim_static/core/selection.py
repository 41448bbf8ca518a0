"""Exact k-th smallest score by selection, without sorting all scores.

Scores are non-negative float32, so their IEEE-754 bit patterns, read as uint32, sort like the values.
Magnitudes are read straight from the weights (sign bit cleared), so no ``|w|`` copy is made.

Algorithm (one streaming pass in cache-sized chunks, plus a rare fallback pass):

1. Sample 2**14..2**18 scores (about n/256) with a fixed-seed RNG and take a narrow key bracket (lo, hi] that contains
   the k-th score with overwhelming probability.
2. Stream all scores once: count (or weigh) the keys <= ``lo`` and gather the keys in (lo, hi].
3. If the k-th lies inside the bracket, select it there (``np.partition`` on ~1-2% of the data).
   If it lies at or below ``lo``, one counting pass tells whether it *is* ``lo`` (the common case for a
   heavily tied value such as the zeros of a sparse model, which are counted, never gathered);
   otherwise the bracket moves to the side that holds it and the stream runs again. The result is
   always exact; the sample only decides how fast it is.

A *source* is a float array of scores (weights, whose sign is ignored, or precomputed non-negative block
scores) and optionally an int array of the same size giving how many elements each score stands for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import kernels

__all__ = ["ScoreSource", "kth_smallest", "prune_count", "ratio_threshold", "NonFiniteScoreError"]

_ABS = np.uint32(0x7FFFFFFF)
_INF_KEY = np.uint32(0x7F800000)
CHUNK = 1 << 18
DIRECT_MAX = 1 << 16
SAMPLE_MIN, SAMPLE_MAX = 1 << 14, 1 << 18


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
    """r-th (0-based) smallest key of a small array (the band, or a tiny model), each key repeated counts[i] times.

    The repeated array has as many items as the elements the keys stand for, which is small here."""
    if counts is not None:
        keys = np.repeat(keys, counts)
    return int(np.partition(keys, r)[r])


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


def sample_size(total: int) -> int:
    """About total/256, a power of two in [2**14, 2**18]: a bigger sample narrows the band the stream gathers,
    which pays on big models; on small ones drawing it would cost more than it saves."""
    return int(min(SAMPLE_MAX, max(SAMPLE_MIN, 1 << max(0, (total // 256).bit_length()))))


def _sample(key_arrays: List[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """sample_size(total) keys drawn uniformly (fixed seed) from all arrays, in no particular order."""
    sizes = np.array([a.size for a in key_arrays], dtype=np.int64)
    per_array = rng.multinomial(sample_size(int(sizes.sum())), sizes / sizes.sum())
    sample = np.concatenate([a[rng.integers(0, a.size, m)] for a, m in zip(key_arrays, per_array) if m])
    sample &= _ABS
    return sample


def _margin(q: float, n: int) -> float:
    """6 standard deviations of the position of the q-quantile in a sample of n, in sample elements (a miss
    costs one more pass, never a wrong answer)."""
    return 6.0 * math.sqrt(n * max(q * (1.0 - q), 1.0 / n)) + 2


def _order_stat(sample: np.ndarray, j: int) -> int:
    """The j-th smallest sample key (selection, not a sort)."""
    return int(np.partition(sample, j)[j])


def _bracket(sample: np.ndarray, q: float) -> Tuple[int, int]:
    """Keys (lo, hi) such that lo < k-th <= hi with overwhelming probability.

    When the sample shows the k-th value heavily tied (a run of equal keys wider than the margin, e.g.
    the zeros of an already-sparse model), lo is that value: the run is then counted, never gathered.
    """
    n = sample.size
    pos, margin = q * (n - 1), _margin(q, n)
    i_lo, i_at = max(0, int(pos - margin)), min(n - 1, int(round(pos)))
    i_hi = min(n - 1, int(math.ceil(pos + margin)))
    part = np.partition(sample, sorted({i_lo, i_at, i_hi}))
    lo, at, hi = int(part[i_lo]), int(part[i_at]), int(part[i_hi])
    if lo == at:  # a tied run reaches down past the margin (e.g. zeros): count it, gather only above it
        return at, hi
    if hi == at:  # a tied run reaches up past the margin: count it; an answer below it costs one more pass
        return at, at
    return max(lo - 1, 0), hi  # lo - 1: a k-th equal to the sampled lo still falls inside (lo, hi]


def _below(sample: np.ndarray, key: int, q: float) -> int:
    """A lower bound ~2 margins under ``key`` for the next bracket (the k-th turned out to be < key)."""
    j = int(np.count_nonzero(sample < key)) - int(2 * _margin(q, sample.size))
    return 0 if j <= 0 else max(_order_stat(sample, j) - 1, 0)


def _above(sample: np.ndarray, key: int, q: float) -> int:
    """An upper bound ~2 margins over ``key`` for the next bracket (the k-th turned out to be > key)."""
    j = int(np.count_nonzero(sample <= key)) + int(2 * _margin(q, sample.size))
    if j >= sample.size:
        return int(_INF_KEY)
    v = _order_stat(sample, j)
    return int(_INF_KEY) if v <= key else v


def _stream(sources: Sequence[ScoreSource], key_arrays: List[np.ndarray], lo: int, hi: int, chunk: int):
    """One pass: how many elements have key <= lo, and the keys (with counts) in (lo, hi]."""
    buf = np.empty(chunk, np.uint32)
    shifted = np.empty(chunk, np.uint32)
    le_m = np.empty(chunk, bool)
    band_m = np.empty(chunk, bool)
    lo_k = np.uint32(lo)
    start, width = np.uint32(lo + 1), np.uint32(hi - lo - 1) if hi > lo else None
    n_le = 0
    band_keys: List[np.ndarray] = []
    band_counts: List[np.ndarray] = []
    weighted = any(s.counts is not None for s in sources)
    fast = kernels.enabled()
    for src, keys in zip(sources, key_arrays):
        counts = None if src.counts is None else src.counts.reshape(-1)
        for a, b in _chunks(keys, chunk):
            n = b - a
            if fast and counts is None:  # the same loop in one C pass
                c_le, nb, max_key = kernels.stream(keys[a:b], lo, hi, buf)
                _check_finite(max_key, src.name)
                n_le += c_le
                if nb:
                    band_keys.append(buf[:nb].copy())
                    if weighted:
                        band_counts.append(np.ones(nb, np.int64))
                continue
            key = np.bitwise_and(keys[a:b], _ABS, out=buf[:n])
            _check_finite(int(key.max()), src.name)
            le = np.less_equal(key, lo_k, out=le_m[:n])
            c = None if counts is None else counts[a:b]
            n_le += int(np.count_nonzero(le)) if c is None else int(c[le].sum())
            if width is None:
                continue
            # key - (lo + 1) wraps around for key <= lo, so one unsigned compare finds lo < key <= hi
            dm = np.less_equal(np.subtract(key, start, out=shifted[:n]), width, out=band_m[:n])
            band_keys.append(key[dm])
            if c is not None:
                band_counts.append(c[dm].astype(np.int64))
            elif weighted:
                band_counts.append(np.ones(band_keys[-1].size, np.int64))
    keys_out = np.concatenate(band_keys) if band_keys else np.empty(0, np.uint32)
    counts_out = np.concatenate(band_counts) if weighted and band_counts else None
    return n_le, keys_out, counts_out


def _count_below(sources: Sequence[ScoreSource], key_arrays: List[np.ndarray], key: int, chunk: int) -> int:
    """How many elements have a key < ``key``."""
    buf = np.empty(chunk, np.uint32)
    m = np.empty(chunk, bool)
    total = 0
    for src, keys in zip(sources, key_arrays):
        counts = None if src.counts is None else src.counts.reshape(-1)
        for a, b in _chunks(keys, chunk):
            lt = np.less(np.bitwise_and(keys[a:b], _ABS, out=buf[: b - a]), np.uint32(key), out=m[: b - a])
            total += int(np.count_nonzero(lt)) if counts is None else int(counts[a:b][lt].sum())
    return total


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
    q = k / total
    sample = _sample(key_arrays, np.random.default_rng(seed))
    lo, hi = _bracket(sample, q)
    while True:
        n_le, band, band_counts = _stream(sources, key_arrays, lo, hi, chunk)
        r = k - n_le
        band_total = band.size if band_counts is None else int(band_counts.sum())
        if 0 <= r < band_total:
            return np.uint32(_select_in(band, band_counts, r)).view(np.float32)
        if r >= band_total:  # the k-th is above hi: everything <= hi is counted next time
            lo, hi = hi, _above(sample, hi, q)
        elif lo == 0 or k >= _count_below(sources, key_arrays, lo, chunk):
            return np.uint32(lo).view(np.float32)  # #(< lo) <= k < #(<= lo): the k-th equals lo
        else:  # the k-th is below lo
            lo, hi = _below(sample, lo, q), lo - 1


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
