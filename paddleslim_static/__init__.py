"""Unstructured sparsity for PaddlePaddle 3: the numerical core, the static Program pass and pruners.

The dygraph pruners live in :mod:`paddleslim_dygraph` and use the same core.
"""
from . import core

__all__ = ["core"]
__version__ = "0.1.0"
