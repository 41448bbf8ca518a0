"""The Program rewriting pass: keep pruned weights at zero through every optimizer update.

Contract of :func:`apply_mask_pass` (PIR and legacy-IR programs):

* **Masks.** For every name in ``param_names`` a persistable, non-trainable bool variable
  ``<param>_mask`` (same shape as the parameter) exists in ``program`` afterwards, and
  ``startup_program`` initialises it to all True. No optimizer ever sees it.
* **Scalars.** Every ``scalars`` entry becomes a persistable scalar variable (float -> float32,
  bool -> bool) initialised by ``startup_program`` to the given value (the pruner keeps its
  threshold(s) there).
* **Mask ops.** If ``program`` has optimizer update ops, then after them (at the end of the global
  block) it holds, per parameter, ``param = param * cast(mask, param.dtype)`` in place (PIR:
  ``pd_op.cast`` + ``pd_op.multiply_``; legacy: ``cast`` + ``elementwise_mul`` with the optimize role, so
  ``clone(for_test=True)`` drops them). A program without optimizer ops (eval/inference) gets none.
* **Idempotent.** Variables and mask ops that already exist are kept; a second run with the same
  arguments returns ``modified=False`` and adds nothing.
* Nothing else changes: the pass never removes or reorders existing ops.

>>> import paddle
>>> from paddleslim_static.mask_pass import apply_mask_pass
>>> paddle.enable_static()
>>> main, startup = paddle.static.Program(), paddle.static.Program()
>>> with paddle.static.program_guard(main, startup):
...     x = paddle.static.data('x', [None, 4], 'float32')
...     loss = paddle.nn.Linear(4, 2)(x).mean()
...     _ = paddle.optimizer.SGD(0.1).minimize(loss)
>>> w = [p.name for p in main.global_block().all_parameters() if len(p.shape) == 2]
>>> r = apply_mask_pass(main, startup, w)
>>> r.modified, r.ops_added > 0, apply_mask_pass(main, startup, w).modified
(True, True, False)
>>> paddle.disable_static()
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import paddle

from .core.naming import MASK_SUFFIX, mask_name
from .programs import (
    all_ops, check_program, has_optimizer_ops, is_pir_program, param_name, program_mode, value_name,
)

__all__ = ["MASK_SUFFIX", "MaskPassResult", "apply_mask_pass", "mask_var_name", "masked_params"]

_CAST_SUFFIX = "_mask@CAST"  # legacy IR: the float copy of the mask


def mask_var_name(param_name: str) -> str:
    """Name of the mask variable of a parameter (the core's one naming rule)."""
    return mask_name(param_name)


@dataclass(frozen=True)
class MaskPassResult:
    """What :func:`apply_mask_pass` did."""

    modified: bool
    mask_vars: Dict[str, str]  # parameter name -> mask variable name (new or pre-existing)
    ops_added: int  # ops added to the main program's global block (variable ops + mask ops)
    vars_added: Tuple[str, ...] = field(default=())  # persistable variables created by this run
    masked: Tuple[str, ...] = field(default=())  # parameters that got a mask op in this run


Scalar = Union[bool, float, int]


def apply_mask_pass(
    program: Any,
    startup_program: Optional[Any],
    param_names: Sequence[str],
    scalars: Optional[Mapping[str, Scalar]] = None,
) -> MaskPassResult:
    """Add mask variables (and optional persistable scalars) and post-update mask ops; see module doc."""
    check_program(program)
    with program_mode(program):
        return _apply(program, startup_program, param_names, scalars)


def _apply(program: Any, startup_program: Optional[Any], param_names: Sequence[str],
           scalars: Optional[Mapping[str, Scalar]]) -> MaskPassResult:
    if startup_program is None:
        startup_program = paddle.static.Program()  # a throwaway: masks then live in the scope only
    check_program(startup_program, "startup_program")
    if is_pir_program(program) != is_pir_program(startup_program):
        raise TypeError("program and startup_program must both be PIR or both legacy-IR programs")
    if isinstance(param_names, (str, bytes)):
        raise TypeError(f"param_names must be a sequence of parameter names; got {param_names!r}")
    scalars = dict(scalars or {})
    for k, v in scalars.items():
        if not isinstance(v, (bool, float, int)):
            raise TypeError(f"scalars[{k!r}] must be a bool or a number; got {v!r}")
    impl = _PirImpl(program) if is_pir_program(program) else _LegacyImpl(program)
    params = impl.params()
    unknown = [n for n in param_names if n not in params]
    if unknown:
        raise ValueError(f"param_names holds names that are not parameters of the program: {unknown[:5]}")

    before = impl.num_ops()
    added: List[str] = []
    masked: List[str] = []
    with paddle.static.program_guard(program, startup_program):
        existing = impl.persistable_vars()
        masks = {}
        for n in param_names:
            mname = mask_var_name(n)
            if mname in existing:
                masks[n] = existing[mname]
            else:
                masks[n] = impl.create_var(mname, params[n].shape, "bool", True)
                added.append(mname)
        for name, value in scalars.items():
            if name not in existing:
                dtype = "bool" if isinstance(value, bool) else "float32"
                impl.create_var(name, [], dtype, bool(value) if dtype == "bool" else float(value))
                added.append(name)
        if has_optimizer_ops(program):
            done = impl.masked_params()
            for n in param_names:
                if n not in done:
                    impl.append_mask_op(params[n], masks[n])
                    masked.append(n)
    ops_added = impl.num_ops() - before
    return MaskPassResult(
        modified=bool(added or masked), mask_vars={n: mask_var_name(n) for n in param_names},
        ops_added=ops_added, vars_added=tuple(added), masked=tuple(masked),
    )


def masked_params(program: Any) -> Set[str]:
    """Parameters of ``program`` that have a mask op."""
    check_program(program)
    impl = _PirImpl(program) if is_pir_program(program) else _LegacyImpl(program)
    return impl.masked_params()


class _PirImpl:
    def __init__(self, program: Any) -> None:
        self.program = program
        self.block = program.global_block()

    def params(self) -> Dict[str, Any]:
        return {param_name(p): p for p in self.block.all_parameters()}

    def num_ops(self) -> int:
        return self.block.num_ops()

    def persistable_vars(self) -> Dict[str, Any]:
        out = {}
        for op in self.block.ops:
            if op.name() == "pd_op.data" and op.result(0).persistable:
                out[op.attrs()["name"]] = op.result(0)
        return out

    def create_var(self, name: str, shape: Sequence[int], dtype: str, value: Scalar) -> Any:
        return paddle.pir.core.create_persistable_value(
            dtype, list(shape), name=name, initializer=paddle.nn.initializer.Constant(value)
        )

    def append_mask_op(self, param: Any, mask: Any) -> None:
        # paddle._C_ops.multiply_ is really in place in static mode (Tensor.multiply_ is not).
        paddle._C_ops.multiply_(param, paddle.cast(mask, param.dtype))

    def masked_params(self) -> Set[str]:
        out = set()
        for op in all_ops(self.program):
            if op.name() != "pd_op.multiply_" or op.num_operands() != 2:
                continue
            p, m = op.operands_source()
            src = m.get_defining_op()
            if src is None or src.name() != "pd_op.cast":
                continue
            pname = value_name(p) if p.is_parameter else None
            if pname is not None and value_name(src.operand_source(0)) == mask_var_name(pname):
                out.add(pname)
        return out


class _LegacyImpl:
    def __init__(self, program: Any) -> None:
        self.program = program
        self.block = program.global_block()

    def params(self) -> Dict[str, Any]:
        return {p.name: p for p in self.block.all_parameters()}

    def num_ops(self) -> int:
        return len(self.block.ops)

    def persistable_vars(self) -> Dict[str, Any]:
        return {n: v for n, v in self.block.vars.items() if v.persistable}

    def create_var(self, name: str, shape: Sequence[int], dtype: str, value: Scalar) -> Any:
        if name in self.block.vars:
            raise ValueError(f"cannot create variable {name!r}: the program already has a non-persistable one")
        return paddle.static.create_global_var(list(shape), value, dtype, persistable=True,  # type: ignore[arg-type]
                                               name=name)

    def append_mask_op(self, param: Any, mask: Any) -> None:
        with self.program._optimized_guard([param, mask]):
            cast = self.block.create_var(name=param.name + _CAST_SUFFIX, dtype=param.dtype, shape=param.shape,
                                         persistable=False)
            self.block.append_op(type="cast", inputs={"X": [mask]}, outputs={"Out": [cast]},
                                 attrs={"in_dtype": mask.dtype, "out_dtype": param.dtype})
            self.block.append_op(type="elementwise_mul", inputs={"X": [param], "Y": [cast]},
                                 outputs={"Out": [param]}, attrs={"axis": -1})

    def masked_params(self) -> Set[str]:
        out = set()
        for op in all_ops(self.program):
            if op.type != "elementwise_mul":
                continue
            x, y, o = op.input("X"), op.input("Y"), op.output("Out")
            if len(x) == 1 and x == o and y == [x[0] + _CAST_SUFFIX]:
                out.add(x[0])
        return out
