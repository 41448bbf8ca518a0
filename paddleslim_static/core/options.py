"""A pruner's arguments and targets, settled before anything is touched.

* :func:`check_options` validates every argument on its own (no model or program is read): ValueError / TypeError
  naming the argument;
* :func:`resolve_targets` decides which parameters of a target are pruned (the skip rules, N:M layouts), from the
  backend's :class:`~paddleslim_static.core.params.ParamInfo` list.

:class:`~paddleslim_static.core.pruner.Pruner` runs both, then asks the backend to check and attach.

>>> from paddleslim_static.core.params import ParamInfo
>>> opts = check_options(mode="ratio", ratio=0.5, sparse_pattern="2:4")
>>> infos = [ParamInfo("fc.w", (8, 4)), ParamInfo("fc.b", (4,)), ParamInfo("tiny.w", (2, 4))]
>>> t = resolve_targets(infos, None, opts)
>>> t.names, t.layouts, sorted(t.skipped)
(['fc.w'], {'fc.w': 'linear'}, ['fc.b', 'tiny.w'])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from . import allocation
from .nm import CONV, LINEAR, nm_skip_reason, parse_pattern
from .params import ParamInfo, resolve_prunable
from .schedule import GMPSchedule
from .validation import (
    check_bool, check_mode, check_prune_params_type, check_ratio, check_sparse_block, check_threshold,
)

__all__ = ["Options", "Targets", "check_options", "resolve_targets"]


@dataclass(frozen=True)
class Options:
    """A pruner's validated arguments."""

    mode: str
    ratio: float
    threshold: float
    prune_params_type: Optional[str]
    skip_params_func: Optional[Callable[[Any], Iterable[str]]]
    local_sparsity: bool
    block: Tuple[int, int]
    schedule: Optional[GMPSchedule]
    pattern: Optional[Tuple[int, int]]
    collectives: Any
    allocation: str  # 'global', 'uniform' or 'erk' (local_sparsity is reported as 'uniform' by the pruner)
    min_density: float


def check_options(
    *,
    mode: str,
    ratio: float = 0.3,
    threshold: float = 0.01,
    prune_params_type: Optional[str] = None,
    skip_params_func: Optional[Callable[[Any], Iterable[str]]] = None,
    local_sparsity: bool = False,
    sparse_block: Sequence[int] = (1, 1),
    schedule: Optional[GMPSchedule] = None,
    sparse_pattern: Optional[str] = None,
    collectives: Any = None,
    sparsity_allocation: Optional[str] = None,
    min_density: float = 0.0,
) -> Options:
    """Every argument checked, alone and in combination; nothing outside them is read."""
    mode = check_mode(mode)
    ratio = check_ratio(ratio)
    threshold = check_threshold(threshold)
    local_sparsity = check_bool("local_sparsity", local_sparsity)
    block = check_sparse_block(sparse_block)
    prune_params_type = check_prune_params_type(prune_params_type)
    if local_sparsity and mode != "ratio":
        raise ValueError("local_sparsity=True needs mode='ratio'; got mode='threshold'")
    method = "global" if sparsity_allocation is None else allocation.check_allocation(sparsity_allocation)
    min_density = allocation.check_min_density(min_density)
    if local_sparsity and sparsity_allocation is not None:
        raise ValueError(f"local_sparsity=True and sparsity_allocation={sparsity_allocation!r} cannot be combined: "
                         "local_sparsity is the seed's per-layer ratio; pass one of them")
    if mode != "ratio" and (sparsity_allocation is not None or min_density):
        raise ValueError(f"sparsity_allocation={sparsity_allocation!r} and min_density={min_density!r} need "
                         "mode='ratio'; got mode='threshold'")
    if collectives is not None and method != "global":
        raise ValueError(f"sparsity_allocation={method!r} needs every layer's shape and is not supported with "
                         "collectives yet; use 'global' (the default) or local_sparsity=True")
    if skip_params_func is not None and not callable(skip_params_func):
        raise TypeError(f"skip_params_func must be callable or None; got {skip_params_func!r}")
    if schedule is not None and (mode != "ratio" or not isinstance(schedule, GMPSchedule)):
        raise TypeError(f"schedule must be a GMPSchedule with mode='ratio'; got {schedule!r}, mode={mode!r}")
    if collectives is not None and not all(callable(getattr(collectives, f, None))
                                           for f in ("allreduce_sum", "allgather")):
        raise TypeError("collectives must provide allreduce_sum() and allgather() (e.g. "
                        f"paddleslim_static.collectives.PaddleCollectives()); got {collectives!r}")
    pattern = None if sparse_pattern is None else parse_pattern(sparse_pattern)
    if pattern is not None and block != (1, 1):
        raise ValueError(f"sparse_pattern={sparse_pattern!r} and sparse_block={block} cannot be combined: "
                         "N:M groups are single weights along the reduction axis")
    return Options(mode, ratio, threshold, prune_params_type, skip_params_func, local_sparsity, block, schedule,
                   pattern, collectives, method, min_density)


@dataclass(frozen=True)
class Targets:
    """The parameters a pruner prunes, in the target's order, and what it leaves alone."""

    names: List[str]
    shapes: Dict[str, Tuple[int, ...]]
    layouts: Dict[str, Any]  # N:M: parameter name -> 'linear' / 'conv'
    skipped: Set[str]
    n_params: int


def resolve_targets(infos: Sequence[ParamInfo], target: Any, options: Options) -> Targets:
    """Which of ``infos`` are pruned: the default rule, ``skip_params_func(target)``, ``prune_params_type``, and with
    N:M only matmul / conv weights with a full group. ValueError when nothing is left."""
    skip_names = _call_skip(options.skip_params_func, target)
    prunable, skipped = resolve_prunable(list(infos), skip_names, options.prune_params_type)
    layouts: Dict[str, Any] = {}
    before_pattern = len(prunable)
    if options.pattern is not None:  # N:M applies to matmul [in, out] and conv [out, in, kh, kw] weights only
        for p in prunable:
            layout = {2: LINEAR, 4: CONV}.get(len(p.shape))
            if layout is not None and nm_skip_reason(p.shape, options.pattern[1], layout) is None:
                layouts[p.name] = layout
        skipped = skipped | {p.name for p in prunable if p.name not in layouts}
        prunable = [p for p in prunable if p.name in layouts]
    if not prunable and before_pattern:  # the pattern is why: no matmul/conv weight has a full N:M group
        n, m = options.pattern  # type: ignore[misc]
        raise ValueError(
            f"nothing to prune: sparse_pattern='{n}:{m}' applies to matmul [in, out] and conv weights with at least "
            f"M={m} weights along the reduction axis, and none of the {before_pattern} prunable parameters is one; "
            "use a smaller M, or no sparse_pattern"
        )
    if not prunable:
        raise ValueError(
            f"nothing to prune: all {len(infos)} parameters are skipped "
            f"(prune_params_type={options.prune_params_type!r}, skip_params_func={options.skip_params_func!r})"
        )
    return Targets([p.name for p in prunable], {p.name: tuple(int(d) for d in p.shape) for p in prunable}, layouts,
                   set(skipped), len(infos))


def _call_skip(func: Optional[Callable[[Any], Iterable[str]]], target: Any) -> Optional[List[str]]:
    """The names ``skip_params_func(target)`` returns, as a list; TypeError naming the function otherwise."""
    if func is None:
        return None
    names = func(target)
    if names is None or isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(
            f"skip_params_func must return an iterable of parameter/layer names; it returned {names!r} "
            f"({type(names).__name__})"
        )
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"skip_params_func must return names (str); it returned {bad[:3]!r} among them")
    return names
