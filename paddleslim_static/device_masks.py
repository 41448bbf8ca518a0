"""Mask and score shapes on the device, for :mod:`paddleslim_static.device_engine`: block scores in the core's
summation order, a per-block mask broadcast to the weight, and the static pass's bit-packed masks (the format of
:mod:`paddleslim_static.core.packing`), all as Paddle operations on the tensors' own device.

>>> import paddle
>>> bits = pack_bits(paddle.to_tensor([True, False, True]), paddle.zeros([1], dtype="uint8"))
>>> int(bits[0]), unpack_bits(bits, [3]).tolist()
(160, [True, False, True])
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import paddle

from .core.scores import _geometry

__all__ = ["block_scores", "expand_blocks", "pack_bits", "unpack_bits"]

Block = Tuple[int, int]


# -- blocks ----------------------------------------------------------------------------------------
def block_scores(w: paddle.Tensor, block: Block) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """(float32 mean |w| per block, int64 elements per block), summed as the core sums: float64, a block's rows in
    row order, then its columns left to right. Zero padding to whole blocks adds exact zeros."""
    rows, D, m, L = _geometry(tuple(w.shape), block)
    nbi, nbj = -(-rows // m), -(-D // L)
    a = w.astype("float32").abs().astype("float64").reshape([rows, D])
    if nbi * m != rows or nbj * L != D:
        a = _pad2(a, nbi * m, nbj * L)
    a = a.reshape([nbi, m, nbj * L])
    acc = a[:, 0, :]
    for r in range(1, m):
        acc = acc + a[:, r, :]
    acc = acc.reshape([nbi, nbj, L])
    s = acc[:, :, 0]
    for c in range(1, L):
        s = s + acc[:, :, c]
    row_n = paddle.full_like(s[:, :1], m, dtype="int64")
    col_n = paddle.full_like(s[:1, :], L, dtype="int64")
    if rows % m:
        row_n[-1] = rows % m
    if D % L:
        col_n[:, -1] = D % L
    counts = row_n * col_n
    return (s / counts.astype("float64")).astype("float32"), counts


def _pad2(a: paddle.Tensor, rows: int, cols: int) -> paddle.Tensor:
    """a zero-padded at the bottom and right to rows x cols."""
    return paddle.nn.functional.pad(a, [0, rows - a.shape[0], 0, cols - a.shape[1]], value=0.0)


def expand_blocks(keep: paddle.Tensor, shape: Tuple[int, ...], block: Block) -> paddle.Tensor:
    """A per-block bool mask broadcast to the element shape (rows x D, each block m rows x L elements)."""
    rows, D, m, L = _geometry(shape, block)
    nbi, nbj = keep.shape
    full = keep.reshape([nbi, 1, nbj, 1]).expand([nbi, m, nbj, L]).reshape([nbi * m, nbj * L])
    return full[:rows, :D].reshape(list(shape))


# -- packed masks (the static pass's uint8 bits, :mod:`paddleslim_static.core.packing`'s format) ----------------
def unpack_bits(bits: paddle.Tensor, shape: Sequence[int]) -> paddle.Tensor:
    """The bool mask of ``shape`` in ``np.packbits`` order (big-endian bits), unpacked on ``bits``' device."""
    n = int(np.prod(shape, dtype=np.int64))
    one = paddle.full_like(bits, 1)
    cols = [paddle.bitwise_and(_shift_u8(bits, 7 - j), one) for j in range(8)]
    return paddle.stack(cols, axis=1).reshape([-1])[:n].astype("bool").reshape(list(shape))


def pack_bits(mask: paddle.Tensor, out: paddle.Tensor) -> paddle.Tensor:
    """Pack a bool mask into the uint8 tensor ``out`` (in place, on its device), as ``np.packbits`` does."""
    flat = mask.reshape([-1]).astype("int32")
    n = flat.shape[0]
    nb = (n + 7) // 8
    if nb * 8 != n:  # zero bits up to a whole byte, as np.packbits pads
        flat = paddle.concat([flat, paddle.zeros_like(flat[:1]).tile([nb * 8 - n])])
    groups = flat.reshape([nb, 8])
    acc = groups[:, 0] * 128
    for j in range(1, 8):
        acc = acc + groups[:, j] * (1 << (7 - j))
    paddle.assign(acc.astype("uint8"), output=out)
    return out


def _shift_u8(x: paddle.Tensor, s: int) -> paddle.Tensor:
    return x if s == 0 else paddle.bitwise_right_shift(x, paddle.full_like(x, s))
