"""Scope I/O for the static pruner: writable numpy arrays over scope tensors.

* :func:`tensor_of` / :func:`is_initialized` - find a variable's tensor in a scope;
* :func:`host_view` - a zero-copy (DLPack) numpy view of a CPU tensor, a copy elsewhere;
* :func:`scope_arrays` - writable host arrays for several variables, copies written back on exit (to each
  tensor's own place);
* :func:`write_scope` - create or overwrite a variable (dtype as given: cast first; an existing one keeps its place);
* :func:`device_tensor` - a ``paddle.Tensor`` sharing a scope tensor's memory on its own device (the Paddle engine);
* :func:`own_place` - the place a scope tensor lives on, as the place type ``DenseTensor.set`` takes.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Sequence, Tuple

import numpy as np

__all__ = ["check_scope", "check_place", "tensor_of", "is_initialized", "host_view", "write_scope", "scope_arrays",
           "device_tensor", "own_place", "on_cpu"]


def check_scope(scope: Any, arg: str = "scope") -> Any:
    """``scope`` itself if it is None or a Paddle Scope; TypeError naming the argument otherwise."""
    import paddle

    if scope is None or isinstance(scope, type(paddle.static.global_scope())):
        return scope
    raise TypeError(f"{arg} must be a paddle.static.Scope or None; got {type(scope).__name__} ({scope!r:.60})")


def check_place(place: Any, arg: str = "place") -> Any:
    """``place`` itself if it is a Paddle place; TypeError naming the argument otherwise."""
    import paddle

    kinds = tuple(t for t in (getattr(paddle, n, None) for n in (
        "CPUPlace", "CUDAPlace", "CUDAPinnedPlace", "XPUPlace", "IPUPlace", "CustomPlace")) if isinstance(t, type))
    if isinstance(place, kinds + (paddle.base.core.Place,)):
        return place
    raise TypeError(f"{arg} must be a Paddle place such as paddle.CPUPlace(); got {type(place).__name__} "
                    f"({place!r:.60})")


class _DLPackView:
    """Adapter so ``np.from_dlpack`` takes a scope tensor (writable, shares memory)."""

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        return self.tensor._to_dlpack_versioned()

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU


def tensor_of(scope: Any, name: str) -> Any:
    """The scope's tensor for ``name``; RuntimeError when it is missing or uninitialised."""
    var = scope.find_var(name)
    if var is None or not var.get_tensor()._is_initialized():
        raise RuntimeError(
            f"variable {name!r} is not initialised in the scope: run the startup program "
            "(exe.run(startup_program)) in this scope first"
        )
    return var.get_tensor()


def is_initialized(scope: Any, name: str) -> bool:
    var = scope.find_var(name)
    return var is not None and var.get_tensor()._is_initialized()


def host_view(tensor: Any) -> Tuple[np.ndarray, bool]:
    """(writable numpy array, whether it is a copy to write back): zero-copy for CPU tensors."""
    if tensor._place().is_cpu_place():
        arr = np.from_dlpack(_DLPackView(tensor))
        if arr.flags.writeable:
            return arr, False
    return np.array(tensor), True


def own_place(tensor: Any) -> Any:
    """The place ``tensor`` (a scope DenseTensor) lives on, as the specific place type ``DenseTensor.set`` takes
    (it rejects the generic ``_place()``)."""
    import paddle

    p = tensor._place()
    if p.is_cpu_place():
        return paddle.CPUPlace()
    if p.is_gpu_place():
        return paddle.CUDAPlace(p.gpu_device_id())
    if p.is_cuda_pinned_place():
        return paddle.CUDAPinnedPlace()
    if p.is_xpu_place():
        return paddle.XPUPlace(p.xpu_device_id())
    if p.is_custom_place():
        return paddle.CustomPlace(p.custom_device_type(), p.custom_device_id())
    raise ValueError(f"scope tensor on an unsupported place {p}: write it with a place argument")


def on_cpu(tensor: Any) -> bool:
    """Whether a scope tensor lives in host memory."""
    return bool(tensor._place().is_cpu_place())


def write_scope(scope: Any, name: str, value: np.ndarray, place: Any = None) -> None:
    """Create (if needed) and set the scope variable ``name`` to ``value`` (dtype kept as given). An initialised
    variable stays where it lives; a new one is created on ``place`` (default: the CPU)."""
    import paddle

    t = scope.var(name).get_tensor()
    where = own_place(t) if t._is_initialized() else (paddle.CPUPlace() if place is None else place)
    t.set(np.ascontiguousarray(value), where)


@contextlib.contextmanager
def scope_arrays(scope: Any, names: Sequence[str], place: Any = None, write: bool = True
                 ) -> Iterator[Dict[str, np.ndarray]]:
    """Writable host arrays for scope tensors; copies (tensors off the CPU) are written back on exit to each
    tensor's own place, and only with ``write``. ``place`` is ignored (kept for callers of the old signature)."""
    arrays: Dict[str, np.ndarray] = {}
    copies = []
    for n in names:
        t = tensor_of(scope, n)
        arrays[n], is_copy = host_view(t)
        if is_copy:
            copies.append((t, arrays[n]))
    try:
        yield arrays
    finally:
        if write:
            for t, arr in copies:
                t.set(arr, own_place(t))


def device_tensor(tensor: Any) -> Any:
    """A ``paddle.Tensor`` sharing the memory of a scope tensor, on its device (in-place ops write the scope).
    Call it in dygraph mode."""
    from paddle.utils import dlpack

    return dlpack.from_dlpack(tensor._to_dlpack())
