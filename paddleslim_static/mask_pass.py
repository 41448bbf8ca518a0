"""The Program rewriting pass: keep pruned weights at zero after every parameter update.

Contract of :func:`apply_mask_pass` (PIR and legacy-IR programs):

* **Masks.** For every name in ``param_names`` a persistable, non-trainable variable ``<param>_mask`` exists in
  ``program`` afterwards and ``startup_program`` initialises it to "all kept": a bool variable of the parameter's
  shape, or with ``packed=True`` a uint8 variable of ``ceil(n / 8)`` bytes holding ``np.packbits`` of the
  flattened mask (big-endian bit order, :mod:`paddleslim_static.core.packing`) - 1/32 of float32 weights' bytes
  in a checkpoint instead of 1/4. No optimizer ever sees a mask.
* **Scalars.** Every ``scalars`` entry becomes a persistable scalar variable (bool -> bool, numbers -> float32)
  initialised by ``startup_program`` to the given value (the pruner keeps its threshold(s) there).
* **Mask ops.** Parameter updates are found structurally (:func:`paddleslim_static.programs.param_writes`): any op
  that writes a parameter - every built-in optimizer, a user's own ``paddle.assign(p - lr * g, p)``, an op in a
  control-flow sub-block (attributed to the control-flow op that owns it). For every parameter of ``param_names``
  whose last writer is not followed by its mask op, the pass appends at the end of the global block
  ``param = param * cast(mask, param.dtype)`` in place (PIR: ``pd_op.cast`` + ``pd_op.multiply_``; legacy:
  ``cast`` + ``elementwise_mul`` with the optimize role, so ``clone(for_test=True)`` drops them). Packed masks
  are unpacked by one ``gather`` of a shared [256, 8] bit table (built in the program from ``arange``) indexed by
  the bytes, then reshaped (and sliced when n % 8 != 0). A parameter nothing writes (eval and
  inference programs, frozen weights) gets no mask op. Writes inside a loop body are masked once, after the loop.
* **Idempotent.** A second run with the same arguments returns ``modified=False`` and adds nothing.
* **Atomic.** Every argument is checked before anything is created; a call that raises leaves ``program`` and
  ``startup_program`` as they were. The pass never removes or reorders existing ops.

:func:`unmasked_params` tells which parameters some op writes after their last mask op: a pruner built before
``optimizer.minimize()``, or optimizer ops appended later.

>>> import paddle
>>> from paddleslim_static.mask_pass import apply_mask_pass, unmasked_params
>>> paddle.enable_static()
>>> main, startup = paddle.static.Program(), paddle.static.Program()
>>> with paddle.static.program_guard(main, startup):
...     x = paddle.static.data('x', [None, 4], 'float32')
...     loss = paddle.nn.Linear(4, 2)(x).mean()
...     _ = paddle.optimizer.Rprop(0.1).minimize(loss)
>>> w = [p.name for p in main.global_block().all_parameters() if len(p.shape) == 2]
>>> unmasked_params(main, w) == w
True
>>> r = apply_mask_pass(main, startup, w, packed=True)
>>> r.modified, r.masked == tuple(w), unmasked_params(main, w), apply_mask_pass(main, startup, w, packed=True).modified
(True, True, [], False)
>>> paddle.disable_static()
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import paddle

from .core.naming import MASK_SUFFIX, mask_name
from .core.packing import packed_size
from .programs import MASK_CAST_SUFFIX, check_program, is_pir_program, mask_op_param, param_name, \
    parameter_names, program_mode, written_params

__all__ = ["MASK_SUFFIX", "MaskPassResult", "apply_mask_pass", "mask_var_name", "masked_params", "unmasked_params",
           "mask_var_spec"]

_FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})
Scalar = Union[bool, float, int]


def mask_var_name(param_name: str) -> str:
    """Name of the mask variable of a parameter (the core's one naming rule)."""
    return mask_name(param_name)


def mask_var_spec(shape: Sequence[int], packed: bool) -> Tuple[str, List[int]]:
    """(dtype, shape) of the mask variable of a parameter of ``shape``: bool of that shape, or packed uint8."""
    if packed:
        return "uint8", [packed_size(math.prod(int(d) for d in shape))]
    return "bool", [int(d) for d in shape]


@dataclass(frozen=True)
class MaskPassResult:
    """What :func:`apply_mask_pass` did."""

    modified: bool
    mask_vars: Dict[str, str]  # parameter name -> mask variable name (new or pre-existing)
    ops_added: int  # ops added to the main program's global block (variable ops + mask ops)
    vars_added: Tuple[str, ...] = field(default=())  # persistable variables created by this run
    masked: Tuple[str, ...] = field(default=())  # parameters that got a mask op in this run
    packed: bool = False  # masks are bit-packed uint8 variables


def apply_mask_pass(program: Any, startup_program: Optional[Any], param_names: Sequence[str],
                    scalars: Optional[Mapping[str, Scalar]] = None, *, packed: bool = False) -> MaskPassResult:
    """Add mask variables (and optional persistable scalars) and post-update mask ops; see the module doc."""
    check_program(program)
    if startup_program is None:
        with program_mode(program):
            startup_program = paddle.static.Program()  # a throwaway: masks then live in the scope only
    check_program(startup_program, "startup_program")
    if is_pir_program(program) != is_pir_program(startup_program):
        raise TypeError(f"program and startup_program must both be PIR or both legacy-IR programs; got "
                        f"{type(program).__name__} and {type(startup_program).__name__}")
    with program_mode(program):
        impl = _PirImpl(program) if is_pir_program(program) else _LegacyImpl(program)
        plan = _validate(impl, param_names, scalars, packed)
        main_mark, startup_mark = impl.mark(program), impl.mark(startup_program)
        try:
            return _apply(impl, startup_program, plan, packed)
        except BaseException:
            impl.rollback(startup_program, startup_mark)
            impl.rollback(program, main_mark)
            raise


@dataclass
class _Plan:
    names: List[str]
    params: Dict[str, Any]
    existing: Dict[str, Any]  # persistable variables by name
    scalars: Dict[str, Scalar]


def _validate(impl: Any, param_names: Sequence[str], scalars: Optional[Mapping[str, Scalar]],
              packed: bool) -> _Plan:
    if not isinstance(packed, bool):
        raise TypeError(f"packed must be a bool; got {packed!r}")
    if isinstance(param_names, (str, bytes)) or not isinstance(param_names, Sequence):
        raise TypeError(f"param_names must be a sequence of parameter names; got {param_names!r}")
    names = list(dict.fromkeys(param_names))
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"param_names must hold str names; got {bad[:5]}")
    params = impl.params()
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"param_names holds names that are not parameters of the program: {unknown[:5]}")
    for n in names:
        dtype = paddle.base.data_feeder.convert_dtype(params[n].dtype)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"param_names: parameter {n!r} is {dtype}; only floating-point parameters can be masked")
    if scalars is not None and not isinstance(scalars, Mapping):
        raise TypeError(f"scalars must be a mapping of variable name to value; got {scalars!r}")
    scalars = dict(scalars or {})
    for k, v in scalars.items():
        if not isinstance(k, str) or not k:
            raise TypeError(f"scalars: variable names must be non-empty str; got {k!r}")
        if not isinstance(v, (bool, float, int)) or (isinstance(v, float) and not math.isfinite(v)):
            raise TypeError(f"scalars[{k!r}] must be a bool or a finite number; got {v!r}")
    existing = impl.persistable_vars()
    taken = impl.other_names()  # non-persistable variables / feeds
    for n in names:
        mname = mask_var_name(n)
        dtype, shape = mask_var_spec(params[n].shape, packed)
        if mname in params or mname in taken or impl.cast_name_taken(n):
            raise ValueError(f"cannot create the mask of {n!r}: the program already has a variable {mname!r} "
                             "that is not a persistable mask (rename it)")
        if mname in existing:
            have = existing[mname]
            have_dtype = paddle.base.data_feeder.convert_dtype(have.dtype)
            if have_dtype != dtype or [int(d) for d in have.shape] != shape:
                raise ValueError(f"the program already has {mname!r} as {have_dtype}{list(have.shape)}; "
                                 f"packed={packed} needs {dtype}{shape}")
    masks = {mask_var_name(n) for n in names}
    for k, v in scalars.items():
        if k in params or k in taken or k in masks:
            raise ValueError(f"scalars[{k!r}]: the name is already used by a parameter, mask or variable")
        if k in existing:
            have_dtype = paddle.base.data_feeder.convert_dtype(existing[k].dtype)
            want = "bool" if isinstance(v, bool) else "float32"
            if have_dtype != want or list(existing[k].shape) != []:
                raise ValueError(f"scalars[{k!r}]: the program already has it as {have_dtype}"
                                 f"{list(existing[k].shape)}, not a {want} scalar")
    return _Plan(names, params, existing, scalars)


