"""The sparse-cpu conversion for static programs: ``pd_op.matmul`` with a weight parameter, in a saved PIR inference
model, replaced by the sparse operator.

What a static ``paddle.static.nn.fc`` / ``Linear`` leaves in an inference program is ``pd_op.matmul(x, W)`` (then
``pd_op.add`` with the bias, kept as it is). A candidate is such a matmul whose second operand is a 2-D float32
``builtin.parameter`` and which transposes neither operand. :func:`plan_program` measures each one (dense
``paddle.matmul`` against the sparse operator, eager, on an input of the shape the program gives it, dynamic
dimensions 1), :func:`save_sparse_program` rewrites a freshly loaded copy of the model and saves it: each converted
matmul becomes ``paddleslim_sparse_linear`` reading new CSR parameters (``<W>.sparse_row_ptr`` ...), and the dense
weight, now unused, is dropped from the program and the parameters file.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import paddle

from paddleslim_static.programs import static_mode

from .convert import LayerPlan, measure_into
from .csr import csr_from_rows
from .layers import SparseLinear
from .loader import load_library

__all__ = ["matmul_candidates", "plan_program", "save_sparse_program"]

_OP = "paddleslim_sparse_linear"


def _load(prefix: str) -> Tuple[Any, Any, List[str], List[Any], Any]:
    """``(program, scope, feed_names, fetch_values, executor)`` of a saved PIR inference model, in a new scope."""
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        program, feeds, fetches = paddle.static.load_inference_model(prefix, exe)
    return program, scope, list(feeds), list(fetches), exe


def matmul_candidates(program: Any) -> List[Tuple[Any, str]]:
    """``(op, weight parameter name)`` of every matmul the sparse operator can replace, in program order."""
    block = program.global_block()
    params = {op.result(0).id: op.attrs().get("parameter_name") for op in block.ops
              if op.name() == "builtin.parameter"}
    out = []
    for op in block.ops:
        if op.name() != "pd_op.matmul" or op.operand_source(1).id not in params:
            continue
        attrs = op.attrs()
        w = op.operand_source(1)
        if attrs.get("transpose_x") or attrs.get("transpose_y") or len(w.shape) != 2 or w.dtype != paddle.float32:
            continue
        out.append((op, params[w.id]))
    return out


def plan_program(prefix: str, **measure: Any) -> List[LayerPlan]:
    """Measure every candidate matmul of the PIR inference model ``prefix`` (``measure``: the keywords of
    :func:`.convert.measure_into`)."""
    load_library()
    with static_mode(pir=True):
        program, scope, _, _, _ = _load(prefix)
        found = []
        for op, wname in matmul_candidates(program):
            shape = tuple(1 if int(d) < 0 else int(d) for d in op.operand_source(0).shape)
            found.append((wname, np.array(scope.find_var(wname).get_tensor()), shape))
    plans = []
    rng = np.random.default_rng(0)
    with _eager():  # measured in eager mode, whatever mode the caller is in
        for wname, w, shape in found:
            plan = LayerPlan(wname, "linear", wname, tuple(w.shape), 0, 0.0, input_shape=shape)
            x = paddle.to_tensor(rng.standard_normal(shape).astype(np.float32))
            wt = paddle.to_tensor(w)
            measure_into(plan, w, lambda: paddle.matmul(x, wt), lambda: _sparse_linear(w), x, **measure)
            plans.append(plan)
    return plans


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    was_static = not paddle.in_dynamic_mode()
    if was_static:
        paddle.disable_static()
    try:
        yield
    finally:
        if was_static:
            paddle.enable_static()


def _sparse_linear(w: np.ndarray) -> SparseLinear:
    return SparseLinear(csr_from_rows(np.ascontiguousarray(w.T)), None)


def save_sparse_program(prefix: str, weights: Sequence[str], out_prefix: str) -> None:
    """Load the PIR inference model ``prefix``, replace the matmuls reading ``weights`` by the sparse operator, and
    save the result as ``out_prefix`` (``.json`` + ``.pdiparams``)."""
    load_library()
    with static_mode(pir=True):
        program, scope, feed_names, fetches, exe = _load(prefix)
        block = program.global_block()
        wanted = set(weights)
        with paddle.static.scope_guard(scope), paddle.static.program_guard(program, paddle.static.Program()):
            for op, wname in matmul_candidates(program):
                if wname in wanted:
                    _replace(op, wname, scope)
            data = {op.attrs()["name"]: op.result(0) for op in block.ops if op.name() == "pd_op.data"}
            os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
            paddle.static.save_inference_model(out_prefix, [data[n] for n in feed_names], fetches, exe,
                                               program=program)


def _replace(op: Any, wname: str, scope: Any) -> None:
    w_op = op.operand_source(1).get_defining_op()
    w = np.array(scope.find_var(wname).get_tensor())
    csr = csr_from_rows(np.ascontiguousarray(w.T))
    inputs: Dict[str, Any] = {}
    for key, arr in (("row_ptr", csr.row_ptr), ("cols", csr.cols), ("values", csr.values),
                     ("bias", np.zeros(csr.out_features, np.float32))):
        name = f"{wname}.sparse_{key}"
        # create_parameter adds a builtin.parameter (what Paddle Inference loads from the params file) at the start
        # of the program; its startup initializer goes to the throwaway startup program of the program_guard
        inputs[key] = paddle.pir.core.create_parameter(str(arr.dtype), list(arr.shape), name=name, trainable=False,
                                                       initializer=paddle.nn.initializer.Constant(0))
        scope.var(name).get_tensor().set(arr, paddle.CPUPlace())
    paddle.pir.set_insertion_point(op)  # create_parameter moved it to the start
    out = paddle._C_ops._run_custom_op(_OP, op.operand_source(0), inputs["row_ptr"], inputs["cols"],
                                       inputs["values"], inputs["bias"], int(w.shape[0]))
    op.result(0).replace_all_uses_with(out[0] if isinstance(out, (list, tuple)) else out)
    op.erase()
    if w_op.result(0).use_empty():  # the dense weight is read by nothing else: not saved either
        w_op.erase()
