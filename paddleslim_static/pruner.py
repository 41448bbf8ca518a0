"""Static-graph UnstructuredPruner / GMPUnstructuredPruner (PaddleSlim's static API) on the shared core.

The pruner works on a Program (PIR or legacy IR) and a Scope. At construction it runs the mask pass
(:mod:`paddleslim_static.mask_pass`) on the program, creates the masks and thresholds in the scope, and
from then on reads and writes weights and masks as zero-copy numpy views of the scope tensors.

State kept in the scope (and initialised by the startup program):

* ``<param>_mask`` - bool mask per prunable parameter;
* ``unstructured_pruner.threshold`` (global) or ``<param>_threshold`` (``local_sparsity``) - float32;
* ``unstructured_pruner.masks_ready`` - bool, False after the startup program ran: the masks in the
  scope were reset to all True, so the pruner restores them (threshold mode) on its next
  ``step()`` / ``update_params()`` / ``update_threshold()``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import paddle

from .core import density as _density
from .core.params import ParamInfo, is_conv1x1
from .core.schedule import GMPSchedule
from .mask_pass import MaskPassResult, apply_mask_pass, masked_params
from .programs import check_program, param_infos, parameter_names, program_mode
from .scope_io import host_view, is_initialized, scope_arrays, tensor_of, write_scope
from .pruner_base import GMPMixin, PrunerBase

__all__ = ["UnstructuredPruner", "GMPUnstructuredPruner", "density", "sparsity", "GLOBAL_THRESHOLD_VAR",
           "READY_VAR", "threshold_var_name"]

_log = logging.getLogger(__name__)

GLOBAL_THRESHOLD_VAR = "unstructured_pruner.threshold"
READY_VAR = "unstructured_pruner.masks_ready"


def threshold_var_name(param_name: str) -> str:
    """Scope variable holding a parameter's own threshold (``local_sparsity=True``)."""
    return param_name + "_threshold"


def _scope(scope: Any) -> Any:
    return paddle.static.global_scope() if scope is None else scope


def _param_arrays(program: Any, scope: Any, only: Optional[Callable[[Sequence[int]], bool]] = None):
    scope = _scope(scope)
    for info in param_infos(check_program(program)):
        if only is None or only(info.shape):
            yield host_view(tensor_of(scope, info.name))[0]


def density(program: Any, scope: Any = None) -> float:
    """Nonzero / all elements over every parameter of ``program`` (BatchNorm statistics included),
    read from ``scope`` (default: the global scope)."""
    return _density(_param_arrays(program, scope))


def sparsity(program: Any, scope: Any = None) -> float:
    """1 - density(program, scope)."""
    return 1.0 - density(program, scope)


