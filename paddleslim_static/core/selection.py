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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .streaming import CHUNK, stream_pass

__all__ = ["ScoreSource", "SelectionStats", "kth_smallest", "prune_count", "ratio_threshold", "count_threshold",
           "NonFiniteScoreError"]

_ABS = np.uint32(0x7FFFFFFF)
_INF_KEY = np.uint32(0x7F800000)
DIRECT_MAX = 1 << 16
SAMPLE_MIN, SAMPLE_MAX = 1 << 14, 1 << 18


class NonFiniteScoreError(ValueError):
    """A weight or score is NaN or infinite, so no meaningful ratio threshold exists."""


@dataclass
class SelectionStats:
    """What selections did, added up over the calls it is handed to (pass ``stats=`` to observe; the result never
    depends on it).

    >>> import numpy as np
    >>> stats = SelectionStats()
    >>> w = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    >>> t = kth_smallest([ScoreSource(w)], 70_000, stats=stats)
    >>> stats.passes, stats.samples, stats.warm_hit
    (1, 1, False)
    >>> t2 = kth_smallest([ScoreSource(w)], 70_000, hint=float(t), stats=stats)
    >>> stats.passes, stats.samples, stats.warm_hit
    (2, 1, True)
    """

    passes: int = 0  # streaming passes over all scores (counting-only passes included)
    samples: int = 0  # random samples drawn (none on a warm start that holds the answer)
    warm_hit: bool = False  # a hint's bracket held the answer
    direct: int = 0  # selections small enough to partition all keys at once (no pass)
    largest_band: int = 0  # most keys one partition worked on
    host_bytes: int = 0  # bytes an engine off the host moved to it (the Paddle engine)
    next_width: Optional[float] = None  # the warm bracket's half-width to pass with the next hint


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


def _check_finite(max_key: int, name: str) -> None:
    if max_key >= int(_INF_KEY):
        what = "NaN" if max_key > int(_INF_KEY) else "Inf"
        where = f" in {name!r}" if name else ""
        raise NonFiniteScoreError(
            f"weights{where} contain {what}; ratio mode cannot place a threshold among non-finite values"
        )


class Solo:
    """The reductions the selection makes, for one process (identities). :class:`.distributed.Group` makes
    the same calls across ranks, so every rank takes the same branches and gets the same answer."""

    def sum(self, values: Sequence[int]) -> List[int]:
        return [int(v) for v in values]

    def gather(self, a: np.ndarray) -> np.ndarray:
        return a

    def agree(self, value: Optional[float]) -> Optional[float]:
        return value

    def check(self, bad: Optional[Tuple[int, str]]) -> None:
        if bad is not None:
            _check_finite(*bad)


SOLO = Solo()