def _apply(impl: Any, startup_program: Any, plan: _Plan, packed: bool) -> MaskPassResult:
    before = impl.num_ops()
    added: List[str] = []
    with paddle.static.program_guard(impl.program, startup_program):
        masks = {}
        for n in plan.names:
            mname = mask_var_name(n)
            if mname in plan.existing:
                masks[n] = plan.existing[mname]
            else:
                masks[n] = impl.create_mask(mname, plan.params[n].shape, packed)
                added.append(mname)
        for name, value in plan.scalars.items():
            if name not in plan.existing:
                dtype = "bool" if isinstance(value, bool) else "float32"
                impl.create_scalar(name, dtype, bool(value) if dtype == "bool" else float(value))
                added.append(name)
        todo = unmasked_params(impl.program, plan.names)
        tables: Dict[str, Any] = {}  # packed: one bit table per dtype, shared by the mask ops
        for n in todo:
            param = plan.params[n]
            table = impl.bit_table(param, tables) if packed else None
            impl.append_mask_op(param, masks[n], table)
    return MaskPassResult(modified=bool(added or todo), mask_vars={n: mask_var_name(n) for n in plan.names},
                          ops_added=impl.num_ops() - before, vars_added=tuple(added), masked=tuple(todo),
                          packed=packed)


