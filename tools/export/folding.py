"""Pruner masks folded into the weights for the duration of an export, through the pruner packages' own API."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import paddle

import paddleslim_dygraph
import paddleslim_static

__all__ = ["folded_layer", "folded_program"]


@contextlib.contextmanager
def folded_layer(layer: paddle.nn.Layer) -> Iterator[None]:
    """Inside: ``layer`` in eval mode with every live dygraph pruner's masks folded into its weights and the
    pruners' hooks and mask buffers detached; on exit the pruners are attached again and the train/eval mode
    restored (the weights keep their zeros, as after any ``step()``)."""
    training = layer.training
    try:
        layer.eval()
        with paddleslim_dygraph.folded(layer):
            yield
    finally:
        layer.train() if training else layer.eval()


def folded_program(program: Any, scope: Any) -> "contextlib.AbstractContextManager[Any]":
    """Inside: every parameter of ``program`` with a ``<param>_mask`` variable (bool or bit-packed) in ``scope``
    holds ``weight * mask``; the weights are restored bit for bit on exit."""
    return paddleslim_static.folded(program, scope)