def _select_in(keys: np.ndarray, counts: Optional[np.ndarray], r: int) -> int:
    """r-th (0-based) smallest key of a small array (the band, or a tiny model), each key repeated counts[i] times.

    Weighted: a quickselect on the keys (median pivots by ``np.partition``), counting weights instead of elements;
    nothing the size of the elements is built and nothing is sorted."""
    if counts is None:
        return int(np.partition(keys, r)[r])
    if counts.size and counts.min() == counts.max():  # all blocks the same size: the (r // c)-th key
        return int(np.partition(keys, r // int(counts[0]))[r // int(counts[0])])
    counts = counts.astype(np.int64, copy=False)
    while True:  # each round drops the pivot's key and at least half of the rest
        pivot = np.partition(keys, keys.size // 2)[keys.size // 2]
        below = keys < pivot
        n_below = int(counts[below].sum())
        if r < n_below:
            keys, counts = keys[below], counts[below]
            continue
        equal = keys == pivot
        n_equal = int(counts[equal].sum())
        if r < n_below + n_equal:
            return int(pivot)
        r -= n_below + n_equal
        above = ~(below | equal)
        keys, counts = keys[above], counts[above]


def _direct(sources: Sequence[ScoreSource], k: int, comm: Solo = SOLO, weighted: bool = False,
            max_keys: Optional[Dict[str, int]] = None, stats: Optional[SelectionStats] = None) -> int:
    parts = [s.keys_array() & _ABS for s in sources]
    if stats is not None:
        stats.direct += 1
        stats.largest_band = max(stats.largest_band, sum(p.size for p in parts))
    if max_keys is not None:
        max_keys.update({s.name: int(p.max()) for s, p in zip(sources, parts) if p.size})
    keys = np.concatenate(parts + [np.empty(0, np.uint32)])
    mx = int(keys.max()) if keys.size else 0
    comm.check((mx, "") if mx >= int(_INF_KEY) else None)
    if not weighted:
        return _select_in(comm.gather(keys), None, k)
    counts = np.concatenate([
        np.ones(s.values.size, np.int64) if not s.weighted else s.counts_range(0, s.values.size) for s in sources
    ] + [np.empty(0, np.int64)])
    return _select_in(comm.gather(keys), comm.gather(counts), k)


def sample_size(total: int) -> int:
    """About total/256, a power of two in [2**14, 2**18]: a bigger sample narrows the band the stream gathers,
    which pays on big models; on small ones drawing it would cost more than it saves."""
    return int(min(SAMPLE_MAX, max(SAMPLE_MIN, 1 << max(0, (total // 256).bit_length()))))


def _sample(key_arrays: List[np.ndarray], rng: np.random.Generator, comm: Solo = SOLO) -> np.ndarray:
    """sample_size(total) keys drawn uniformly (fixed seed) from all arrays (of all ranks), in no particular
    order; each rank draws its share in proportion to its keys."""
    sizes = np.array([a.size for a in key_arrays], dtype=np.int64)
    local = int(sizes.sum())
    total = comm.sum([local])[0]
    m = sample_size(total) * local // max(total, 1)
    parts = []
    if m and local:
        per_array = rng.multinomial(m, sizes / local)
        parts = [a[rng.integers(0, a.size, c)] for a, c in zip(key_arrays, per_array) if c]
    sample = comm.gather(np.concatenate(parts + [np.empty(0, np.uint32)]))
    return sample & _ABS


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


def _stream(sources: Sequence[ScoreSource], key_arrays: List[np.ndarray], lo: int, hi: int,
            chunk: Optional[int] = None, comm: Solo = SOLO, weighted: Optional[bool] = None,
            max_keys: Optional[Dict[str, int]] = None, stats: Optional[SelectionStats] = None):
    """One pass over all ranks: (#elements with key <= lo, #elements with key in (lo, hi], this rank's band
    keys, their counts or None). Raises NonFiniteScoreError on every rank if any rank saw NaN/Inf."""
    if stats is not None:
        stats.passes += 1
    weighted = any(s.weighted for s in sources) if weighted is None else weighted
    n_le, keys, counts, bad = stream_pass(sources, key_arrays, lo, hi, weighted, chunk, max_keys)
    comm.check(bad)
    n_le, band_total = comm.sum([n_le, keys.size if counts is None else int(counts.sum())])
    return n_le, band_total, keys, counts


def _count_below(sources: Sequence[ScoreSource], key_arrays: List[np.ndarray], key: int,
                 chunk: Optional[int] = None, comm: Solo = SOLO, weighted: Optional[bool] = None,
                 stats: Optional[SelectionStats] = None) -> int:
    """How many elements (of all ranks) have a key < ``key``."""
    return 0 if key <= 0 else _stream(sources, key_arrays, key - 1, key - 1, chunk, comm, weighted,
                                      stats=stats)[0]


HINT_WIDTH = 2.0 ** -8  # default half-width of a hint's bracket: keys within +-0.4% (relative) of the hint


def _hint_bracket(hint: Optional[float], width: Optional[float] = HINT_WIDTH) -> Optional[Tuple[int, int]]:
    """(lo, hi) keys within +-width (relative) of a positive finite hint, or None (no usable hint)."""
    if hint is None:
        return None
    width = HINT_WIDTH if width is None or not 0 < width < 0.5 else float(width)
    h = float(hint)
    if not (math.isfinite(h) and 0.0 < h < 1e38):
        return None
    lo = int(np.array(h * (1.0 - width), np.float32).view(np.uint32))
    hi = int(np.array(h * (1.0 + width), np.float32).view(np.uint32))
    return (max(lo - 1, 0), hi) if 0 < hi < int(_INF_KEY) else None


def kth_smallest(
    sources: Sequence[ScoreSource],
    k: int,
    *,
    chunk: Optional[int] = None,
    direct_max: int = DIRECT_MAX,
    seed: int = 0,
    hint: Optional[float] = None,
    hint_width: float = HINT_WIDTH,
    comm: Solo = SOLO,
    max_keys: Optional[Dict[str, int]] = None,
    stats: Optional[SelectionStats] = None,
) -> np.float32:
    """The k-th (0-based) smallest score over all sources, exactly.

    ``hint``: a score expected close to the answer (e.g. the previous step's threshold). The first pass then
    gathers only the keys within +-``hint_width`` (relative, default 0.4%) of it and no sample is drawn; if the
    answer lies outside, the sampled bracket takes over (one more pass). The result never depends on the hint.
    ``comm``: where the sources are split across ranks, a :class:`.distributed.Group`; every rank passes its
    own sources and gets the k-th over all of them. ``max_keys``: a dict that receives every (non-empty) source's
    largest key by source name, from the first pass (which reads every score anyway). ``stats``: a
    :class:`SelectionStats` the passes, samples and band sizes are added to.

    >>> import numpy as np
    >>> w = np.array([0.5, -0.1, 0.3, -0.9], np.float32)
    >>> float(kth_smallest([ScoreSource(w)], 1))
    0.30000001192092896

    Raises NonFiniteScoreError when a score is NaN or Inf.
    """
    sources = [s for s in sources if s.values.size]
    total, n_weighted = comm.sum([sum(s.total for s in sources), sum(s.weighted for s in sources)])
    weighted = n_weighted > 0
    if not 0 <= k < total:
        raise ValueError(f"k must be in [0, {total}); got {k}")
    if total <= direct_max:
        return np.uint32(_direct(sources, k, comm, weighted, max_keys, stats)).view(np.float32)
    key_arrays = [s.keys_array() for s in sources]
    q = k / total

    def select(r: int, band: np.ndarray, band_counts: Optional[np.ndarray]) -> np.float32:
        counts = comm.gather(band_counts) if weighted else None
        keys = comm.gather(band)
        if stats is not None:
            stats.largest_band = max(stats.largest_band, int(keys.size))
        return np.uint32(_select_in(keys, counts, r)).view(np.float32)

    warm = _hint_bracket(comm.agree(hint), comm.agree(hint_width))
    if warm is not None:
        n_le, band_total, band, band_counts = _stream(sources, key_arrays, warm[0], warm[1], chunk, comm, weighted,
                                                      max_keys, stats)
        max_keys = None  # filled
        if 0 <= k - n_le < band_total:
            if stats is not None:
                stats.warm_hit = True
            return select(k - n_le, band, band_counts)
    sample = _sample(key_arrays, np.random.default_rng(seed), comm)
    if stats is not None:
        stats.samples += 1
    lo, hi = _bracket(sample, q)
    while True:
        n_le, band_total, band, band_counts = _stream(sources, key_arrays, lo, hi, chunk, comm, weighted, max_keys,
                                                      stats)
        max_keys = None
        r = k - n_le
        if 0 <= r < band_total:
            return select(r, band, band_counts)
        if r >= band_total:  # the k-th is above hi: everything <= hi is counted next time
            lo, hi = hi, _above(sample, hi, q)
        elif lo == 0 or k >= _count_below(sources, key_arrays, lo, chunk, comm, weighted, stats):
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
    total = kw.get("comm", SOLO).sum([sum(s.total for s in sources)])[0]
    return count_threshold(sources, prune_count(total, ratio), total=total, **kw)


def count_threshold(sources: Sequence[ScoreSource], k: int, total: Optional[int] = None, **kw) -> np.float32:
    """Smallest kept score when the ``k`` lowest-scored elements are pruned; +inf when ``k`` >= all elements.

    >>> import numpy as np
    >>> float(count_threshold([ScoreSource(np.arange(10, dtype=np.float32))], 4))
    4.0
    """
    if total is None:
        total = kw.get("comm", SOLO).sum([sum(s.total for s in sources)])[0]
    if k >= total:
        return np.float32(np.inf)
    return kth_smallest(sources, k, **kw)
