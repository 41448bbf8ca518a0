"""A dense weight as the operator's CSR arrays (numpy only).

The operator computes ``y[o] = bias[o] + sum(values[k] * x[cols[k]])`` over the nonzeros ``k`` of output row ``o``:
the rows are the outputs, so a ``Linear`` weight ``[in, out]`` is transposed and a 1x1 convolution's ``[out, in, 1,
1]`` is not. Column indices are 16-bit (read as unsigned) when ``in_features <= 65536``: 6 bytes per nonzero instead
of 8, and the kernel is bound by the bytes it streams.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CSR", "csr_from_rows", "bytes_per_call"]

_U16_MAX = 1 << 16


@dataclass(frozen=True)
class CSR:
    row_ptr: np.ndarray  # int32 [out + 1]
    cols: np.ndarray  # int16 (unsigned view) or int32 [nnz]
    values: np.ndarray  # float32 [nnz]
    in_features: int

    @property
    def out_features(self) -> int:
        return int(self.row_ptr.size - 1)

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    def to_dense(self) -> np.ndarray:
        """The ``[out, in]`` matrix back (tests and verification).

        >>> m = np.array([[0, 2.0], [3.0, 0]], np.float32)
        >>> csr_from_rows(m).to_dense().tolist()
        [[0.0, 2.0], [3.0, 0.0]]
        """
        out = np.zeros((self.out_features, self.in_features), np.float32)
        rows = np.repeat(np.arange(self.out_features), np.diff(self.row_ptr))
        cols = self.cols.view(np.uint16) if self.cols.dtype == np.int16 else self.cols
        out[rows, cols.astype(np.int64)] = self.values
        return out


def csr_from_rows(matrix: np.ndarray) -> CSR:
    """CSR of a float32 ``[out, in]`` matrix, keeping exactly its nonzeros (``-0.0`` is a zero).

    >>> c = csr_from_rows(np.array([[0, 2.0, 0], [3.0, 0, 4.0]], np.float32))
    >>> c.row_ptr.tolist(), c.cols.tolist(), c.values.tolist(), c.cols.dtype.name
    ([0, 1, 3], [1, 0, 2], [2.0, 3.0, 4.0], 'int16')
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.dtype != np.float32:
        raise TypeError(f"matrix must be a 2-D float32 array; got {m.dtype} with shape {m.shape}")
    if m.size and not np.isfinite(m).all():
        raise ValueError("matrix contains NaN or Inf: the sparse operator would not reproduce it")
    if m.shape[0] >= 2 ** 31 - 1 or np.count_nonzero(m) >= 2 ** 31 - 1:
        raise ValueError(f"matrix of shape {m.shape} is too large for 32-bit row pointers")
    nz = m != 0
    row_ptr = np.zeros(m.shape[0] + 1, np.int32)
    np.cumsum(nz.sum(axis=1), out=row_ptr[1:])
    rows, cols = np.nonzero(nz)
    small = m.shape[1] <= _U16_MAX
    return CSR(row_ptr=row_ptr, cols=cols.astype(np.uint16).view(np.int16) if small else cols.astype(np.int32),
               values=np.ascontiguousarray(m[rows, cols]), in_features=int(m.shape[1]))


def bytes_per_call(csr: CSR) -> int:
    """Bytes of values, indices and row pointers the kernel streams per call (the memory-bound part)."""
    return int(csr.values.nbytes + csr.cols.nbytes + csr.row_ptr.nbytes)
