"""Sparse CPU inference for pruned models: a Paddle custom operator (CSR, per-CPU kernels) and what uses it.

>>> from paddleslim_tools.runtime import kernels_status
>>> kernels_status().startswith("sparse CPU kernels")
True

- :func:`create_predictor` — a ``paddle.inference`` predictor for a saved sparse model (registers the operator);
- :class:`SparseLinear`, :class:`SparseConv1x1` — the layers a conversion puts in place of pruned dense ones;
- :func:`load_library`, :func:`kernels_status` — the one operator library of the process (built at install, or at
  first use), and why it is unavailable when it is.

Importing this package imports nothing heavy; names load on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layers import SparseConv1x1, SparseLinear
    from .loader import KernelsUnavailable, Library, kernels_status, load_library
    from .predictor import create_predictor

__all__ = ["create_predictor", "SparseLinear", "SparseConv1x1", "load_library", "kernels_status",
           "KernelsUnavailable", "Library"]

_WHERE = {
    "create_predictor": ".predictor", "SparseLinear": ".layers", "SparseConv1x1": ".layers",
    "load_library": ".loader", "kernels_status": ".loader", "KernelsUnavailable": ".loader", "Library": ".loader",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_WHERE))
