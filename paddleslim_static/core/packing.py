"""Bit-packed masks: what checkpoints store (1 bit per weight, 1/32 of float32 weights' bytes).

A packed mask is ``np.packbits`` of the flattened bool mask (big-endian bit order, as numpy's default):
a uint8 array of ``ceil(n / 8)`` bytes.

>>> import numpy as np
>>> m = np.array([[True, False, True], [False, True, True]])
>>> bits = pack_mask(m); bits.dtype.name, bits.shape
('uint8', (1,))
>>> bool((unpack_mask(bits, m.shape) == m).all())
True
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["packed_size", "pack_mask", "unpack_mask", "is_packed_mask"]


def packed_size(n: int) -> int:
    """Bytes of the packed mask of ``n`` elements."""
    return (int(n) + 7) // 8


def pack_mask(mask: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """The packed bits of a bool mask (into ``out`` when given, a uint8 array of :func:`packed_size` bytes)."""
    bits = np.packbits(np.asarray(mask, dtype=bool).reshape(-1))
    if out is None:
        return bits
    out[...] = bits
    return out


def unpack_mask(bits: np.ndarray, shape: Sequence[int], out: Optional[np.ndarray] = None) -> np.ndarray:
    """The bool mask of ``shape`` stored in ``bits`` (into the bool array ``out`` when given)."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = np.asarray(bits)
    if bits.dtype != np.uint8 or bits.size != packed_size(n):
        raise ValueError(f"packed mask must be uint8 of {packed_size(n)} bytes for shape {tuple(shape)}; "
                         f"got {bits.dtype} of {bits.size}")
    flat = np.unpackbits(bits.reshape(-1), count=n).view(bool).reshape(tuple(shape))
    if out is None:
        return flat
    out[...] = flat
    return out


def is_packed_mask(array: np.ndarray, shape: Sequence[int]) -> bool:
    """Whether ``array`` is the packed form of a mask of ``shape`` (bool masks are never uint8)."""
    n = int(np.prod(shape, dtype=np.int64))
    return array.dtype == np.uint8 and array.ndim == 1 and array.size == packed_size(n)
