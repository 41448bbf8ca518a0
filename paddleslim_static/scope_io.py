"""Scope I/O for the static pruner: writable numpy arrays over scope tensors.

* :func:`tensor_of` / :func:`is_initialized` - find a variable's tensor in a scope;
* :func:`host_view` - a zero-copy (DLPack) numpy view of a CPU tensor, a copy elsewhere;
* :func:`scope_arrays` - writable host arrays for several variables, copies written back on exit;
* :func:`write_scope` - create or overwrite a variable (dtype as given: cast first).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Sequence, Tuple

import numpy as np

__all__ = ["check_scope", "check_place", "tensor_of", "is_initialized", "host_view", "write_scope", "scope_arrays"]


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


def write_scope(scope: Any, name: str, value: np.ndarray, place: Any) -> None:
    """Create (if needed) and set the scope variable ``name`` to ``value`` (dtype kept as given)."""
    scope.var(name).get_tensor().set(np.ascontiguousarray(value), place)


@contextlib.contextmanager
def scope_arrays(scope: Any, names: Sequence[str], place: Any) -> Iterator[Dict[str, np.ndarray]]:
    """Writable host arrays for scope tensors; copies (non-CPU tensors) are written back on exit."""
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
        for t, arr in copies:
            t.set(arr, place if place is not None else t._place())
