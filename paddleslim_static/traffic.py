"""A meter of the data that crosses between Paddle tensors and host memory (a diagnostic for benchmarks and tests).

Inside :func:`host_traffic`, every way the pruners reach host memory is counted: ``Tensor.numpy()`` (and so
``float(t)``, ``bool(t)``, ``np.asarray(t)``), ``Tensor.item()``, ``Tensor.cpu()``, ``Tensor.set_value()``,
``paddle.to_tensor()``, host views through ``np.from_dlpack`` (zero-copy on the CPU, a copy or an error off it) and
the static scope's ``DenseTensor.set`` / ``np.array(DenseTensor)``. Each event records its kind, its bytes and its
shape. On a GPU these are the host<->device copies; on the CPU, the same calls are where a host-array engine would
touch the weights, so the count tells whether a run stayed on the device. Not thread-safe (it patches functions
for the duration).

>>> import paddle
>>> x = paddle.ones([4, 4])
>>> with host_traffic() as meter:
...     _ = x.numpy(); y = x * 2
>>> meter.bytes, [e.kind for e in meter.events]
(64, ['to_host'])
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Tuple

import numpy as np
import paddle

__all__ = ["Event", "Meter", "host_traffic"]


@dataclass(frozen=True)
class Event:
    kind: str  # 'to_host', 'to_device', 'host_view'
    nbytes: int
    shape: Tuple[int, ...]
    via: str


@dataclass
class Meter:
    events: List[Event] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(e.nbytes for e in self.events)

    def of(self, kind: str) -> List[Event]:
        return [e for e in self.events if e.kind == kind]

    def largest(self) -> int:
        """Bytes of the largest single transfer (0 if none)."""
        return max((e.nbytes for e in self.events), default=0)


def _nbytes(x: Any) -> Tuple[int, Tuple[int, ...]]:
    a = np.asarray(x) if not isinstance(x, np.ndarray) else x
    return int(a.nbytes), tuple(a.shape)


@contextlib.contextmanager
def host_traffic() -> Iterator[Meter]:
    """Count the host<->tensor transfers made inside the block (see the module docstring)."""
    meter = Meter()
    T = paddle.Tensor
    DT = paddle.base.libpaddle.DenseTensor
    saved = [(T, "numpy", T.numpy), (T, "item", T.item), (T, "cpu", T.cpu), (T, "set_value", T.set_value),
             (paddle, "to_tensor", paddle.to_tensor), (np, "from_dlpack", np.from_dlpack), (DT, "set", DT.set),
             (DT, "__array__", DT.__array__)]
    depth = [0]  # a counted call that calls another (item -> numpy) is counted once

    def note(kind: str, via: str, data: Any) -> None:
        if depth[0] == 1:
            n, shape = _nbytes(data)
            meter.events.append(Event(kind, n, shape, via))

    def wrap(owner: Any, name: str, real: Any, kind: str, data_of) -> None:
        def spy(*args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            try:
                out = real(*args, **kwargs)
                note(kind, name, data_of(args, kwargs, out))
                return out
            finally:
                depth[0] -= 1
        setattr(owner, name, spy)

    result = lambda a, k, out: out  # noqa: E731
    first_arg = lambda a, k, out: a[1] if len(a) > 1 else k.get("value", k.get("array"))  # noqa: E731
    wrap(T, "numpy", T.numpy, "to_host", result)
    wrap(T, "item", T.item, "to_host", result)
    wrap(T, "cpu", T.cpu, "to_host", lambda a, k, out: np.zeros(int(np.prod(out.shape)), _np_dtype(out)))
    wrap(T, "set_value", T.set_value, "to_device", first_arg)
    wrap(paddle, "to_tensor", paddle.to_tensor,
         "to_device", lambda a, k, out: np.zeros(int(np.prod(out.shape)), _np_dtype(out)))
    wrap(np, "from_dlpack", np.from_dlpack, "host_view", result)
    wrap(DT, "set", DT.set, "to_device", first_arg)
    wrap(DT, "__array__", DT.__array__, "to_host", result)
    try:
        yield meter
    finally:
        for owner, name, real in saved:
            setattr(owner, name, real)


def _np_dtype(t: Any) -> Any:
    """A numpy dtype of the tensor's width (bfloat16 as uint16) for byte counts."""
    size = {paddle.bool: 1, paddle.uint8: 1, paddle.int8: 1, paddle.float16: 2, paddle.bfloat16: 2,
            paddle.int16: 2, paddle.float32: 4, paddle.int32: 4, paddle.float64: 8, paddle.int64: 8}.get(t.dtype, 4)
    return np.dtype(f"u{size}")
