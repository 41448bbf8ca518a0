"""Unstructured sparsity for PaddlePaddle 3: the numerical core, the static Program pass and pruners.

The dygraph pruners live in :mod:`paddleslim_dygraph` and use the same core.

>>> from paddleslim_static import UnstructuredPruner, GMPUnstructuredPruner, apply_mask_pass
"""
from . import core
from .mask_pass import MaskPassResult, apply_mask_pass, mask_var_name, masked_params
from .pruner import GMPUnstructuredPruner, UnstructuredPruner, density, sparsity

__all__ = [
    "core", "UnstructuredPruner", "GMPUnstructuredPruner", "density", "sparsity", "apply_mask_pass",
    "MaskPassResult", "mask_var_name", "masked_params",
]
__version__ = "0.1.0"
