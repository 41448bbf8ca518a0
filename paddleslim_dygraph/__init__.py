"""PaddleSlim's dygraph unstructured pruners for Paddle 3, on the shared numerical core.

>>> from paddleslim_dygraph import UnstructuredPruner, GMPUnstructuredPruner
"""
from .pruner import GMPUnstructuredPruner, UnstructuredPruner, density, sparsity

__all__ = ["UnstructuredPruner", "GMPUnstructuredPruner", "density", "sparsity"]
