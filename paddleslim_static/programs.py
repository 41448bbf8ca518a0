"""What the static pruner needs to know of a Program, for PIR and legacy-IR programs.

* :func:`static_mode` / :func:`program_mode` - the one place that switches Paddle into static mode (PIR or legacy IR);
* :func:`param_infos` - every parameter of a program as a core :class:`ParamInfo` (norm-op operands
  flagged ``is_norm``);
* :func:`all_ops` - every op of every block;
* :func:`param_writes` - which global-block ops write which parameters, found structurally (PIR: in-place
  ops whose mutated operand is a parameter, ops storing into a parameter's name; legacy IR: ops whose outputs
  name a parameter), control-flow sub-blocks attributed to the op that owns them.

Scope access lives in :mod:`paddleslim_static.scope_io`.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator, List, Optional, Set, Tuple

import paddle

from .core.naming import mask_name
from .core.params import ParamInfo

__all__ = [
    "NORM_OPS_PIR", "NORM_OPS_LEGACY", "is_pir_program", "check_program", "static_mode", "program_mode",
    "all_ops", "param_infos", "parameter_names", "norm_param_names", "param_writes", "written_params",
    "has_optimizer_ops", "mask_op_param", "MASK_CAST_SUFFIX",
    "value_name", "param_name",
]

# Exact op names: after minimize() the program also holds "<name>_grad" ops, which must not match.
NORM_OPS_PIR = frozenset({
    "pd_op.batch_norm", "pd_op.batch_norm_", "pd_op.sync_batch_norm", "pd_op.sync_batch_norm_",
    "pd_op.layer_norm", "pd_op.group_norm", "pd_op.instance_norm", "pd_op.spectral_norm",
    "pd_op.lrn", "pd_op.rms_norm", "pd_op.fused_bn_add_activation", "pd_op.fused_bn_add_activation_",
})
NORM_OPS_LEGACY = frozenset({
    "batch_norm", "sync_batch_norm", "layer_norm", "group_norm", "instance_norm", "spectral_norm",
    "lrn", "rms_norm", "fused_bn_add_activation",
})


def _pir_program_type() -> type:
    return paddle.pir.Program


def is_pir_program(program: Any) -> bool:
    """True for a PIR ``Program`` (Paddle 3's default), False for a legacy ``framework.Program``."""
    return isinstance(program, _pir_program_type())


def check_program(program: Any, arg: str = "program") -> Any:
    """Raise TypeError unless ``program`` is a PIR or legacy static Program."""
    if is_pir_program(program) or isinstance(program, paddle.base.framework.Program):
        return program
    raise TypeError(f"{arg} must be a paddle static Program (PIR or legacy); got {type(program).__name__}")


@contextlib.contextmanager
def static_mode(pir: bool = True) -> Iterator[None]:
    """Static mode (PIR, or legacy IR with ``pir=False``) inside the block; the caller's mode after.

    >>> import paddle
    >>> with static_mode():
    ...     paddle.in_dynamic_mode()
    False
    >>> paddle.in_dynamic_mode()
    True
    """
    was_dynamic = paddle.in_dynamic_mode()
    if was_dynamic:
        paddle.enable_static()
    try:
        if pir == paddle.framework.in_pir_mode():
            yield
        else:
            with (paddle.pir_utils.IrGuard() if pir else paddle.pir_utils.OldIrGuard()):
                yield
    finally:
        if was_dynamic:
            paddle.disable_static()


def program_mode(program: Any) -> ContextManager[None]:
    """:func:`static_mode` of the program's kind (PIR or legacy IR)."""
    return static_mode(is_pir_program(program))


def value_name(value: Any) -> Optional[str]:
    """Name of a PIR value or legacy variable, None for anonymous PIR values."""
    if hasattr(value, "has_name"):
        return value.name if value.has_name else None
    return getattr(value, "name", None)


def _parameters(program: Any) -> List[Any]:
    return list(program.global_block().all_parameters())


def param_name(param: Any) -> str:
    """Name of a parameter (PIR value or legacy variable); parameters always have one."""
    name = value_name(param)
    if name is None:
        raise ValueError(f"parameter without a name: {param!r}")
    return name


def parameter_names(program: Any) -> List[str]:
    """Names of ``program.global_block().all_parameters()`` (BatchNorm statistics included)."""
    return [param_name(p) for p in _parameters(check_program(program))]


def all_ops(program: Any) -> Iterator[Any]:
    """Every op of every block (control-flow sub-blocks included)."""
    if is_pir_program(program):
        stack = [program.global_block()]
        while stack:
            block = stack.pop()
            for op in block.ops:
                yield op
                for sub in op.blocks():
                    stack.append(sub)
    else:
        for block in program.blocks:
            yield from block.ops


def norm_param_names(program: Any) -> Set[str]:
    """Parameters that are operands of normalization ops (scale, bias, running statistics)."""
    params = set(parameter_names(program))
    out: Set[str] = set()
    if is_pir_program(program):
        for op in all_ops(program):
            if op.name() in NORM_OPS_PIR:
                for v in op.operands_source():
                    n = value_name(v)
                    if n in params:
                        out.add(n)
    else:
        for op in all_ops(program):
            if op.type in NORM_OPS_LEGACY:
                for slot in op.input_names:
                    out.update(n for n in op.input(slot) if n in params)
    return out


def lite_sparse_conv_weights(program: Any) -> Set[str]:
    """Filters of the ``conv2d`` ops Paddle Lite's sparse conv takes: 1x1 kernel, groups 1, stride 1, no padding."""
    params = set(parameter_names(program))
    out: Set[str] = set()
    pir = is_pir_program(program)
    for op in all_ops(program):
        if (op.name() if pir else op.type) not in ("pd_op.conv2d", "conv2d"):
            continue
        attrs = op.attrs() if pir else {n: op.attr(n) for n in op.attr_names}
        name = value_name(op.operand_source(1)) if pir else op.input("Filter")[0]
        algo = str(attrs.get("padding_algorithm", "EXPLICIT")).upper()
        no_pad = algo in ("VALID", "SAME") or all(int(v) == 0 for v in attrs.get("paddings", [0]))
        if name in params and int(attrs.get("groups", 1)) == 1 and no_pad \
                and all(int(v) == 1 for v in attrs.get("strides", [1])):
            out.add(name)
    shapes = {param_name(p): tuple(p.shape) for p in _parameters(program)}
    return {n for n in out if len(shapes[n]) == 4 and shapes[n][2:] == (1, 1)}


_LEGACY_DTYPES = {"FP16": "float16", "BF16": "bfloat16", "FP32": "float32", "FP64": "float64", "INT8": "int8",
                  "INT16": "int16", "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


def dtype_name(dtype: Any) -> str:
    """``'float32'`` for paddle.float32, a PIR DataType or a legacy VarType.FP32."""
    text = str(dtype).rsplit(".", 1)[-1]
    return _LEGACY_DTYPES.get(text, text)


def param_infos(program: Any) -> List[ParamInfo]:
    """Every parameter as a :class:`ParamInfo` (``is_norm`` for norm-op operands, dtype, Lite sparse-conv filters)."""
    norms = norm_param_names(program)
    lite = lite_sparse_conv_weights(program)
    infos = []
    for p in _parameters(check_program(program)):
        name = param_name(p)
        infos.append(ParamInfo(name, tuple(int(d) for d in p.shape), name in norms, None, dtype_name(p.dtype),
                               name in lite))
    return infos


MASK_CAST_SUFFIX = "_mask@CAST"  # legacy IR: the float copy of a mask, the mask op's second input

# PIR ops that store a value into a scope variable by name (attribute), not through an operand.
_STORE_BY_NAME_PIR = {"builtin.shadow_output": "output_name", "builtin.set_parameter": "parameter_name",
                      "builtin.set_persistable_value": "name"}


def _pir_written(op: Any, params: Set[str], out: Set[str]) -> None:
    name = op.name()
    attr = _STORE_BY_NAME_PIR.get(name)
    if attr is not None:
        target = op.attrs().get(attr)
        if target in params:
            out.add(target)
    elif name.endswith("_"):  # PIR names every in-place op "<op>_": skip the lookup for the others
        try:
            inplace = paddle.base.core.pir.get_op_inplace_info(op)  # {result index: mutated operand index}
        except Exception:  # ops without an op-info interface (builtin.*, cf.*) are never in place
            inplace = {}
        for operand in inplace.values():
            target = value_name(op.operand_source(operand))
            if target in params:
                out.add(target)
    if op.num_regions():
        for block in op.blocks():
            for sub in block.ops:
                _pir_written(sub, params, out)


def _legacy_sub_block_ids(op: Any) -> List[int]:
    ids: List[int] = []
    for name in op.attr_names:
        kind = op.attr_type(name)
        if kind == paddle.base.core.AttrType.BLOCK:
            ids.append(op._block_attr_id(name))
        elif kind == paddle.base.core.AttrType.BLOCKS:
            ids.extend(op._blocks_attr_ids(name))
    return ids


def _legacy_written(op: Any, params: Set[str], out: Set[str]) -> None:
    out.update(n for n in op.output_arg_names if n in params)
    program = op.block.program
    for idx in _legacy_sub_block_ids(op):
        for sub in program.block(idx).ops:
            _legacy_written(sub, params, out)


def written_params(op: Any, params: Set[str]) -> Set[str]:
    """The names in ``params`` that ``op`` (or any op of its sub-blocks) writes."""
    out: Set[str] = set()
    if hasattr(op, "operands_source"):
        _pir_written(op, params, out)
    else:
        _legacy_written(op, params, out)
    return out


def param_writes(program: Any) -> List[Tuple[int, Any, Set[str]]]:
    """``(index, op, written parameter names)`` for every op of the global block that writes parameters.

    A control-flow op counts as writing what any op of its sub-blocks writes.

    >>> import paddle
    >>> with static_mode(), paddle.utils.unique_name.guard():
    ...     main, startup = paddle.static.Program(), paddle.static.Program()
    ...     with paddle.static.program_guard(main, startup):
    ...         x = paddle.static.data('x', [None, 4], 'float32')
    ...         loss = paddle.nn.Linear(4, 2)(x).mean()
    ...         _ = paddle.optimizer.Rprop(0.1).minimize(loss)
    ...     [(op.name(), sorted(names)) for _, op, names in param_writes(main)]
    [('pd_op.rprop_', ['linear_0.b_0']), ('pd_op.rprop_', ['linear_0.w_0'])]
    """
    params = set(parameter_names(program))
    out = []
    for i, op in enumerate(program.global_block().ops):
        names = written_params(op, params)
        if names:
            out.append((i, op, names))
    return out


def mask_op_param(op: Any) -> Optional[str]:
    """The parameter ``op`` masks, if it is a mask op of :mod:`paddleslim_static.mask_pass`, else None.

    PIR: ``multiply_(p, y)`` with ``y`` computed from ``<p>_mask``; legacy IR: ``elementwise_mul`` with
    X = Out = p and Y = ``<p>_mask@CAST``.
    """
    if not hasattr(op, "operands_source"):
        if op.type != "elementwise_mul":
            return None
        x, y, o = op.input("X"), op.input("Y"), op.output("Out")
        return x[0] if len(x) == 1 and x == o and y == [x[0] + MASK_CAST_SUFFIX] else None
    if op.name() != "pd_op.multiply_" or op.num_operands() != 2:
        return None
    p, y = op.operands_source()
    if not p.is_parameter:
        return None
    target = mask_name(param_name(p))
    stack, seen = [y], 0
    while stack and seen < 128:  # the packed-mask chain (bit table included) is ~25 values
        v = stack.pop()
        seen += 1
        if value_name(v) == target:
            return param_name(p)
        src = v.get_defining_op()
        if src is not None and src.name() not in ("pd_op.data", "builtin.parameter"):
            stack.extend(src.operands_source())
    return None


def _trainable(param: Any) -> bool:
    return not param.stop_gradient if hasattr(param, "is_parameter") else bool(param.trainable)


def has_optimizer_ops(program: Any) -> bool:
    """Whether an op other than a mask op writes a trainable parameter (the program trains).

    Found structurally (:func:`param_writes`), so every optimizer counts, a user's own included.
    """
    trainable = {param_name(p) for p in _parameters(check_program(program)) if _trainable(p)}
    return any(mask_op_param(op) is None and written_params(op, trainable) for op in program.global_block().ops)