def _mask_states(program: Any, names: Sequence[str]) -> Dict[str, bool]:
    """Parameter -> whether its last write in the global block is its mask op (absent: never written)."""
    params = set(parameter_names(program))
    wanted = set(names)
    state: Dict[str, bool] = {}
    for op in program.global_block().ops:
        masked = mask_op_param(op)
        if masked is not None:
            state[masked] = True
            continue
        for n in written_params(op, params):
            if n in wanted:
                state[n] = False
    return state


def unmasked_params(program: Any, param_names: Sequence[str]) -> List[str]:
    """The parameters of ``param_names`` that some op writes after their last mask op (or that have none)."""
    check_program(program)
    if isinstance(param_names, (str, bytes)):
        raise TypeError(f"param_names must be a sequence of parameter names; got {param_names!r}")
    state = _mask_states(program, list(param_names))
    return [n for n in dict.fromkeys(param_names) if state.get(n) is False]


def masked_params(program: Any) -> Set[str]:
    """Parameters of ``program`` that have a mask op in the global block."""
    check_program(program)
    out = set()
    for op in program.global_block().ops:
        n = mask_op_param(op)
        if n is not None:
            out.add(n)
    return out


class _AllKeptBits(paddle.nn.initializer.Initializer):
    """Startup initializer of a packed mask of n elements: ``np.packbits(np.ones(n, bool))`` exactly."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, var: Any, block: Any = None) -> Any:
        size, tail = packed_size(self.n), self.n % 8
        last = (0xFF << (8 - tail)) & 0xFF if tail else 0xFF
        parts = [(size - 1, 0xFF), (1, last)] if size > 1 else [(1, last)]
        if isinstance(block, paddle.pir.Block):
            # int32 then cast: Paddle 3.3.1's PIR concat refuses uint8 (its dtype list says 'unit8')
            vals = [paddle.full([k], v, "int32") for k, v in parts]
            return paddle.cast(vals[0] if len(vals) == 1 else paddle.concat(vals), "uint8")
        outs = []
        for k, v in parts:
            tmp = block.create_var(name=f"{var.name}@INIT{len(outs)}", dtype="uint8", shape=[k], persistable=False)
            block.append_op(type="fill_constant", outputs={"Out": tmp},
                            attrs={"shape": [k], "dtype": int(tmp.dtype), "value": float(v), "str_value": str(v)})
            outs.append(tmp)
        return block.append_op(type="concat", inputs={"X": outs}, outputs={"Out": var}, attrs={"axis": 0})


def _bit_table(dtype: Any) -> Any:
    """[256, 8] table of ``dtype``: row b holds the bits of byte b, most significant first (np.unpackbits)."""
    byte = paddle.reshape(paddle.arange(256, dtype="int32"), [256, 1])
    shifts = paddle.assign(np.arange(7, -1, -1, dtype=np.int32).reshape(1, 8))
    bits = paddle.bitwise_and(paddle.bitwise_right_shift(byte, shifts), paddle.full([1], 1, "int32"))
    return paddle.cast(bits, dtype)


def _unpack_bits(mask: Any, shape: Sequence[int], table: Any) -> Any:
    """In-program inverse of ``np.packbits``: uint8 mask of ceil(n/8) bytes -> 0/1 of ``shape`` (table's dtype).

    One gather of 8-element rows per byte: about the cost of the bool mask's cast (shift/and per bit cost 4x).
    """
    n = math.prod(int(d) for d in shape)
    bits = paddle.gather(table, paddle.cast(mask, "int32"))
    if n % 8:  # drop the padding bits of the last byte
        bits = paddle.slice(paddle.reshape(bits, [-1]), [0], [0], [n])
    return paddle.reshape(bits, [int(d) for d in shape])


class _PirImpl:
    def __init__(self, program: Any) -> None:
        self.program = program
        self.block = program.global_block()

    def params(self) -> Dict[str, Any]:
        return {param_name(p): p for p in self.block.all_parameters()}

    def num_ops(self) -> int:
        return self.block.num_ops()

    def _data_ops(self) -> List[Any]:
        return [op for op in self.block.ops if op.name() == "pd_op.data"]

    def persistable_vars(self) -> Dict[str, Any]:
        return {op.attrs()["name"]: op.result(0) for op in self._data_ops() if op.result(0).persistable}

    def other_names(self) -> Set[str]:
        return {op.attrs()["name"] for op in self._data_ops() if not op.result(0).persistable}

    def cast_name_taken(self, param: str) -> bool:
        return False

    @staticmethod
    def mark(program: Any) -> Set[int]:
        return {op.id() for op in program.global_block().ops}

    @staticmethod
    def rollback(program: Any, mark: Set[int]) -> None:
        for op in reversed(list(program.global_block().ops)):  # users before their producers
            if op.id() not in mark:
                op.erase()

    def create_mask(self, name: str, shape: Sequence[int], packed: bool) -> Any:
        dtype, vshape = mask_var_spec(shape, packed)
        init = _AllKeptBits(math.prod(int(d) for d in shape)) if packed else paddle.nn.initializer.Constant(True)
        return paddle.pir.core.create_persistable_value(dtype, vshape, name=name, initializer=init)

    def create_scalar(self, name: str, dtype: str, value: Scalar) -> Any:
        return paddle.pir.core.create_persistable_value(dtype, [], name=name,
                                                        initializer=paddle.nn.initializer.Constant(value))

    @staticmethod
    def bit_table(param: Any, tables: Dict[str, Any]) -> Any:
        key = str(param.dtype)  # a table of the parameter's dtype: the gather yields the factor, no cast
        if key not in tables:
            tables[key] = _bit_table(param.dtype)
        return tables[key]

    def append_mask_op(self, param: Any, mask: Any, table: Optional[Any]) -> None:
        factor = paddle.cast(mask, param.dtype) if table is None else _unpack_bits(mask, param.shape, table)
        # paddle._C_ops.multiply_ is really in place in static mode (Tensor.multiply_ is not).
        paddle._C_ops.multiply_(param, factor)


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

    def other_names(self) -> Set[str]:
        return {n for n, v in self.block.vars.items() if not v.persistable}

    def cast_name_taken(self, param: str) -> bool:
        return param + MASK_CAST_SUFFIX in self.block.vars and not any(
            mask_op_param(op) == param for op in self.block.ops)

    @staticmethod
    def mark(program: Any) -> Tuple[int, Set[str]]:
        block = program.global_block()
        return len(block.ops), set(block.vars)

    @staticmethod
    def rollback(program: Any, mark: Tuple[int, Set[str]]) -> None:
        block = program.global_block()
        n_ops, names = mark
        for i in range(len(block.ops) - 1, n_ops - 1, -1):
            block._remove_op(i)
        for name in [n for n in block.vars if n not in names]:
            block._remove_var(name)

    def create_mask(self, name: str, shape: Sequence[int], packed: bool) -> Any:
        dtype, vshape = mask_var_spec(shape, packed)
        if not packed:
            return paddle.static.create_global_var(vshape, True, dtype, persistable=True, name=name)
        helper = paddle.base.layer_helper.LayerHelper("global_var")
        var = helper.create_global_variable(dtype=dtype, shape=vshape, persistable=True, name=name,
                                            stop_gradient=True)
        helper.set_variable_initializer(var, initializer=_AllKeptBits(math.prod(int(d) for d in shape)))
        return var

    def create_scalar(self, name: str, dtype: str, value: Scalar) -> Any:
        return paddle.static.create_global_var([], value, dtype, persistable=True, name=name)  # type: ignore

    def bit_table(self, param: Any, tables: Dict[str, Any]) -> Any:
        if "uint8" not in tables:  # uint8 0/1: the named cast below makes the float factor
            with self.program._optimized_guard([]):
                tables["uint8"] = _bit_table("uint8")
        return tables["uint8"]

    def append_mask_op(self, param: Any, mask: Any, table: Optional[Any]) -> None:
        with self.program._optimized_guard([param, mask]):
            src = mask if table is None else _unpack_bits(mask, param.shape, table)
            cast = self.block.create_var(name=param.name + MASK_CAST_SUFFIX, dtype=param.dtype, shape=param.shape,
                                         persistable=False)
            self.block.append_op(type="cast", inputs={"X": [src]}, outputs={"Out": [cast]},
                                 attrs={"in_dtype": src.dtype, "out_dtype": param.dtype})
            self.block.append_op(type="elementwise_mul", inputs={"X": [param], "Y": [cast]},
                                 outputs={"Out": [param]}, attrs={"axis": -1})
