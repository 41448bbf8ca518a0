"""Pruner masks folded into the weights for the duration of an export, through the pruner packages' own API."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import paddle

import paddleslim_dygraph

from paddleslim_static.core.naming import mask_name

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


@contextlib.contextmanager
def folded_program(program: Any, params: Sequence[str], scope: Any) -> Iterator[None]:
    """Inside: every parameter of ``program`` with a ``<param>_mask`` variable in ``scope`` multiplied by it;
    the weights are restored on exit."""
    # TEMPORARY until paddleslim_static.folded(program, scope) lands.
    saved = []
    try:
        for n in params:
            mv, pv = scope.find_var(mask_name(n)), scope.find_var(n)
            if mv is None or pv is None:
                continue
            t = pv.get_tensor()
            w, m = np.array(t), np.array(mv.get_tensor())
            if m.shape != w.shape:
                continue
            saved.append((t, w))
            t.set((w * m.astype(w.dtype)).astype(w.dtype), paddle.CPUPlace())
        yield
    finally:
        for t, w in saved:
            t.set(w, paddle.CPUPlace())
