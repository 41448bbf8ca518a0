"""Pruner masks folded into the weights for the duration of an export; the caller's model/scope restored after."""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator, Sequence

import numpy as np
import paddle

from paddleslim_static.core.naming import mask_name

__all__ = ["folded_layer", "folded_program"]


def _dygraph_folded() -> Any:
    import paddleslim_dygraph

    # TEMPORARY: paddleslim_dygraph.folded is being exported by the lead; until then take it from .pruner.
    fn = getattr(paddleslim_dygraph, "folded", None)
    return fn if fn is not None else importlib.import_module("paddleslim_dygraph.pruner").folded


@contextlib.contextmanager
def folded_layer(layer: paddle.nn.Layer) -> Iterator[None]:
    """Inside: ``layer`` in eval mode with every live dygraph pruner's masks folded into its weights and the
    pruners' hooks and mask buffers detached. On exit everything (train/eval mode included) is as before."""
    training = layer.training
    try:
        layer.eval()
        with _dygraph_folded()(layer):
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
