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

The pruner is the core's :class:`~paddleslim_static.core.pruner.Pruner` over a :class:`ProgramBackend`.
"""
from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import paddle

from .core.density import density_by_name, density_of
from .core.params import ParamInfo, is_conv1x1
from .core.packing import pack_mask, unpack_mask
from .core.pruner import Pruner
from .core.schedule import GMPSchedule
from .core.validation import DEFAULT_RATIO, DEFAULT_THRESHOLD, check_positional_trap
from .mask_pass import MaskPassResult, apply_mask_pass, unmasked_params
from .mask_repr import adopt_representation
from .programs import check_program, is_pir_program, param_infos, program_mode
from .core.engine import HOST, Engine
from .device_engine import PADDLE, pack_bits, unpack_bits, use_device_engine
from .scope_io import (
    check_place, check_scope, device_tensor, host_view, is_initialized, on_cpu, own_place, scope_arrays, tensor_of,
    write_scope,
)

__all__ = ["UnstructuredPruner", "GMPUnstructuredPruner", "density", "sparsity", "GLOBAL_THRESHOLD_VAR",
           "READY_VAR", "threshold_var_name"]

_log = logging.getLogger(__name__)

GLOBAL_THRESHOLD_VAR = "unstructured_pruner.threshold"
READY_VAR = "unstructured_pruner.masks_ready"


def threshold_var_name(param_name: str) -> str:
    """Scope variable holding a parameter's own threshold (``local_sparsity=True``)."""
    return param_name + "_threshold"


def _per_layer(local_sparsity: Any, sparsity_allocation: Any) -> bool:
    """Whether the pruner keeps one threshold per parameter (and so one scope variable each)."""
    per_layer = isinstance(sparsity_allocation, str) and sparsity_allocation in ("uniform", "erk")
    return local_sparsity is True or per_layer


def _scope(scope: Any) -> Any:
    return paddle.static.global_scope() if scope is None else scope


def _params(program: Any, scope: Any):
    """(name, shape, host view) of every parameter of ``program`` in ``scope`` (BatchNorm statistics included), read
    lazily (what the core's density queries take)."""
    scope = _scope(scope)
    for info in param_infos(check_program(program)):
        yield info.name, info.shape, host_view(tensor_of(scope, info.name))[0]


def density(program: Any, scope: Any = None) -> float:
    """Nonzero / all elements over every parameter of ``program`` (BatchNorm statistics included),
    read from ``scope`` (default: the global scope)."""
    return density_of(_params(program, scope))


def sparsity(program: Any, scope: Any = None) -> float:
    """1 - density(program, scope)."""
    return 1.0 - density(program, scope)


