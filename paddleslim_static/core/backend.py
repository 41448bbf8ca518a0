"""What a mode supplies to the core pruner (:class:`Backend`), and :class:`ArrayBackend`, the backend over plain numpy
arrays (examples, tests, and any framework that can hand out its weights as numpy arrays).

A backend reaches one mode's weights and masks, together with the engine that computes on them (:meth:`Backend.work`:
host numpy arrays and the numpy/C engine, zero-copy on CPU; or the tensors themselves and the engine of Paddle
operations, which keeps them on their device), runs the mode's checks, and owns whatever the mode attaches to its
target (dygraph: buffers and hooks; static: the mask pass and scope variables). See
:mod:`paddleslim_static.core.pruner` for the lifecycle that calls it.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from .engine import HOST, Engine
from .params import ParamInfo

try:  # Python 3.8+: typing.Protocol
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment]

__all__ = ["Backend", "ArrayBackend", "Arrays"]

Arrays = Dict[str, np.ndarray]


class Backend(Protocol):
    """What a mode supplies: its parameters, its weights and masks as host numpy arrays, and its checks."""

    target: Any  # what skip_params_func receives: the model or the program
    apply_on_attach: bool  # threshold mode: zero the pruned weights at construction (static: no forward hook)

    def param_infos(self) -> List[ParamInfo]: ...

    def check_attach(self, names: Sequence[str], pruner: Any) -> None:
        """Raise if masks cannot be attached for ``names`` (name clash, another live pruner...). Changes nothing."""

    def attach(self, names: Sequence[str], pruner: Any) -> None:
        """Create all-True masks for ``names`` and register ``pruner`` as their owner; all or nothing."""

    def open(self, names: Sequence[str]) -> ContextManager[Tuple[Arrays, Arrays]]:
        """Writable host arrays ``(weights, masks)`` (zero-copy where possible), written back on exit."""

    def work(self, names: Sequence[str], write: bool = True) -> ContextManager[Tuple[Engine, Any, Any]]:
        """``(engine, weights, masks)``: the arrays in the engine's kind (host arrays for the numpy/C engine, device
        tensors for the Paddle engine). Host copies are written back on exit only with ``write``. Optional: a backend
        without it is driven through :meth:`open` and the numpy/C engine."""

    def weights_ready(self) -> bool:
        """Whether the weights exist yet (static: the startup program ran in the scope)."""

    def check_step(self) -> None:
        """Raise if pruned weights could come back without an error (e.g. a replaced weight); changes nothing."""

    def masks_reset(self) -> bool:
        """Whether the masks were reset behind the pruner's back since the last call (static: startup re-run)."""

    def store_thresholds(self, threshold: float, thresholds: Mapping[str, float]) -> None: ...

    def state_keys(self, names: Sequence[str]) -> Dict[str, str]:
        """Parameter name -> the key checkpoints use for it (stable across processes and model instances)."""

    def masks_written(self) -> None:
        """Called after the core wrote new masks into the arrays of :meth:`open` (static: pack them to the scope)."""

    def after_apply(self) -> None:
        """Called after masks were applied to the weights (dygraph: forwards need not re-apply them)."""

    def detach(self) -> None:
        """Forget the masks (finalize)."""

    def infos_of(self, target: Any) -> List[ParamInfo]:
        """The parameters of another model/program (``summarize_weights(other)``)."""

    def weights_of(self, target: Any, names: Sequence[str]) -> Arrays:
        """Host arrays of the named parameters of another model/program (read only)."""


class ArrayBackend:
    """A backend over a dict of numpy arrays: the core pruner without Paddle (examples, tests, other frameworks).

    >>> import numpy as np
    >>> from paddleslim_static.core.pruner import Pruner
    >>> w = {"a": np.arange(1, 9, dtype=np.float32).reshape(2, 4)}
    >>> p = Pruner(ArrayBackend(w), mode="threshold", threshold=4.0)
    >>> p.step(); w["a"].tolist()
    [[0.0, 0.0, 0.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    """

    apply_on_attach = False

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.target = weights
        self._weights = dict(weights)
        self._masks: Arrays = {}

    def param_infos(self) -> List[ParamInfo]:
        return [ParamInfo(n, tuple(w.shape), dtype=str(w.dtype)) for n, w in self._weights.items()]

    def check_attach(self, names: Sequence[str], pruner: Any) -> None:
        if self._masks:
            raise ValueError("this ArrayBackend already has a pruner")

    def attach(self, names: Sequence[str], pruner: Any) -> None:
        self._masks = {n: np.ones(self._weights[n].shape, bool) for n in names}

    @contextlib.contextmanager
    def open(self, names: Sequence[str]) -> Iterator[Tuple[Arrays, Arrays]]:
        yield {n: self._weights[n] for n in names}, {n: self._masks[n] for n in names}

    @contextlib.contextmanager
    def work(self, names: Sequence[str], write: bool = True) -> Iterator[Tuple[Engine, Arrays, Arrays]]:
        with self.open(names) as (weights, masks):
            yield HOST, weights, masks

    def weights_ready(self) -> bool:
        return True

    def check_step(self) -> None:
        pass

    def masks_reset(self) -> bool:
        return False

    def store_thresholds(self, threshold: float, thresholds: Mapping[str, float]) -> None:
        pass

    def state_keys(self, names: Sequence[str]) -> Dict[str, str]:
        return {n: n for n in names}

    def masks_written(self) -> None:
        pass

    def after_apply(self) -> None:
        pass

    def detach(self) -> None:
        self._masks = {}

    def infos_of(self, target: Any) -> List[ParamInfo]:
        return [ParamInfo(n, tuple(w.shape), dtype=str(w.dtype)) for n, w in target.items()]

    def weights_of(self, target: Any, names: Sequence[str]) -> Arrays:
        return {n: target[n] for n in names}

    @property
    def masks(self) -> Arrays:
        return dict(self._masks)

