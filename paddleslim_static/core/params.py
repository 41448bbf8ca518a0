"""Which parameters are pruned: the rules shared by programs and layers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, List, Optional, Sequence, Set, Tuple

__all__ = ["ParamInfo", "is_conv1x1", "default_skip", "resolve_prunable"]


@dataclass(frozen=True)
class ParamInfo:
    """What the rules need to know of a parameter, whichever mode it lives in."""

    name: str
    shape: Tuple[int, ...]
    is_norm: bool = False  # belongs to a normalization layer / is an operand of a norm op
    owner: Optional[str] = None  # dygraph: full_name() of the sublayer that owns it


def is_conv1x1(shape: Sequence[int]) -> bool:
    """A 4-D weight with a 1 x 1 kernel."""
    return len(shape) == 4 and shape[2] == 1 and shape[3] == 1


def default_skip(params: Iterable[ParamInfo]) -> Set[str]:
    """Norm-layer parameters and 1-D parameters (biases)."""
    return {p.name for p in params if p.is_norm or len(p.shape) <= 1}


def resolve_prunable(
    params: Sequence[ParamInfo],
    skip_names: Optional[Collection[str]],
    conv1x1_only: bool,
) -> Tuple[List[ParamInfo], Set[str]]:
    """Split parameters into (prunable, skipped names).

    ``skip_names`` replaces the default rule when given; it may hold parameter names or owner names
    (a sublayer's ``full_name()`` skips all of its parameters). Unknown names raise ValueError.
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
    if conv1x1_only:
        skipped |= {p.name for p in params if not is_conv1x1(p.shape)}
    prunable = [p for p in params if p.name not in skipped]
    return prunable, skipped
