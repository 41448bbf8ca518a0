"""N:M checks of a static Program (PIR or legacy IR): which weights have an N:M layout, and whether they are sparse.

A parameter's layout comes from the forward ops that use it (gradient and optimizer ops are ignored):

* ``'linear'`` - the 2-D ``Y`` operand of ``matmul`` (PIR ``pd_op.matmul``; legacy ``matmul_v2``/``matmul``)
  without ``transpose_y``, the 2-D ``Y`` of legacy ``mul``, the ``W`` of ``fc``: Paddle's ``[in, out]`` weight;
* ``'conv'`` - the 4-D filter of ``conv2d`` / ``depthwise_conv2d``: ``[out, in/groups, kh, kw]``.

Everything else is skipped with a reason - the same parameters :func:`paddleslim_dygraph.nm.check_nm` skips for
the same network (1-D, norm operands, transposed use, ``conv2d_transpose`` filters, parameters no matmul/conv op
reads, reduction axis shorter than M), plus a parameter used in two different roles. "Parameters" are
``program.global_block().all_parameters()``; a legacy-IR inference model loaded back has none, so there they are its
persistable dense tensors.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import paddle

from .core.nm import CONV, LINEAR, Layout, NMVerdict, check_nm as _check_nm_args
from .core.nm import nm_skip_reason, nm_violations
from .core.params import ParamInfo
from .programs import NORM_OPS_LEGACY, all_ops, check_program, is_pir_program, param_infos, value_name
from .scope_io import tensor_of

__all__ = ["nm_layouts", "check_nm"]

_TRANSPOSED = "transposed"
# op -> (weight slot or operand index, layout, transpose attribute that makes the use transposed)
_PIR_OPS = {
    "pd_op.matmul": (1, LINEAR, "transpose_y"),
    "pd_op.fc": (1, LINEAR, None),
    "pd_op.conv2d": (1, CONV, None),
    "pd_op.depthwise_conv2d": (1, CONV, None),
    "pd_op.conv2d_transpose": (1, _TRANSPOSED, None),
    "pd_op.depthwise_conv2d_transpose": (1, _TRANSPOSED, None),
}
_LEGACY_OPS = {
    "matmul_v2": ("Y", LINEAR, "trans_y"),
    "matmul": ("Y", LINEAR, "transpose_Y"),
    "mul": ("Y", LINEAR, None),
    "fc": ("W", LINEAR, None),
    "conv2d": ("Filter", CONV, None),
    "depthwise_conv2d": ("Filter", CONV, None),
    "conv2d_transpose": ("Filter", _TRANSPOSED, None),
    "depthwise_conv2d_transpose": ("Filter", _TRANSPOSED, None),
}


def _uses(program: Any, params: set) -> Dict[str, List[str]]:
    """Parameter name -> roles ('linear', 'conv', 'transposed') from the forward ops that read it as a weight."""
    roles: Dict[str, List[str]] = {}
    if is_pir_program(program):
        for op in all_ops(program):
            spec = _PIR_OPS.get(op.name())
            if spec is None:
                continue
            idx, layout, trans = spec
            operands = op.operands_source()
            if idx >= len(operands) or operands[idx] is None:
                continue
            name = value_name(operands[idx])
            if name in params:
                if trans is not None and bool(op.attrs().get(trans, False)):
                    layout = _TRANSPOSED
                roles.setdefault(name, []).append(layout)
    else:
        for op in all_ops(program):
            spec = _LEGACY_OPS.get(op.type)
            if spec is None or spec[0] not in op.input_names:
                continue
            slot, layout, trans = spec
            if trans is not None and op.has_attr(trans) and bool(op.attr(trans)):
                layout = _TRANSPOSED
            for name in op.input(slot):
                if name in params:
                    roles.setdefault(name, []).append(layout)
    return roles


def _weights(program: Any) -> List[ParamInfo]:
    """The program's parameters; for a legacy-IR inference model loaded back (no Parameter objects), its persistable
    dense tensors (feed/fetch excluded), norm-op operands flagged as for parameters."""
    infos = param_infos(program)
    if infos or is_pir_program(program):
        return infos
    block = program.global_block()
    names = []
    for n, v in block.vars.items():
        kind = str(v.type).upper()
        if v.persistable and n not in ("feed", "fetch") and ("LOD_TENSOR" in kind or "DENSE_TENSOR" in kind) \
                and "ARRAY" not in kind:
            names.append(n)
    wanted = set(names)
    norms = {n for op in all_ops(program) if op.type in NORM_OPS_LEGACY
             for slot in op.input_names for n in op.input(slot) if n in wanted}
    return [ParamInfo(n, tuple(int(d) for d in block.var(n).shape), n in norms, None) for n in names]


def _role(shape: Tuple[int, ...], is_norm: bool, roles: List[str]) -> Tuple[Optional[Layout], str]:
    if is_norm:
        return None, "normalization op operand"
    if len(shape) <= 1:
        return None, "1-D parameter (bias)"
    kinds = set(roles)
    if not kinds:
        return None, "no matmul/conv2d op reads it as a weight: no N:M layout"
    if _TRANSPOSED in kinds:
        return None, "used transposed (transpose_y or conv2d_transpose): reduction axis differs"
    if len(kinds) > 1:
        return None, f"used in several roles {sorted(kinds)}"
    layout = kinds.pop()
    if (layout == LINEAR and len(shape) != 2) or (layout == CONV and len(shape) != 4):
        return None, f"{layout} weight of unexpected rank {len(shape)}"
    return layout, ""


def nm_layouts(program: Any, m: int) -> Dict[str, Tuple[Optional[Layout], str]]:
    """Parameter name -> (layout, '') for the weights that qualify for N:M with this M, (None, reason) otherwise."""
    check_program(program)
    _check_nm_args(1, m, "m")
    infos = _weights(program)
    roles = _uses(program, {p.name for p in infos})
    out: Dict[str, Tuple[Optional[Layout], str]] = {}
    for info in infos:
        layout, reason = _role(info.shape, info.is_norm, roles.get(info.name, []))
        if layout is not None:
            short = nm_skip_reason(info.shape, m, layout)
            if short is not None:
                layout, reason = None, short
        out[info.name] = (layout, reason)
    return out


def _host(scope: Any, name: str) -> np.ndarray:
    arr = np.array(tensor_of(scope, name))
    if arr.dtype == np.uint16:  # bfloat16 bit patterns: widen exactly
        arr = (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return arr


def check_nm(program: Any, n: int, m: int, scope: Any = None) -> Dict[str, NMVerdict]:
    """Parameter name -> :class:`NMVerdict` for every parameter of ``program``, read from ``scope``.

    ``scope`` defaults to ``paddle.static.global_scope()``; a qualifying weight that is not initialised there
    raises RuntimeError (run the startup program first).

    >>> import paddle
    >>> from paddleslim_static.nm import check_nm
    >>> from paddleslim_static.programs import static_mode
    >>> with static_mode(), paddle.utils.unique_name.guard():
    ...     main, startup = paddle.static.Program(), paddle.static.Program()
    ...     with paddle.static.program_guard(main, startup):
    ...         y = paddle.nn.Linear(8, 4)(paddle.static.data('x', [None, 8]))
    ...     exe = paddle.static.Executor(paddle.CPUPlace())
    ...     scope = paddle.static.Scope()
    ...     with paddle.static.scope_guard(scope):
    ...         _ = exe.run(startup)
    ...     v = check_nm(main, 2, 4, scope)
    >>> sorted((k, x.layout, x.ok) for k, x in v.items())
    [('linear_0.b_0', None, None), ('linear_0.w_0', 'linear', False)]
    """
    n, m = _check_nm_args(n, m, "n, m")
    layouts = nm_layouts(program, m)
    if scope is None:
        scope = paddle.static.global_scope()
    out: Dict[str, NMVerdict] = {}
    for info in _weights(program):
        layout, reason = layouts[info.name]
        if layout is None:
            out[info.name] = NMVerdict(info.name, info.shape, None, None, reason=reason)
            continue
        bad, groups = nm_violations(_host(scope, info.name), n, m, layout)
        out[info.name] = NMVerdict(info.name, info.shape, layout, bad == 0, bad, groups)
    return out