class ProgramBackend:
    """The static backend of the core pruner: a program (rewritten by the mask pass), its startup program, a scope."""

    apply_on_attach = True  # no forward hook in a program: the next exe.run must already see the zeros

    def __init__(self, program: Any, startup_program: Any, scope: Any, place: Any, local: bool,
                 packed: bool = True) -> None:
        self.target = program
        self.packed = packed
        self._host: Dict[str, np.ndarray] = {}  # packed: the bool masks the core works on
        self._device_masks: Optional[Dict[str, Any]] = None  # packed, Paddle engine: bool masks of the last work()
        self._synced: Dict[str, np.ndarray] = {}  # packed: the bits last read from / written to the scope
        self.program = program
        self.startup_program = startup_program
        self.scope = scope
        self.place = place
        self._local = local
        self._pruner: Any = None
        self.mask_of: Dict[str, str] = {}
        self.tvars: Dict[str, str] = {}
        self.pass_result: Optional[MaskPassResult] = None
        self._checked_ops = -1  # op count of the program at the last check_step() that found every update masked

    # -- protocol ----------------------------------------------------------------------------------
    def param_infos(self) -> List[ParamInfo]:
        return param_infos(self.program)

    def check_attach(self, names: Sequence[str], pruner: Any) -> None:
        other = next((q for q in _LIVE if q.program is self.program and q.scope is self.scope), None)
        if other is not None:  # they would share the mask and threshold variables of this scope
            raise ValueError(
                f"this program is already pruned in this scope by {type(other).__name__} at 0x{id(other):x} "
                f"(mode={other.mode!r}); call its finalize() before building another pruner on it, or use another "
                "scope"
            )

    def attach(self, names: Sequence[str], pruner: Any) -> None:
        self.tvars = {n: threshold_var_name(n) for n in names} if self._local else {"": GLOBAL_THRESHOLD_VAR}
        scalars: Dict[str, Any] = {v: float(pruner.threshold) for v in self.tvars.values()}
        scalars[READY_VAR] = False
        self.pass_result = apply_mask_pass(self.program, self.startup_program, names, scalars, packed=self.packed)
        self.mask_of = dict(self.pass_result.mask_vars)
        shapes = {p.name: p.shape for p in self.param_infos()}
        self._mask_shapes = {n: tuple(shapes[n]) for n in names}  # mask_repr: what each mask variable must hold
        for n in names:
            ones = np.ones(shapes[n], dtype=bool)
            if self.packed:
                self._host[n] = ones
                self._synced[n] = pack_mask(ones)
            if not is_initialized(self.scope, self.mask_of[n]):
                write_scope(self.scope, self.mask_of[n], self._synced[n] if self.packed else ones, self._new_place())
        for v in self.tvars.values():
            if not is_initialized(self.scope, v):
                write_scope(self.scope, v, np.array(pruner.threshold, dtype=np.float32), self._new_place())
        self._pruner = pruner
        self._set_ready(self.weights_ready())
        _LIVE.add(pruner)
        if not self.weights_ready():
            _log.info("weights not initialised in the scope yet: masks are computed on the first "
                      "step()/update_params() after the startup program ran")

    @contextlib.contextmanager
    def open(self, names: Sequence[str], write: bool = True
             ) -> Iterator[Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]]:
        """Host arrays of the weights and bool masks (copies off the CPU, written back to each tensor's own place
        only with ``write``)."""
        adopt_representation(self.scope, self.mask_of, self._mask_shapes, self.packed)  # after a paddle.static.load
        self._device_masks = None
        mask_names = [self.mask_of[n] for n in names]
        with scope_arrays(self.scope, list(names) + mask_names, write=write) as arrays:
            if not self.packed:
                yield ({n: arrays[n] for n in names}, {n: arrays[self.mask_of[n]] for n in names})
                return
            for n in names:  # the scope's bits changed behind our back (startup re-run, paddle.static.load)
                bits = arrays[self.mask_of[n]]
                if not np.array_equal(bits, self._synced[n]):
                    unpack_mask(bits, self._host[n].shape, out=self._host[n])
                    self._synced[n] = bits.copy()
            yield ({n: arrays[n] for n in names}, {n: self._host[n] for n in names})

    @contextlib.contextmanager
    def work(self, names: Sequence[str], write: bool = True) -> Iterator[Tuple[Engine, Dict[str, Any], Dict[str, Any]]]:
        """(engine, weights, masks): scope tensors off the CPU (or ``PADDLESLIM_ENGINE=paddle``) go to the Paddle
        engine as tensors sharing the scope's memory (packed masks unpacked on the device); the rest to the numpy/C
        engine as host arrays."""
        adopt_representation(self.scope, self.mask_of, self._mask_shapes, self.packed)  # after a paddle.static.load
        tensors = [tensor_of(self.scope, n) for n in names]
        if not use_device_engine(not tensors or on_cpu(tensors[0])):  # the first decides (either engine is correct)
            with self.open(names, write=write) as (weights, masks):
                yield HOST, weights, masks
            return
        with _eager():
            weights = {n: device_tensor(t) for n, t in zip(names, tensors)}
            stored = {n: device_tensor(tensor_of(self.scope, self.mask_of[n])) for n in names}
            if self.packed:
                shapes = {n: tuple(weights[n].shape) for n in names}
                masks = {n: unpack_bits(stored[n], shapes[n]) for n in names}
                self._device_masks = masks
            else:
                masks = stored
            yield PADDLE, weights, masks

    def masks_written(self) -> None:
        if not self.packed:
            return
        if self._device_masks is not None:  # the Paddle engine wrote them: pack on the device, into the scope
            with _eager():
                for n, mask in self._device_masks.items():
                    pack_bits(mask, out=device_tensor(tensor_of(self.scope, self.mask_of[n])))
            self._device_masks = None
            return
        names = list(self._host)
        with scope_arrays(self.scope, [self.mask_of[n] for n in names]) as arrays:
            for n in names:
                bits = pack_mask(self._host[n])
                arrays[self.mask_of[n]][...] = bits
                self._synced[n] = bits

    def check_step(self) -> None:
        # walking the program costs ~10 ms on MobileNetV1: re-check only when ops were added or removed since the
        # last clean check (appending optimizer ops after the pruner is what this catches)
        n_ops = _num_ops(self.program)
        if n_ops == self._checked_ops:
            return
        unmasked = unmasked_params(self.program, list(self.mask_of))
        if not unmasked:
            self._checked_ops = n_ops
        if unmasked:
            raise RuntimeError(
                f"the program updates {len(unmasked)} pruned parameters without mask ops (e.g. {unmasked[0]!r}): the "
                "optimizer ops were added after the pruner was built, so pruned weights would come back. Build the "
                "pruner after optimizer.minimize(loss) (finalize() this one first)"
            )

    def masks_reset(self) -> bool:
        if is_initialized(self.scope, READY_VAR) and bool(np.array(tensor_of(self.scope, READY_VAR))):
            return False
        for n in self.mask_of:
            tensor_of(self.scope, n)  # RuntimeError naming the variable if the startup never ran
        self._set_ready(True)
        return True

    def store_thresholds(self, threshold: float, thresholds: Mapping[str, float]) -> None:
        for key, var in self.tvars.items():
            value = thresholds.get(key, threshold) if key else threshold
            write_scope(self.scope, var, np.array(value, dtype=np.float32), self._new_place())

    def state_keys(self, names: Sequence[str]) -> Dict[str, str]:
        return {n: n for n in names}

    def after_apply(self) -> None:
        pass

    def detach(self) -> None:
        _LIVE.discard(self._pruner)

    # -- helpers -----------------------------------------------------------------------------------
    def weights_ready(self) -> bool:
        return all(is_initialized(self.scope, n) for n in self.mask_of)

    def _set_ready(self, value: bool) -> None:
        write_scope(self.scope, READY_VAR, np.array(value, dtype=bool), self._new_place())

    def _new_place(self) -> Any:
        """Where a variable the pruner creates goes: the ``place`` given, else where the weights live (the CPU
        before the startup program ran). Existing variables are always written where they live."""
        if self.place is not None:
            return self.place
        first = next((n for n in self.mask_of if is_initialized(self.scope, n)), None)
        return own_place(tensor_of(self.scope, first)) if first is not None else paddle.CPUPlace()

    def infos_of(self, target: Any) -> List[ParamInfo]:
        return param_infos(check_program(target))

    def weights_of(self, target: Any, names: Sequence[str]) -> Dict[str, np.ndarray]:
        return {n: host_view(tensor_of(self.scope, n))[0] for n in names}  # read-only use: no write-back


