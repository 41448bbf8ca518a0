"""Unstructured sparsity for PaddlePaddle 3: the numerical core, the static Program pass and pruners.

The dygraph pruners live in :mod:`paddleslim_dygraph` and use the same core. Names are imported lazily, so
``import paddleslim_static.core`` (pure numpy) does not import Paddle.

>>> from paddleslim_static import UnstructuredPruner, GMPUnstructuredPruner, apply_mask_pass
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "core", "UnstructuredPruner", "GMPUnstructuredPruner", "density", "sparsity", "apply_mask_pass",
    "MaskPassResult", "mask_var_name", "masked_params", "folded",
]
__version__ = "0.2.0"

_WHERE = {
    "UnstructuredPruner": ".pruner", "GMPUnstructuredPruner": ".pruner", "density": ".pruner",
    "sparsity": ".pruner", "apply_mask_pass": ".mask_pass", "MaskPassResult": ".mask_pass",
    "mask_var_name": ".mask_pass", "masked_params": ".mask_pass", "core": ".core", "folded": ".folding",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(_WHERE[name], __name__)
        return module if name == "core" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_WHERE))
