"""Element scores and masks: |w|, or the mean |w| of m x n blocks over the first two axes."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import kernels
from .selection import CHUNK, ScoreSource

__all__ = ["uses_blocks", "block_scores", "expand_blocks", "score_source", "mask_from_threshold"]

_ABS = np.uint32(0x7FFFFFFF)


def uses_blocks(shape: Tuple[int, ...], block: Tuple[int, int]) -> bool:
    """Blocks apply to tensors of rank >= 2 when the block is not 1 x 1."""
    return len(shape) >= 2 and tuple(block) != (1, 1)


def _block_edges(size: int, step: int) -> np.ndarray:
    return np.arange(0, size, step, dtype=np.int64)


def block_scores(w: np.ndarray, block: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Mean |w| per block and the element count per block, both shaped (ceil(d0/m), ceil(d1/n)).

    Axes beyond the second belong to the block; edge blocks may be smaller. Sums run in float64 and
    the mean is rounded to float32, the dtype every score is compared in.

    >>> import numpy as np
    >>> s, c = block_scores(np.arange(6, dtype=np.float32).reshape(3, 2), (2, 2))
    >>> s.tolist(), c.tolist()
    ([[1.5], [4.5]], [[4], [2]])
    """
    d0, d1 = w.shape[0], w.shape[1]
    rest = int(np.prod(w.shape[2:], dtype=np.int64))
    m, n = block
    per_cell = np.abs(w.reshape(d0, d1, rest)).sum(axis=2, dtype=np.float64)
    r0, r1 = _block_edges(d0, m), _block_edges(d1, n)
    sums = np.add.reduceat(np.add.reduceat(per_cell, r0, axis=0), r1, axis=1)
    rows = np.diff(np.append(r0, d0))
    cols = np.diff(np.append(r1, d1))
    counts = rows[:, None] * cols[None, :] * rest
    return (sums / counts).astype(np.float32), counts


def expand_blocks(block_mask: np.ndarray, shape: Tuple[int, ...], block: Tuple[int, int]) -> np.ndarray:
    """Broadcast a per-block boolean mask back to the element shape."""
    m, n = block
    full = np.repeat(np.repeat(block_mask, m, axis=0), n, axis=1)[: shape[0], : shape[1]]
    return np.broadcast_to(full.reshape(full.shape + (1,) * (len(shape) - 2)), shape)


def score_source(w: np.ndarray, block: Tuple[int, int], name: str = "") -> ScoreSource:
    """The selection source for one tensor: the weights themselves, or its block scores."""
    if uses_blocks(w.shape, block):
        scores, counts = block_scores(w, block)
        return ScoreSource(scores, counts, name)
    return ScoreSource(w, None, name)


def mask_from_threshold(
    w: np.ndarray,
    threshold: np.float32,
    block: Tuple[int, int],
    out: np.ndarray,
    apply: bool = False,
    chunk: int = CHUNK,
    scores: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Write ``score(w) >= threshold`` into the bool array ``out`` (same shape as w) and return it.

    With ``apply=True`` also multiply ``w`` by the mask in place, chunk by chunk while both are in cache.
    ``scores``: this tensor's block scores when the caller already has them (ratio mode selected on them).
    A NaN weight scores above every threshold, so it is kept: threshold mode never hides a NaN.
    """
    t = np.float32(threshold)
    if uses_blocks(w.shape, block):
        if scores is None:
            scores, _ = block_scores(w, block)
        out[...] = expand_blocks(~(scores < t), w.shape, block)
        if apply:
            np.multiply(w, out, out=w)
        return out
    if w.dtype != np.float32 or not w.flags.c_contiguous:
        keys = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32) & _ABS
        out[...] = keys >= _key(t)
        if apply:
            np.multiply(w, out, out=w)
        return out
    if kernels.eligible(w, out):
        kernels.mask_apply(w, out, int(_key(t)), apply)
        return out
    flat_w = w.reshape(-1)
    keys = flat_w.view(np.uint32)
    flat = out.reshape(-1)
    buf = np.empty(min(chunk, keys.size), np.uint32)
    t_key = _key(t)
    for a in range(0, keys.size, chunk):
        b = min(a + chunk, keys.size)
        key = np.bitwise_and(keys[a:b], _ABS, out=buf[: b - a])
        m = np.greater_equal(key, t_key, out=flat[a:b])
        if apply:
            np.multiply(flat_w[a:b], m, out=flat_w[a:b])
    return out


def _key(t: np.float32) -> np.uint32:
    """uint32 key of a non-negative float32 threshold; +inf maps above every finite key (all pruned)."""
    return np.uint32(np.array(t, np.float32).view(np.uint32))
