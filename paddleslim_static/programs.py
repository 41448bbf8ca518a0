"""What the static pruner needs to know of a Program, for PIR and legacy-IR programs.

* :func:`static_mode` / :func:`program_mode` - the one place that switches Paddle into static mode (PIR or legacy IR);
* :func:`param_infos` - every parameter of a program as a core :class:`ParamInfo` (norm-op operands
  flagged ``is_norm``);
* :func:`all_ops` - every op of every block.

Scope access lives in :mod:`paddleslim_static.scope_io`.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator, List, Optional, Set

import paddle

from .core.params import ParamInfo

__all__ = [
    "NORM_OPS_PIR", "NORM_OPS_LEGACY", "OPTIMIZER_OPS_PIR", "is_pir_program", "check_program", "static_mode",
    "program_mode", "all_ops", "param_infos", "parameter_names", "norm_param_names", "has_optimizer_ops",
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
# Parameter-update ops optimizer.minimize() appends in PIR (PIR ops carry no op_role).
OPTIMIZER_OPS_PIR = frozenset("pd_op." + n for n in (
    "sgd_", "momentum_", "lars_momentum_", "merged_momentum_", "adam_", "adamw_", "merged_adam_",
    "fused_adam_", "lamb_", "rmsprop_", "adagrad_", "adamax_", "adadelta_", "decayed_adagrad_",
    "asgd_", "nadam_", "radam_", "ftrl", "dpsgd", "dgc_momentum",
))
_OPTIMIZE_ROLE = 0x0002  # legacy OpRole.Optimize


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


def param_infos(program: Any) -> List[ParamInfo]:
    """Every parameter as a :class:`ParamInfo` (``is_norm`` for norm-op operands)."""
    norms = norm_param_names(program)
    infos = []
    for p in _parameters(check_program(program)):
        name = param_name(p)
        infos.append(ParamInfo(name, tuple(int(d) for d in p.shape), name in norms, None))
    return infos


def has_optimizer_ops(program: Any) -> bool:
    """Whether the program updates parameters (it went through ``optimizer.minimize``)."""
    if is_pir_program(program):
        return any(op.name() in OPTIMIZER_OPS_PIR for op in all_ops(program))
    for op in all_ops(program):
        role = op.attr("op_role") if op.has_attr("op_role") else 0
        if int(role) & _OPTIMIZE_ROLE and "Param" in op.input_names:
            return True
    return False
