"""One streaming pass over score sources, split into tasks (and across threads on the C path).

Used by :mod:`selection`; returns raw partial results (count, band, max keys) without judging them, so the
caller decides how to combine them (one process, or across ranks).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import kernels, threads

_ABS = np.uint32(0x7FFFFFFF)
CHUNK = 1 << 18
C_CHUNK = 1 << 20  # keys per C call: fewer Python round trips; the band buffer is touched only where written


def _chunks(keys: np.ndarray, chunk: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, keys.size, chunk):
        yield start, min(start + chunk, keys.size)


def _tasks(sources: Sequence, key_arrays: List[np.ndarray], chunk: int, use_c: bool):
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

    def _one(self, src, keys: np.ndarray, a: int, b: int):
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


def stream_pass(sources: Sequence, key_arrays: List[np.ndarray], lo: int, hi: int, weighted: bool,
                chunk: Optional[int] = None, max_keys: Optional[Dict[str, int]] = None):
    """One pass: (#elements with key <= lo, keys in (lo, hi], their counts (when ``weighted``), the first
    non-finite (max key, source name) or None). ``max_keys``: receives each source's largest key (by name).

    On the C path the tasks are split into contiguous groups, one per thread; results are combined in task
    order, so the band and the count do not depend on the thread count."""
    use_c = kernels.enabled() and all(
        kernels.keys_eligible(k) and (s.counts is None) for s, k in zip(sources, key_arrays))
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
    bad = next(((mx, sources[i].name) for (i, _, _), mx in zip(tasks, maxes) if mx >= 0x7F800000), None)
    if max_keys is not None:
        for (i, _, _), mx in zip(tasks, maxes):
            max_keys[sources[i].name] = max(max_keys.get(sources[i].name, 0), int(mx))
    keys_out = np.concatenate(band_keys) if band_keys else np.empty(0, np.uint32)
    counts_out = (np.concatenate(band_counts) if band_counts else np.empty(0, np.int64)) if weighted else None
    return n_le, keys_out, counts_out, bad