_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _eager() -> Any:
    """Dygraph mode for the Paddle engine's operations (a no-op when already in it)."""
    return contextlib.nullcontext() if paddle.in_dynamic_mode() else paddle.base.dygraph.guard()


def _num_ops(program: Any) -> int:
    """Ops in the program's global block (where minimize() appends the updates and the pass its mask ops)."""
    block = program.global_block()
    return block.num_ops() if is_pir_program(program) else len(block.ops)


def _startup_of(program: Any, startup_program: Any) -> Any:
    if startup_program is None:
        with program_mode(program):
            startup_program = paddle.static.default_startup_program()
    return check_program(startup_program, "startup_program")


class UnstructuredPruner(Pruner):
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
        ratio: float = DEFAULT_RATIO,
        threshold: float = DEFAULT_THRESHOLD,
        scope: Any = None,
        place: Any = None,
        prune_params_type: Optional[str] = None,
        skip_params_func: Optional[Callable[[Any], Iterable[str]]] = None,
        local_sparsity: bool = False,
        sparse_block: Sequence[int] = (1, 1),
        *,
        startup_program: Any = None,
        packed_masks: bool = True,
        sparse_pattern: Optional[str] = None,
        collectives: Any = None,
        sparsity_allocation: Optional[str] = None,
        min_density: float = 0.0,
        schedule: Optional[GMPSchedule] = None,
    ) -> None:
        """``schedule``: a GMP ratio schedule (what :class:`GMPUnstructuredPruner` passes); needs mode='ratio'."""
        check_positional_trap(mode, ratio, threshold, "(program, mode, ratio, threshold, ...)")
        super().__init__(
            self._bind(program, startup_program, scope, place, _per_layer(local_sparsity, sparsity_allocation),
                       packed_masks), mode=mode, ratio=ratio,
            threshold=threshold, prune_params_type=prune_params_type, skip_params_func=skip_params_func,
            local_sparsity=local_sparsity, sparse_block=sparse_block, sparse_pattern=sparse_pattern,
            collectives=collectives,
            sparsity_allocation=sparsity_allocation, min_density=min_density, schedule=schedule,
        )

    def _bind(self, program: Any, startup_program: Any, scope: Any, place: Any, local: Any,
              packed: Any) -> ProgramBackend:
        """Check the program, startup program, scope and place (nothing is changed yet) and make the backend."""
        self.program = check_program(program)
        self.startup_program = _startup_of(self.program, startup_program)
        self.scope = _scope(check_scope(scope))
        self.place = None if place is None else check_place(place)  # None: every tensor stays where it lives
        if not isinstance(packed, bool):
            raise TypeError(f"packed_masks must be a bool; got {packed!r}")
        self._program_backend = ProgramBackend(self.program, self.startup_program, self.scope, self.place,
                                               local is True, packed)
        return self._program_backend

    @property
    def pass_result(self) -> Optional[MaskPassResult]:
        """What the mask pass did to the program at construction."""
        return self._program_backend.pass_result

    @property
    def masks(self) -> Dict[str, str]:
        """Parameter name -> name of its mask variable in the program and the scope (bit-packed uint8 unless the
        pruner was built with ``packed_masks=False``: then bool of the parameter's shape). :meth:`mask_arrays` gives
        the bool masks."""
        return dict(self._program_backend.mask_of)

    def mask_arrays(self) -> Dict[str, np.ndarray]:
        """Parameter name -> a copy of its current mask (bool numpy array)."""
        self._check_live()
        self._masks_reset()
        with self._backend.open(self._prunable, write=False) as (_, masks):
            return {n: m.copy() for n, m in masks.items()}

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
        return density_of(_params(program, scope), is_conv1x1)

    @staticmethod
    def sparse_by_layer(program: Any, scope: Any = None) -> Dict[str, float]:
        """Parameter name -> density."""
        return density_by_name(_params(program, scope))


class GMPUnstructuredPruner(UnstructuredPruner):
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
        packed_masks: bool = True,
        sparse_pattern: Optional[str] = None,
        collectives: Any = None,
        sparsity_allocation: Optional[str] = None,
        min_density: float = 0.0,
    ) -> None:
        super().__init__(  # the UnstructuredPruner given a schedule (validated before the program is touched)
            program, "ratio", ratio=ratio, scope=scope, place=place, prune_params_type=prune_params_type,
            skip_params_func=skip_params_func, local_sparsity=local_sparsity, sparse_block=sparse_block,
            startup_program=startup_program, packed_masks=packed_masks, sparse_pattern=sparse_pattern,
            collectives=collectives, sparsity_allocation=sparsity_allocation, min_density=min_density,
            schedule=GMPSchedule.from_configs(configs, ratio),
        )
