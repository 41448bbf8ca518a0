"""N:M checks of a dygraph model: which weights have an N:M layout, and whether they are N:M sparse.

Qualifying parameters: the ``weight`` of every ``paddle.nn.Linear`` (2-D ``[in, out]``, layout ``'linear'``) and
of every ``paddle.nn.Conv2D`` (4-D ``[out, in/groups, kh, kw]``, layout ``'conv'``), subclasses included, whose
reduction axis holds at least M weights. Everything else is skipped with a reason: biases and other 1-D
parameters, norm-layer parameters, embeddings, transposed convolutions (their reduction axis is not axis 1),
Conv1D/Conv3D and any parameter of another layer type, and depthwise/short weights (fewer than M inputs).

>>> import paddle
>>> from paddleslim_dygraph.nm import check_nm
>>> from paddleslim_static.core.nm import all_nm_sparse
>>> net = paddle.nn.Sequential(paddle.nn.Linear(8, 4))
>>> v = check_nm(net, 2, 4)
>>> all_nm_sparse(v), v[net[0].weight.name].violations > 0, v[net[0].bias.name].reason
(False, True, '1-D parameter (bias)')
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import paddle

from paddleslim_static.core.nm import CONV, LINEAR, Layout, NMVerdict, check_nm as _check_nm_args
from paddleslim_static.core.nm import nm_skip_reason, nm_violations

from .layers import check_model, host_array, is_norm_layer, owned_params

__all__ = ["nm_layouts", "check_nm"]


def _role(layer: paddle.nn.Layer, attr: str, shape: Tuple[int, ...]) -> Tuple[Optional[Layout], str]:
    kind = type(layer).__name__
    if is_norm_layer(layer):
        return None, f"normalization layer parameter ({kind})"
    if len(shape) <= 1:
        return None, "1-D parameter (bias)"
    if attr == "weight" and isinstance(layer, paddle.nn.Linear) and len(shape) == 2:
        return LINEAR, ""
    if attr == "weight" and isinstance(layer, paddle.nn.Conv2D) and len(shape) == 4:
        return CONV, ""
    return None, f"{kind}.{attr} is not a Linear or Conv2D weight: no N:M layout"


def nm_layouts(model: paddle.nn.Layer, m: int) -> Dict[str, Tuple[Optional[Layout], str]]:
    """Parameter name -> (layout, '') for the weights that qualify for N:M with this M, (None, reason) otherwise."""
    check_model(model)
    _check_nm_args(1, m, "m")
    out: Dict[str, Tuple[Optional[Layout], str]] = {}
    for layer, attr, p in owned_params(model):
        shape = tuple(int(d) for d in p.shape)
        layout, reason = _role(layer, attr, shape)
        if layout is not None:
            short = nm_skip_reason(shape, m, layout)
            if short is not None:
                layout, reason = None, short
        out[p.name] = (layout, reason)
    return out


def check_nm(model: paddle.nn.Layer, n: int, m: int) -> Dict[str, NMVerdict]:
    """Parameter name -> :class:`NMVerdict` for every parameter of ``model`` (skipped ones with a reason).

    ``ok`` is True when every group of M consecutive weights along the reduction axis has at most N nonzeros.
    Combine with :func:`paddleslim_static.core.nm.all_nm_sparse` for one yes/no.
    """
    n, m = _check_nm_args(n, m, "n, m")
    layouts = nm_layouts(model, m)
    out: Dict[str, NMVerdict] = {}
    for _, _, p in owned_params(model):
        shape = tuple(int(d) for d in p.shape)
        layout, reason = layouts[p.name]
        if layout is None:
            out[p.name] = NMVerdict(p.name, shape, None, None, reason=reason)
            continue
        bad, groups = nm_violations(host_array(p)[0], n, m, layout)  # read only: no write-back
        out[p.name] = NMVerdict(p.name, shape, layout, bad == 0, bad, groups)
    return out
