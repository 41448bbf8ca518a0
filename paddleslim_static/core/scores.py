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


def _geometry(shape: Tuple[int, ...], block: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(rows, D, m, L): the tensor as rows x D with D = d1 * trailing size; a block is m rows x L = n * trailing."""
    rest = int(np.prod(shape[2:], dtype=np.int64))
    return int(shape[0]), int(shape[1]) * rest, int(block[0]), int(block[1]) * rest


def _edges(size: int, step: int) -> np.ndarray:
    """Lengths of the pieces of ``size`` cut every ``step`` (the last may be shorter)."""
    n = -(-size // step)
    out = np.full(n, step, np.int64)
    if n:
        out[-1] = size - step * (n - 1)
    return out


def _grid(shape: Tuple[int, ...], block: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(rows per block row, elements per block column and row): block (I, J) holds rows[I] * cols[J] elements."""
    rows, D, m, L = _geometry(shape, block)
    return _edges(rows, m), _edges(D, L)


def _block_sums_numpy(w2: np.ndarray, m: int, L: int, out: np.ndarray) -> None:
    """The C kernel's block means in numpy, in the same order: float64 column sums over a block's rows (row
    order), then the block's columns added left to right. Works on a few block rows at a time."""
    rows, D = w2.shape
    rows_n, cols_n = _edges(rows, m), _edges(D, L)
    nbj_full = D // L
    per = max(1, (1 << 18) // max(D, 1))  # block rows per piece: bounded scratch memory
    for I0 in range(0, rows_n.size, per):
        I1 = min(I0 + per, rows_n.size)
        groups = [(I0, I1)] if rows_n[I1 - 1] == m else [(I0, I1 - 1), (I1 - 1, I1)]
        for g0, g1 in groups:
            if g1 <= g0:
                continue
            nr = int(rows_n[g0])
            part = w2[g0 * m:g0 * m + (g1 - g0) * nr].reshape(g1 - g0, nr, D)
            acc = np.abs(part[:, 0, :]).astype(np.float64)
            for r in range(1, nr):
                acc += np.abs(part[:, r, :])
            sums = np.empty((g1 - g0, cols_n.size), np.float64)
            if nbj_full:
                full = acc[:, :nbj_full * L].reshape(g1 - g0, nbj_full, L)
                s = full[:, :, 0].copy()
                for c in range(1, L):
                    s += full[:, :, c]
                sums[:, :nbj_full] = s
            if nbj_full < cols_n.size:
                s = acc[:, nbj_full * L].copy()
                for c in range(nbj_full * L + 1, D):
                    s += acc[:, c]
                sums[:, nbj_full] = s
            out[g0:g1] = (sums / (nr * cols_n)[None, :]).astype(np.float32)


def block_scores(w: np.ndarray, block: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Mean |w| per block and the element count per block, both shaped (ceil(d0/m), ceil(d1/n)).

    Axes beyond the second belong to the block; edge blocks may be smaller. Sums run in float64 (over the
    block's rows first, then its columns) and the mean is rounded to float32, the dtype every score is
    compared in.

    >>> import numpy as np
    >>> s, c = block_scores(np.arange(6, dtype=np.float32).reshape(3, 2), (2, 2))
    >>> s.tolist(), c.tolist()
    ([[1.5], [4.5]], [[4], [2]])
    """
    rows_n, cols_n = _grid(w.shape, block)
    return _block_score_array(w, block), rows_n[:, None] * cols_n[None, :]


def _block_score_array(w: np.ndarray, block: Tuple[int, int]) -> np.ndarray:
    rows, D, m, L = _geometry(w.shape, block)
    out = np.empty((-(-rows // m), -(-w.shape[1] // block[1])), np.float32)
    w2 = w.reshape(rows, D)
    if kernels.enabled() and w.dtype == np.float32 and w.dtype.isnative and w2.flags.c_contiguous \
            and w2.flags.aligned:
        kernels.block_scores(w2, m, L, out)
    else:
        _block_sums_numpy(np.ascontiguousarray(w2, dtype=np.float32), m, L, out)
    return out


def expand_blocks(block_mask: np.ndarray, shape: Tuple[int, ...], block: Tuple[int, int]) -> np.ndarray:
    """Broadcast a per-block boolean mask back to the element shape."""
    m, n = block
    full = np.repeat(np.repeat(block_mask, m, axis=0), n, axis=1)[: shape[0], : shape[1]]
    return np.broadcast_to(full.reshape(full.shape + (1,) * (len(shape) - 2)), shape)


def score_source(w: np.ndarray, block: Tuple[int, int], name: str = "") -> ScoreSource:
    """The selection source for one tensor: the weights themselves, or its block scores (1/(m*n) of the
    weights' size; what each score stands for is kept as two short vectors, never expanded)."""
    if uses_blocks(w.shape, block):
        return ScoreSource(_block_score_array(w, block), None, name, grid=_grid(w.shape, block))
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
            scores = _block_score_array(w, block)
        _block_mask(w, np.ascontiguousarray(scores, np.float32), t, block, out, apply)
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


def _block_mask(w: np.ndarray, scores: np.ndarray, t: np.float32, block: Tuple[int, int], out: np.ndarray,
                apply: bool) -> None:
    """out = (block score >= t) over every element of its block; w *= out with ``apply``. No full-size
    temporary: the C kernel writes the mask row by row, the numpy code a few block rows at a time."""
    rows, D, m, L = _geometry(w.shape, block)
    keys = scores.reshape(scores.shape[0], -1).view(np.uint32)
    if kernels.eligible(w, out) and out.flags.c_contiguous:
        kernels.block_mask_apply(w.reshape(rows, D), out.reshape(rows, D), keys, m, L, int(_key(t)), apply)
        return
    keep = ~(scores < t)  # per block: a NaN score is kept
    per = max(1, (1 << 18) // max(D, 1))
    w2 = w.reshape(rows, D) if w.flags.c_contiguous else None
    for I0 in range(0, keep.shape[0], per):
        I1 = min(I0 + per, keep.shape[0])
        r0, r1 = I0 * m, min(I1 * m, rows)
        piece = np.repeat(np.repeat(keep[I0:I1], m, axis=0)[: r1 - r0], L, axis=1)[:, :D]
        if out.flags.c_contiguous:
            out.reshape(rows, D)[r0:r1] = piece
        else:
            out[r0:r1] = piece.reshape((r1 - r0,) + tuple(w.shape[1:]))
        if apply:
            if w2 is not None:
                np.multiply(w2[r0:r1], piece, out=w2[r0:r1])
            else:
                w[r0:r1] *= piece.reshape((r1 - r0,) + tuple(w.shape[1:]))


def _key(t: np.float32) -> np.uint32:
    """uint32 key of a non-negative float32 threshold; +inf maps above every finite key (all pruned)."""
    return np.uint32(np.array(t, np.float32).view(np.uint32))
