"""Fold masks into the weights for a while: what an export needs, without touching the training state.

Inside ``with folded(program, scope):`` every parameter of ``program`` that has a ``<param>_mask`` variable in
``scope`` holds ``weight * mask`` (bool masks, or bit-packed uint8 masks of ``ceil(n / 8)`` bytes,
:mod:`paddleslim_static.core.packing`), computed as the in-program mask op does (multiply by the mask cast to the
weight's dtype). On exit - normally or by an exception - every folded weight gets back its exact bytes, unless the
block wrote it (``pruner.step()``, ``set_state_dict``, ``exe.run`` of a training program: what the block wrote stays)
or finalized its pruner (``pruner.finalize()`` inside the block is final: the weight keeps ``weight * mask``). Masks,
thresholds and every other variable are never written. Nested blocks are re-entrant (the inner one restores the
outer one's folded weights); a second pruner on the same program and scope is refused inside the block as outside.

>>> import numpy as np, paddle
>>> from paddleslim_static.folding import folded
>>> paddle.enable_static()
>>> main, startup = paddle.static.Program(), paddle.static.Program()
>>> with paddle.static.program_guard(main, startup):
...     _ = paddle.nn.Linear(4, 2, bias_attr=False)(paddle.static.data('x', [None, 4], 'float32'))
>>> w = main.global_block().all_parameters()[0].name
>>> scope = paddle.static.Scope()
>>> with paddle.static.scope_guard(scope):
...     _ = paddle.static.Executor(paddle.CPUPlace()).run(startup)
>>> scope.var(w + '_mask').get_tensor().set(np.packbits(np.arange(8) % 2 == 0), paddle.CPUPlace())
>>> dense = np.array(scope.find_var(w).get_tensor())
>>> with folded(main, scope) as names:
...     inside = np.array(scope.find_var(w).get_tensor())
>>> after = np.array(scope.find_var(w).get_tensor())
>>> names == [w], bool((inside.reshape(-1)[1::2] == 0).all()), after.tobytes() == dense.tobytes()
(True, True, True)
>>> paddle.disable_static()
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Tuple

import numpy as np
import paddle

from .core.naming import mask_name
from .core.packing import is_packed_mask, unpack_mask
from .programs import check_program, parameter_names, program_mode

__all__ = ["folded", "folded_value"]


def folded_value(weight: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``weight * mask`` for a bool mask of the weight's shape or its packed uint8 form (ValueError otherwise)."""
    if mask.dtype == np.bool_ and mask.shape == weight.shape:
        keep = mask
    elif is_packed_mask(mask, weight.shape):
        keep = unpack_mask(mask, weight.shape)
    else:
        raise ValueError(f"mask of {mask.dtype}{list(mask.shape)} fits neither a bool mask of shape "
                         f"{list(weight.shape)} nor its packed uint8 form")
    return weight * keep.astype(weight.dtype)


def _initialized(scope: Any, name: str) -> Any:
    var = scope.find_var(name)
    if var is None or not var.get_tensor()._is_initialized():
        return None
    return var.get_tensor()


def _place_of(tensor: Any) -> Any:
    """The concrete place a ``DenseTensor.set`` takes for the tensor's current place."""
    place = tensor._place()
    if place.is_gpu_place():
        return paddle.CUDAPlace(place.gpu_device_id())
    return paddle.CPUPlace()


@contextlib.contextmanager
def folded(program: Any, scope: Any = None) -> Iterator[List[str]]:
    """Inside the block, masked parameters of ``program`` hold ``weight * mask`` in ``scope`` (default: the global
    scope); yields their names. Every folded weight is restored bit for bit on exit, unless the block wrote it or
    finalized its pruner (see the module docstring)."""
    check_program(program)
    if scope is None:
        scope = paddle.static.global_scope()
    if not hasattr(scope, "find_var"):
        raise TypeError(f"scope must be a paddle.static.Scope; got {type(scope).__name__}")
    with program_mode(program):
        names = parameter_names(program)
    plan: List[Tuple[str, Any, np.ndarray, np.ndarray]] = []  # name, tensor, original, folded
    for n in names:  # compute everything first: a bad mask raises before any weight is written
        mask_t = _initialized(scope, mask_name(n))
        if mask_t is None:
            continue
        weight_t = _initialized(scope, n)
        if weight_t is None:
            raise RuntimeError(f"parameter {n!r} has a mask but no value in the scope: run the startup program")
        original = np.array(weight_t)
        try:
            value = folded_value(original, np.array(mask_t))
        except ValueError as e:
            raise ValueError(f"{mask_name(n)!r}: {e}") from None
        plan.append((n, weight_t, original, value))
    owners = _live_pruners(program, scope)
    done: List[Tuple[str, Any, np.ndarray, np.ndarray]] = []
    try:
        for n, tensor, original, value in plan:
            tensor.set(value, _place_of(tensor))
            done.append((n, tensor, original, value))
        yield [n for n, _, _, _ in plan]
    finally:
        final = {n for p in owners if p.finalized for n in p.prunable_params}
        for n, tensor, original, value in reversed(done):
            if n not in final and np.array(tensor).tobytes() == value.tobytes():  # not written inside the block
                tensor.set(original, _place_of(tensor))


def _live_pruners(program: Any, scope: Any) -> List[Any]:
    """The static pruners attached to ``program`` in ``scope`` (none when paddleslim_static.pruner is not in use)."""
    import sys

    module = sys.modules.get(__name__.rsplit(".", 1)[0] + ".pruner")
    live = getattr(module, "_LIVE", ())
    return [p for p in list(live) if p.program is program and p.scope is scope]
