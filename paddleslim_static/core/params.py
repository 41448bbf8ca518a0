"""Which parameters are pruned: the rules shared by programs and layers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, List, Optional, Sequence, Set, Tuple

__all__ = ["ParamInfo", "is_conv1x1", "is_floating", "default_skip", "resolve_prunable"]

_FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def is_floating(dtype: str) -> bool:
    """Whether a dtype name (numpy or Paddle spelling, e.g. ``'float32'``, ``'paddle.float32'``) is floating point."""
    return str(dtype).rsplit(".", 1)[-1] in _FLOAT_DTYPES


@dataclass(frozen=True)
class ParamInfo:
    """What the rules need to know of a parameter, whichever mode it lives in."""

    name: str
    shape: Tuple[int, ...]
    is_norm: bool = False  # belongs to a normalization layer / is an operand of a norm op
    owner: Optional[str] = None  # dygraph: full_name() of the sublayer that owns it
    dtype: str = "float32"  # numpy-style name; parameters that are not floating point are never pruned
    lite_sparse_conv: bool = False  # weight of a conv2d Paddle Lite's sparse kernels take (1x1, groups 1, stride 1,
    #                                 padding 0); see prune_params_type='lite_sparse_conv'


def is_conv1x1(shape: Sequence[int]) -> bool:
    """A 4-D weight with a 1 x 1 kernel."""
    return len(shape) == 4 and shape[2] == 1 and shape[3] == 1


def default_skip(params: Iterable[ParamInfo]) -> Set[str]:
    """Norm-layer parameters and 1-D parameters (biases)."""
    return {p.name for p in params if p.is_norm or len(p.shape) <= 1}


def resolve_prunable(
    params: Sequence[ParamInfo],
    skip_names: Optional[Collection[str]],
    prune_params_type: Optional[str] = None,
) -> Tuple[List[ParamInfo], Set[str]]:
    """Split parameters into (prunable, skipped names).

    ``skip_names`` replaces the default rule when given; it may hold parameter names or owner names
    (a sublayer's ``full_name()`` skips all of its parameters). Unknown names raise ValueError.
    ``prune_params_type``: ``'conv1x1_only'`` keeps only 4-D 1x1 weights, ``'lite_sparse_conv'`` only the conv2d
    weights Paddle Lite's sparse kernels take. Parameters that are not floating point are always skipped.

    >>> ps = [ParamInfo("w", (4, 4)), ParamInfo("b", (4,)), ParamInfo("ids", (4, 4), dtype="int64")]
    >>> [p.name for p in resolve_prunable(ps, None)[0]]
    ['w']
    """
    if skip_names is None:
        skipped = default_skip(params)
    else:
        if isinstance(skip_names, (str, bytes)) or not isinstance(skip_names, Collection):
            raise TypeError(
                f"skip_params_func must return a collection of names; got {type(skip_names).__name__}"
            )
        known_params = {p.name for p in params}
        known_owners = {p.owner for p in params if p.owner}
        unknown = sorted(str(n) for n in skip_names if n not in known_params and n not in known_owners)
        if unknown:
            raise ValueError(
                f"skip_params_func returned names that are neither parameters nor layers: {unknown[:5]}"
                + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            )
        names = set(skip_names)
        skipped = {p.name for p in params if p.name in names or (p.owner is not None and p.owner in names)}
    skipped |= {p.name for p in params if not is_floating(p.dtype)}
    if prune_params_type == "conv1x1_only":
        skipped |= {p.name for p in params if not is_conv1x1(p.shape)}
    elif prune_params_type == "lite_sparse_conv":
        skipped |= {p.name for p in params if not p.lite_sparse_conv}
    prunable = [p for p in params if p.name not in skipped]
    return prunable, skipped
