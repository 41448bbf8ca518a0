"""Paddle layers that run a pruned ``Linear`` / 1x1 ``Conv2D`` through the sparse CPU operator.

They hold the CSR arrays as persistable buffers, so ``paddle.jit.save`` writes them into the inference model and
the saved program calls the operator (which Paddle Inference finds once :func:`..loader.load_library` registered
it: :func:`..predictor.create_predictor` does). Inference only: there is no backward.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import paddle

from paddleslim_dygraph.layers import conv1x1_unsupported as plain_conv1x1_unsupported

from .csr import CSR, csr_from_rows
from .loader import load_library

__all__ = ["SparseLinear", "SparseConv1x1", "conv1x1_unsupported"]


class _SparseBase(paddle.nn.Layer):
    _op = ""

    def __init__(self, csr: CSR, bias: Optional[np.ndarray]) -> None:
        super().__init__()
        load_library()  # the operator must be registered before a forward or a to_static trace
        self.in_features, self.out_features, self.nnz = csr.in_features, csr.out_features, csr.nnz
        b = np.zeros(csr.out_features, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(-1)
        for name, arr in (("row_ptr", csr.row_ptr), ("cols", csr.cols), ("values", csr.values), ("bias", b)):
            self.register_buffer(name, paddle.to_tensor(np.ascontiguousarray(arr)), persistable=True)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = paddle._C_ops._run_custom_op(self._op, x, self.row_ptr, self.cols, self.values, self.bias,
                                           int(self.in_features))
        return out[0] if isinstance(out, (list, tuple)) else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


class SparseLinear(_SparseBase):
    """``y = x @ W + b`` for ``x`` of any rank ``[..., in]``, W stored as CSR.

    >>> import paddle
    >>> dense = paddle.nn.Linear(8, 4)
    >>> with paddle.no_grad():
    ...     _ = dense.weight.set_value(dense.weight * (paddle.abs(dense.weight) > 0.3).astype("float32"))
    >>> sparse = SparseLinear.from_dense(dense)
    >>> x = paddle.randn([2, 3, 8])
    >>> bool(paddle.allclose(sparse(x), dense(x), rtol=1e-5, atol=1e-6))
    True
    """

    _op = "paddleslim_sparse_linear"

    @classmethod
    def from_dense(cls, layer: paddle.nn.Linear) -> "SparseLinear":
        w = layer.weight.numpy()
        if w.dtype != np.float32:
            raise TypeError(f"SparseLinear needs a float32 weight; got {w.dtype}")
        bias = None if layer.bias is None else layer.bias.numpy()
        return cls(csr_from_rows(np.ascontiguousarray(w.T)), bias)


def conv1x1_unsupported(layer: paddle.nn.Conv2D) -> Optional[str]:
    """Why ``layer`` cannot run as a sparse 1x1 convolution (None when it can): the dygraph package's rule for a
    plain 1x1 convolution, plus what this operator needs (NCHW, float32)."""
    why = plain_conv1x1_unsupported(layer)
    if why is None and layer._data_format != "NCHW":  # no public getter in Paddle 3.3
        why = f"data_format {layer._data_format}"
    if why is None and layer.weight.dtype != paddle.float32:
        why = f"dtype {layer.weight.dtype}"
    return why


class SparseConv1x1(_SparseBase):
    """A 1x1 convolution (stride 1, no padding, groups 1, NCHW) as a sparse matrix over channels."""

    _op = "paddleslim_sparse_conv1x1"

    @classmethod
    def from_dense(cls, layer: paddle.nn.Conv2D) -> "SparseConv1x1":
        why = conv1x1_unsupported(layer)
        if why is not None:
            raise ValueError(f"SparseConv1x1 needs a 1x1 convolution with stride 1, no padding and groups 1: {why}")
        w = layer.weight.numpy()
        bias = None if layer.bias is None else layer.bias.numpy()
        return cls(csr_from_rows(np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]))), bias)
