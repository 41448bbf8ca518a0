"""The pruner logic both modes share; a mode supplies only how to reach its weights and masks.

A subclass implements four hooks:

* ``_param_infos()`` - every parameter of the target as :class:`ParamInfo`;
* ``_create_masks(names)`` - make (all-True) bool masks for the prunable parameters;
* ``_open(names)`` - a context manager yielding ``(weights, masks)``: dicts of writable host numpy
  arrays (zero-copy views on CPU) that are written back, if needed, on exit;
* ``_on_thresholds(threshold, thresholds)`` - optional: persist the thresholds (static: scope vars).
"""
from __future__ import annotations

import abc
import logging
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .core import engine
from .core.params import ParamInfo, resolve_prunable
from .core.schedule import GMPSchedule
from .core.validation import (
    check_bool, check_mode, check_prune_params_type, check_ratio, check_sparse_block, check_threshold,
)

_log = logging.getLogger(__name__)

Arrays = Dict[str, np.ndarray]


class PrunerBase(abc.ABC):
    """Magnitude pruning state and steps, independent of dygraph/static."""

    def __init__(
        self,
        target: Any,
        mode: str,
        ratio: float,
        threshold: float,
        prune_params_type: Optional[str],
        skip_params_func: Optional[Callable[[Any], Iterable[str]]],
        local_sparsity: bool,
        sparse_block: Sequence[int],
    ) -> None:
        self.mode = check_mode(mode)
        self.ratio = check_ratio(ratio)
        self.threshold = float(check_threshold(threshold))
        self.local_sparsity = check_bool("local_sparsity", local_sparsity)
        self.sparse_block: Tuple[int, int] = check_sparse_block(sparse_block)
        self.prune_params_type = check_prune_params_type(prune_params_type)
        if self.local_sparsity and self.mode != "ratio":
            raise ValueError("local_sparsity=True needs mode='ratio'; got mode='threshold'")
        if skip_params_func is not None and not callable(skip_params_func):
            raise TypeError(f"skip_params_func must be callable or None; got {skip_params_func!r}")
        self.thresholds: Dict[str, float] = {}
        self._target = target
        infos = self._param_infos()
        skip_names = None if skip_params_func is None else skip_params_func(target)
        prunable, self.skip_params = resolve_prunable(
            infos, None if skip_names is None else set(skip_names), self.prune_params_type == "conv1x1_only"
        )
        if not prunable:
            raise ValueError(
                f"nothing to prune: all {len(infos)} parameters are skipped "
                f"(prune_params_type={self.prune_params_type!r}, skip_params_func={skip_params_func!r})"
            )
        self._prunable: List[str] = [p.name for p in prunable]
        self._create_masks(self._prunable)
        _log.debug("pruning %d of %d parameters (mode=%s)", len(self._prunable), len(infos), self.mode)

    # -- hooks -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _param_infos(self) -> List[ParamInfo]: ...

    @abc.abstractmethod
    def _create_masks(self, names: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def _open(self, names: Sequence[str]) -> ContextManager[Tuple[Arrays, Arrays]]: ...

    def _on_thresholds(self, threshold: float, thresholds: Mapping[str, float]) -> None:  # noqa: B027
        """Called whenever the thresholds change (optional hook; static pruners write scope variables)."""

    # -- public API --------------------------------------------------------------------------------
    @property
    def prunable_params(self) -> List[str]:
        """Names of the parameters this pruner masks."""
        return list(self._prunable)

    def update_threshold(self) -> None:
        """Ratio mode: recompute the threshold(s) from the current weights."""
        with self._open(self._prunable) as (weights, _):
            self._compute_thresholds(weights)

    def step(self) -> None:
        """Recompute threshold (ratio mode) and masks from the current weights, then apply the masks."""
        with self._open(self._prunable) as (weights, masks):
            sources = None
            if self.mode == "ratio":
                sources = engine.score_sources(weights, self.sparse_block)
                self._compute_thresholds(weights, sources)
            self._refresh(weights, masks, sources)

    def update_params(self) -> None:
        """Re-apply the current masks to the weights (before eval or save)."""
        with self._open(self._prunable) as (weights, masks):
            engine.apply_masks(weights, masks)

    def set_static_masks(self) -> None:
        """Masks from the current zero pattern: fine-tune an already sparse model without changing it."""
        with self._open(self._prunable) as (weights, masks):
            engine.masks_from_nonzero(weights, masks)

    def summarize_weights(self, target: Any = None, ratio: float = 0.1) -> float:
        """|w| below which about ``ratio`` of the prunable weights lie (sorted position ceil(ratio*N)-1).

        ``target`` defaults to this pruner's model/program (its prunable parameters); another one is read with the
        default rule (norm and 1-D parameters skipped)."""
        ratio = check_ratio(ratio, allow_one=True)
        if target is not None and target is not self._target:
            infos = self._infos_of(target)
            prunable, _ = resolve_prunable(infos, None, False)
            return engine.summarize(self._weights_of(target, [p.name for p in prunable]), ratio)
        with self._open(self._prunable) as (weights, _):
            return engine.summarize(weights, ratio)

    def _infos_of(self, target: Any) -> List[ParamInfo]:
        """Hook for summarize_weights on another model/program: its parameters."""
        raise TypeError(f"summarize_weights: target must be this pruner's model or program; got {target!r}")

    def _weights_of(self, target: Any, names: Sequence[str]) -> Arrays:
        """Hook for summarize_weights on another model/program: host arrays of the named parameters."""
        raise TypeError(f"summarize_weights: target must be this pruner's model or program; got {target!r}")

    # -- internals ---------------------------------------------------------------------------------
    def _compute_thresholds(self, weights: Arrays, sources: Optional[engine.Sources] = None) -> None:
        g, per = engine.ratio_thresholds(weights, self.ratio, self.local_sparsity, self.sparse_block, sources)
        if g is not None:
            self.threshold = float(g)
        self.thresholds = {n: float(t) for n, t in per.items()}
        self._on_thresholds(self.threshold, self.thresholds)

    def _refresh(self, weights: Arrays, masks: Arrays, sources: Optional[engine.Sources] = None) -> None:
        engine.fill_masks(weights, masks, self.threshold, self.thresholds, self.sparse_block, apply=True,
                          sources=sources)

    def _masks_from_threshold(self) -> None:
        """Threshold mode: masks reflect the threshold from construction on (weights untouched)."""
        with self._open(self._prunable) as (weights, masks):
            engine.fill_masks(weights, masks, self.threshold, {}, self.sparse_block)
        self._on_thresholds(self.threshold, self.thresholds)


class GMPMixin:
    """Gradual magnitude pruning on top of a ratio-mode pruner (PaddleSlim's GMPUnstructuredPruner)."""

    def _init_gmp(self, schedule: GMPSchedule) -> None:
        """Call after the pruner is built, with a schedule validated before it was built."""
        self._schedule = schedule
        self.target_ratio = self._schedule.target
        self.cur_iteration = self._schedule.start_iteration()
        self.ratio = self._schedule.ratio_at(self.cur_iteration - 1)
        self._recompute_next = self.cur_iteration > 0

    @property
    def schedule(self) -> GMPSchedule:
        return self._schedule

    def step(self) -> None:
        """Advance one iteration: recompute masks when the ratio changes, apply them always."""
        old = self.ratio
        self.ratio = self._schedule.ratio_at(self.cur_iteration)
        with self._open(self._prunable) as (weights, masks):  # type: ignore[attr-defined]
            if self.ratio != old or self._recompute_next:
                sources = engine.score_sources(weights, self.sparse_block)  # type: ignore[attr-defined]
                self._compute_thresholds(weights, sources)  # type: ignore[attr-defined]
                self._refresh(weights, masks, sources)  # type: ignore[attr-defined]
                self._recompute_next = False
            else:
                engine.apply_masks(weights, masks)
        self.cur_iteration += 1
