"""PaddleSlim's dygraph unstructured pruners for Paddle 3, on the shared core (:mod:`paddleslim_static.core`).

>>> from paddleslim_dygraph import UnstructuredPruner, GMPUnstructuredPruner, PruningCallback, folded
"""
from .hapi import PruningCallback
from .pruner import GMPUnstructuredPruner, UnstructuredPruner, density, folded, sparsity

__all__ = ["UnstructuredPruner", "GMPUnstructuredPruner", "PruningCallback", "density", "sparsity", "folded"]