class UnstructuredPruner(PrunerBase):
    """Unstructured magnitude pruning of a static program (PaddleSlim's static API).

    Construct it after ``optimizer.minimize(loss)``; call ``step()`` after ``exe.run(main, ...)``.

    >>> import numpy as np, paddle
    >>> from paddleslim_static import UnstructuredPruner
    >>> paddle.enable_static()
    >>> main, startup = paddle.static.Program(), paddle.static.Program()
    >>> with paddle.static.program_guard(main, startup):
    ...     x = paddle.static.data('x', [None, 8], 'float32')
    ...     loss = paddle.nn.Linear(8, 8)(x).mean()
    ...     _ = paddle.optimizer.SGD(0.1).minimize(loss)
    >>> scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
    >>> with paddle.static.scope_guard(scope):
    ...     _ = exe.run(startup)
    ...     pruner = UnstructuredPruner(main, 'ratio', ratio=0.5, scope=scope, startup_program=startup)
    ...     _ = exe.run(main, feed={'x': np.ones((2, 8), 'float32')}, fetch_list=[loss])
    ...     pruner.step()
    >>> sorted(UnstructuredPruner.sparse_by_layer(main, scope).values())  # bias, weight
    [0.5, 1.0]
    >>> paddle.disable_static()
    """

    def __init__(
        self,
        program: Any,
        mode: str,
        ratio: float = 0.3,
        threshold: float = 0.01,
        scope: Any = None,
        place: Any = None,
        prune_params_type: Optional[str] = None,
        skip_params_func: Optional[Callable[[Any], Iterable[str]]] = None,
        local_sparsity: bool = False,
        sparse_block: Sequence[int] = (1, 1),
        *,
        startup_program: Any = None,
    ) -> None:
        self.program = check_program(program)
        if startup_program is None:
            with program_mode(self.program):
                startup_program = paddle.static.default_startup_program()
        self.startup_program = check_program(startup_program, "startup_program")
        self.scope = _scope(scope)
        self.place = paddle.CPUPlace() if place is None else place
        self.pass_result: Optional[MaskPassResult] = None
        super().__init__(program, mode, ratio, threshold, prune_params_type, skip_params_func,
                         local_sparsity, sparse_block)
        if self._weights_ready():
            if self.mode == "threshold":
                self._masks_from_threshold()
                self.update_params()  # no forward hook in a program: the next exe.run must see them
            self._set_ready(True)
        else:
            self._set_ready(False)
            _log.info("weights not initialised in the scope yet: masks are computed on the first "
                      "step()/update_params() after the startup program ran")

    # -- hooks for PrunerBase ----------------------------------------------------------------------
    def _param_infos(self) -> List[ParamInfo]:
        return param_infos(self.program)

    def _threshold_vars(self, names: Sequence[str]) -> Dict[str, str]:
        """Parameter name (or '' for the global one) -> threshold variable name."""
        if self.local_sparsity:
            return {n: threshold_var_name(n) for n in names}
        return {"": GLOBAL_THRESHOLD_VAR}

    def _create_masks(self, names: Sequence[str]) -> None:
        tvars = self._threshold_vars(names)
        scalars: Dict[str, Any] = {v: float(self.threshold) for v in tvars.values()}
        scalars[READY_VAR] = False
        self.pass_result = apply_mask_pass(self.program, self.startup_program, names, scalars)
        if not masked_params(self.program):
            _log.warning(
                "the program has no optimizer update ops, so no mask ops were added: fine for an eval or "
                "inference program; for training, construct the pruner after optimizer.minimize(loss)"
            )
        self._mask_of = dict(self.pass_result.mask_vars)
        self._tvars = tvars
        shapes = {p.name: p.shape for p in self._param_infos()}
        for n in names:
            if not is_initialized(self.scope, self._mask_of[n]):
                write_scope(self.scope, self._mask_of[n], np.ones(shapes[n], dtype=bool), self.place)
        for v in tvars.values():
            if not is_initialized(self.scope, v):
                write_scope(self.scope, v, np.array(self.threshold, dtype=np.float32), self.place)

    @contextlib.contextmanager
    def _open(self, names: Sequence[str]):
        if not self._ready():
            self._restore_masks()
        mask_names = [self._mask_of[n] for n in names]
        with scope_arrays(self.scope, list(names) + mask_names, self.place) as arrays:
            yield ({n: arrays[n] for n in names}, {n: arrays[self._mask_of[n]] for n in names})

    def _on_thresholds(self, threshold: float, thresholds: Mapping[str, float]) -> None:
        for key, var in self._tvars.items():
            value = thresholds.get(key, threshold) if key else threshold
            write_scope(self.scope, var, np.array(value, dtype=np.float32), self.place)

    # -- scope state -------------------------------------------------------------------------------
    def _weights_ready(self) -> bool:
        return all(is_initialized(self.scope, n) for n in self._prunable)

    def _ready(self) -> bool:
        return is_initialized(self.scope, READY_VAR) and bool(np.array(tensor_of(self.scope, READY_VAR)))

    def _set_ready(self, value: bool) -> None:
        write_scope(self.scope, READY_VAR, np.array(value, dtype=bool), self.place)

    def _restore_masks(self) -> None:
        """The startup program ran after construction: masks are all True, thresholds at their initial
        values. Threshold mode recomputes its masks from the (new) weights; thresholds are rewritten."""
        for n in self._prunable:
            tensor_of(self.scope, n)  # RuntimeError naming the variable if the startup never ran
        self._set_ready(True)  # first: _masks_from_threshold re-enters _open
        if self.mode == "threshold":
            self._masks_from_threshold()
            self.update_params()
        else:
            self._on_thresholds(self.threshold, self.thresholds)
            self._masks_lost()

    def _masks_lost(self) -> None:
        """Hook: the masks in the scope were reset to all True."""

    # -- API ---------------------------------------------------------------------------------------
    @property
    def masks(self) -> Dict[str, str]:
        """Parameter name -> name of its bool mask variable in the program and the scope."""
        return dict(self._mask_of)

    def mask_arrays(self) -> Dict[str, np.ndarray]:
        """Parameter name -> a copy of its current mask (bool numpy array)."""
        with self._open(self._prunable) as (_, masks):
            return {n: m.copy() for n, m in masks.items()}

    def _infos_of(self, target: Any) -> List[ParamInfo]:
        return param_infos(check_program(target))

    def _weights_of(self, target: Any, names: Sequence[str]) -> Dict[str, np.ndarray]:
        return {n: host_view(tensor_of(self.scope, n))[0] for n in names}  # read-only use: no write-back

    def summarize_weights(self, program: Any = None, ratio: float = 0.1) -> float:
        """|w| below which about ``ratio`` of the prunable weights of ``program`` (default: this pruner's, read from
        its scope) lie."""
        return super().summarize_weights(program, ratio)

    @staticmethod
    def total_sparse(program: Any, scope: Any = None) -> float:
        """Density (1 - sparsity) of all parameters of ``program``, as PaddleSlim's seed documents."""
        return density(program, scope)

    @staticmethod
    def total_sparse_conv1x1(program: Any, scope: Any = None) -> float:
        """Density of the 4-D 1x1 convolution weights of ``program``."""
        return _density(_param_arrays(program, scope, is_conv1x1))

    @staticmethod
    def sparse_by_layer(program: Any, scope: Any = None) -> Dict[str, float]:
        """Parameter name -> density."""
        scope = _scope(scope)
        return {n: _density([host_view(tensor_of(scope, n))[0]]) for n in parameter_names(program)}


class GMPUnstructuredPruner(GMPMixin, UnstructuredPruner):
    """Gradual magnitude pruning of a static program: the ratio follows PaddleSlim's cubic schedule."""

    def __init__(
        self,
        program: Any,
        ratio: float = 0.55,
        scope: Any = None,
        place: Any = None,
        prune_params_type: Optional[str] = None,
        skip_params_func: Optional[Callable[[Any], Iterable[str]]] = None,
        local_sparsity: bool = False,
        sparse_block: Sequence[int] = (1, 1),
        configs: Optional[dict] = None,
        *,
        startup_program: Any = None,
    ) -> None:
        schedule = GMPSchedule.from_configs(configs, ratio)
        super().__init__(program, "ratio", ratio, 0.01, scope, place, prune_params_type, skip_params_func,
                         local_sparsity, sparse_block, startup_program=startup_program)
        self._init_gmp(schedule)

    def _masks_lost(self) -> None:
        if hasattr(self, "_schedule") and self.cur_iteration > self._schedule.start_iteration():
            self._recompute_next = True  # masks computed by earlier steps were reset
