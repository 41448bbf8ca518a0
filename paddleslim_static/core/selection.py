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

from . import kernels, threads

__all__ = ["ScoreSource", "kth_smallest", "prune_count", "ratio_threshold", "NonFiniteScoreError"]

_ABS = np.uint32(0x7FFFFFFF)
_INF_KEY = np.uint32(0x7F800000)
CHUNK = 1 << 18
C_CHUNK = 1 << 20  # keys per C call: fewer Python round trips; the band buffer is touched only where written
DIRECT_MAX = 1 << 16
SAMPLE_MIN, SAMPLE_MAX = 1 << 14, 1 << 18


class NonFiniteScoreError(ValueError):
    """A weight or score is NaN or infinite, so no meaningful ratio threshold exists."""


@dataclass(frozen=True)
class ScoreSource:
    """Scores of one tensor: ``values`` (any float dtype; sign ignored) and what each score stands for.

    ``counts``: an int array shaped like ``values`` (score i stands for counts[i] elements), or ``grid``:
    (row_counts, col_counts) with score (i, j) of a 2-D ``values`` standing for row_counts[i] * col_counts[j]
    elements (block scores: every block but the last row / column has the same size, so nothing of the
    values' size is stored). Neither: each score is one element.
    """

    values: np.ndarray
    counts: Optional[np.ndarray] = None
    name: str = ""
    grid: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def keys_array(self) -> np.ndarray:
        """The uint32 view (no copy for contiguous float32) the chunks are cut from."""
        v = self.values
        if v.dtype != np.float32:
            v = np.abs(v).astype(np.float32)  # scores are compared in float32 in every mode
        return np.ascontiguousarray(v).reshape(-1).view(np.uint32)

    @property
    def weighted(self) -> bool:
        return self.counts is not None or self.grid is not None

    @property
    def total(self) -> int:
        if self.grid is not None:
            return int(self.grid[0].sum()) * int(self.grid[1].sum())
        return int(self.values.size if self.counts is None else self.counts.sum())

    def counts_range(self, a: int, b: int) -> Optional[np.ndarray]:
        """int64 counts of the flat scores [a, b) (None when unweighted)."""
        if self.counts is not None:
            return self.counts.reshape(-1)[a:b].astype(np.int64, copy=False)
        if self.grid is None:
            return None
        rows, cols = self.grid
        idx = np.arange(a, b, dtype=np.int64)
        return rows[idx // cols.size].astype(np.int64) * cols[idx % cols.size].astype(np.int64)


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

    Weighted: the small band is ordered and its counts accumulated (nothing the size of the elements is built)."""
    if counts is None:
        return int(np.partition(keys, r)[r])
    if counts.size and counts.min() == counts.max():  # all blocks the same size: the (r // c)-th key
        return int(np.partition(keys, r // int(counts[0]))[r // int(counts[0])])
    if counts.size and counts.max() < (1 << 32):  # one sort of (key, count) packed in 64 bits
        packed = np.sort((keys.astype(np.uint64) << np.uint64(32)) | counts.astype(np.uint64))
        cum = np.cumsum(packed & np.uint64(0xFFFFFFFF))
        return int(packed[int(np.searchsorted(cum, r, side="right"))] >> np.uint64(32))
    order = np.argsort(keys)
    cum = np.cumsum(counts[order])
    return int(keys[order[int(np.searchsorted(cum, r, side="right"))]])


def _direct(sources: Sequence[ScoreSource], k: int) -> int:
    keys = np.concatenate([s.keys_array() & _ABS for s in sources])
    if keys.size:
        _check_finite(int(keys.max()), "")
    if not any(s.weighted for s in sources):
        return _select_in(keys, None, k)
    counts = np.concatenate([
        np.ones(s.values.size, np.int64) if not s.weighted else s.counts_range(0, s.values.size) for s in sources
    ])
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


def _tasks(sources: Sequence[ScoreSource], key_arrays: List[np.ndarray], chunk: int, use_c: bool):
    """Flat ranges (source index, start, end) covering every score once, in order. Block sources on the C
    path are cut at block-row boundaries, the last (smaller) block row on its own."""
    out = []
    for i, (src, keys) in enumerate(zip(sources, key_arrays)):
        if use_c and src.grid is not None:
            nbj = src.grid[1].size
            n_full = keys.size - nbj  # all block rows but the last have the same row count
            step = max(1, chunk // nbj) * nbj
            out += [(i, a, min(a + step, n_full)) for a in range(0, n_full, step)] + [(i, n_full, keys.size)]
        else:
            out += [(i, a, b) for a, b in _chunks(keys, chunk)]
    return out


class _Pass:
    """One streaming pass over a list of tasks with its own buffers: (n_le, band keys, band counts, max keys)."""

    def __init__(self, sources, key_arrays, lo: int, hi: int, weighted: bool, use_c: bool, size: int):
        self.sources, self.key_arrays, self.lo, self.hi = sources, key_arrays, lo, hi
        self.weighted, self.use_c = weighted, use_c
        self.buf = np.empty(size, np.uint32)
        self.wbuf = np.empty(size, np.int64) if use_c and weighted else None
        self.tmp = None if use_c else (np.empty(size, np.uint32), np.empty(size, bool), np.empty(size, bool))

    def run(self, tasks) -> Tuple[int, List[np.ndarray], List[np.ndarray], List[int]]:
        n_le, keys_out, counts_out, maxes = 0, [], [], []
        for i, a, b in tasks:
            c_le, band, counts, mx = self._one(self.sources[i], self.key_arrays[i][a:b], a, b)
            n_le += c_le
            maxes.append(mx)
            if band.size:
                keys_out.append(band)
                if self.weighted:
                    counts_out.append(counts if counts is not None else np.ones(band.size, np.int64))
        return n_le, keys_out, counts_out, maxes

    def _one(self, src: ScoreSource, keys: np.ndarray, a: int, b: int):
        lo, hi, n = self.lo, self.hi, b - a
        if self.use_c and src.counts is None:
            if src.grid is None:
                c_le, nb, mx = kernels.stream(keys, lo, hi, self.buf)
                return c_le, self.buf[:nb].copy(), None, mx
            rows, cols = src.grid
            rw = int(rows[a // cols.size])
            c_le, nb, mx = kernels.stream_w(keys, cols.size, rw * int(cols[0]), rw * int(cols[-1]), lo, hi,
                                            self.buf, self.wbuf)
            return c_le, self.buf[:nb].copy(), self.wbuf[:nb].copy(), mx
        buf, le_m, band_m = self.tmp if self.tmp is not None else (
            np.empty(n, np.uint32), np.empty(n, bool), np.empty(n, bool))
        key = np.bitwise_and(keys, _ABS, out=buf[:n])
        mx = int(key.max()) if n else 0
        le = np.less_equal(key, np.uint32(lo), out=le_m[:n])
        c = src.counts_range(a, b)
        c_le = int(np.count_nonzero(le)) if c is None else int(c[le].sum())
        if hi <= lo:
            return c_le, key[:0], None, mx
        # key - (lo + 1) wraps around for key <= lo, so one unsigned compare finds lo < key <= hi
        shifted = np.subtract(key, np.uint32(lo + 1))
        dm = np.less_equal(shifted, np.uint32(hi - lo - 1), out=band_m[:n])
        return c_le, key[dm], None if c is None else c[dm], mx


def _stream(sources: Sequence[ScoreSource], key_arrays: List[np.ndarray], lo: int, hi: int,
            chunk: Optional[int] = None):
    """One pass: how many elements have key <= lo, and the keys (with counts) in (lo, hi].

    On the C path the tasks are split into contiguous groups, one per thread; results are combined in task
    order, so the band and the count do not depend on the thread count."""
    use_c = kernels.enabled() and all(
        kernels.keys_eligible(k) and (s.counts is None) for s, k in zip(sources, key_arrays))
    weighted = any(s.weighted for s in sources)
    if chunk is None:  # block scores: smaller pieces keep the scratch (12 bytes per key of a piece) small
        chunk = CHUNK // 4 if weighted else (C_CHUNK if use_c else CHUNK)
    tasks = _tasks(sources, key_arrays, chunk, use_c)
    size = max([b - a for _, a, b in tasks] + [1])
    groups = [tasks]
    if use_c and threads.num_threads() > 1 and len(tasks) > 1:
        bounds = threads.split(len(tasks), min(threads.num_threads(), len(tasks)))
        groups = [tasks[bounds[j]:bounds[j + 1]] for j in range(len(bounds) - 1) if bounds[j + 1] > bounds[j]]
    results = threads.run_parts(
        lambda g: _Pass(sources, key_arrays, lo, hi, weighted, use_c, size).run(g), groups)
    n_le, band_keys, band_counts = 0, [], []
    maxes: List[int] = []
    for c_le, ks, cs, mx in results:
        n_le += c_le
        band_keys += ks
        band_counts += cs
        maxes += mx
    for (i, _, _), mx in zip(tasks, maxes):
        _check_finite(mx, sources[i].name)
    keys_out = np.concatenate(band_keys) if band_keys else np.empty(0, np.uint32)
    counts_out = (np.concatenate(band_counts) if band_counts else np.empty(0, np.int64)) if weighted else None
    return n_le, keys_out, counts_out


def _count_below(sources: Sequence[ScoreSource], key_arrays: List[np.ndarray], key: int,
                 chunk: Optional[int] = None) -> int:
    """How many elements have a key < ``key``."""
    return 0 if key <= 0 else _stream(sources, key_arrays, key - 1, key - 1, chunk)[0]


HINT_WIDTH = 2.0 ** -8  # a hint's bracket: keys within +-0.4% (relative) of the hinted value


def _hint_bracket(hint: Optional[float]) -> Optional[Tuple[int, int]]:
    """(lo, hi) keys around a positive finite hint, or None (no usable hint)."""
    if hint is None:
        return None
    h = float(hint)
    if not (math.isfinite(h) and 0.0 < h < 1e38):
        return None
    lo = int(np.array(h * (1.0 - HINT_WIDTH), np.float32).view(np.uint32))
    hi = int(np.array(h * (1.0 + HINT_WIDTH), np.float32).view(np.uint32))
    return (max(lo - 1, 0), hi) if 0 < hi < int(_INF_KEY) else None


def kth_smallest(
    sources: Sequence[ScoreSource],
    k: int,
    *,
    chunk: Optional[int] = None,
    direct_max: int = DIRECT_MAX,
    seed: int = 0,
    hint: Optional[float] = None,
) -> np.float32:
    """The k-th (0-based) smallest score over all sources, exactly.

    ``hint``: a score expected close to the answer (e.g. the previous step's threshold). The first pass then
    gathers only the keys within +-0.4% of it and no sample is drawn; if the answer lies outside, the sampled
    bracket takes over (one more pass). The result never depends on the hint.

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
    warm = _hint_bracket(hint)
    if warm is not None:
        n_le, band, band_counts = _stream(sources, key_arrays, warm[0], warm[1], chunk)
        r = k - n_le
        if 0 <= r < (band.size if band_counts is None else int(band_counts.sum())):
            return np.uint32(_select_in(band, band_counts, r)).view(np.float32)
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
