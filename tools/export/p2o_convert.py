"""paddle2onnx, run in a child process, never installing anything.

paddle2onnx 2.1 aborts the whole process (SIGABRT) on an unsupported operator, and its polygraphy
post-processing sets ``POLYGRAPHY_AUTOINSTALL_DEPS=1`` (which may ``pip install`` at run time). So the
conversion runs in a child Python with ``POLYGRAPHY_AUTOINSTALL_DEPS=0`` and pip pointed nowhere, and
without polygraphy at all (paddle2onnx returns the model bytes itself when given no output file).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from typing import Iterable, List, Optional

__all__ = ["ConversionError", "convert", "NO_INSTALL_ENV"]

#: Environment for anything that might be tempted to install packages.
NO_INSTALL_ENV = {
    "POLYGRAPHY_AUTOINSTALL_DEPS": "0",
    "PIP_NO_INDEX": "1",
    "PIP_INDEX_URL": "http://127.0.0.1:9/nowhere",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}

# Paddle PIR op name -> paddle2onnx's mapper name, for the "likely unsupported" hint only.
_ALIASES = {
    "add": "elementwise_add", "subtract": "elementwise_sub", "multiply": "elementwise_mul",
    "divide": "elementwise_div", "maximum": "elementwise_max", "minimum": "elementwise_min",
    "matmul": "matmul_v2", "flatten": "flatten_contiguous_range", "mean": "reduce_mean",
    "sum": "reduce_sum", "max": "reduce_max", "min": "reduce_min", "prod": "reduce_prod",
    "expand": "expand_v2", "topk": "top_k_v2", "unsqueeze": "unsqueeze2", "arange": "range",
    "argmax": "arg_max", "argmin": "arg_min", "pool2d": "pool2d", "elementwise_pow": "pow",
}
_STRUCTURAL = {"data", "fetch", "parameter", "combine", "slice", "split", "shadow_output", "constant",
               "full_int_array", "full", "assign", "feed", "set_parameter"}


class ConversionError(RuntimeError):
    """paddle2onnx could not convert the model (message is one line)."""


def _supported_ops() -> Optional[set]:
    try:
        import paddle2onnx.paddle2onnx_cpp2py_export as c_p2o

        return set(c_p2o.get_all_supported_operators_pir())
    except Exception:  # pragma: no cover - hint only
        return None


def likely_unsupported(op_names: Iterable[str]) -> List[str]:
    """Ops of a program that paddle2onnx's op list does not seem to cover (a hint for error messages)."""
    supported = _supported_ops()
    if supported is None:
        return []
    out = []
    for full in sorted(set(op_names)):
        short = full.split(".", 1)[-1]
        base = short[:-1] if short.endswith("_") else short
        if base in _STRUCTURAL or base in supported or _ALIASES.get(base) in supported:
            continue
        out.append(full)
    return out


def convert(model_file: str, params_file: str, opset: int = 13, timeout: float = 900.0,
            op_names: Iterable[str] = ()) -> bytes:
    """ONNX bytes for a saved Paddle inference model (``.json`` or ``.pdmodel`` plus ``.pdiparams``)."""
    with tempfile.TemporaryDirectory(prefix="p2o-") as tmp:
        out = os.path.join(tmp, "model.onnx")
        env = dict(os.environ)
        env.update(NO_INSTALL_ENV)
        env.setdefault("GLOG_minloglevel", "2")
        cmd = [sys.executable, "-m", "paddleslim_tools.export.p2o_convert", model_file, params_file, out, str(int(opset))]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"paddle2onnx did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0 or not os.path.isfile(out):
            raise ConversionError(_explain(proc.stdout + "\n" + proc.stderr, proc.returncode, opset, op_names))
        with open(out, "rb") as f:
            return f.read()


def _explain(log: str, code: int, opset: int, op_names: Iterable[str]) -> str:
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[ERROR]" in ln or ln.startswith("ConversionError")]
    msg = errors[-1] if errors else (lines[-1] if lines else f"exit code {code}")
    msg = re.sub(r"^\S*\[ERROR\](\[Paddle2ONNX\])?\s*", "", msg)
    if "unsupported" in msg.lower():
        hint = likely_unsupported(op_names)
        msg = f"unsupported operator(s) for ONNX opset {opset}" + (f" (likely: {', '.join(hint)})" if hint else "") \
            + f": {msg}"
    return f"paddle2onnx failed: {msg}"


def _child(argv: List[str]) -> int:
    model_file, params_file, out, opset = argv
    os.environ.update(NO_INSTALL_ENV)
    import paddle2onnx

    try:
        data = paddle2onnx.export(model_file, params_file, None, int(opset), auto_upgrade_opset=False,
                                  enable_onnx_checker=True, optimize_tool="None")
    except UnboundLocalError:  # paddle2onnx logged the real error and returned nothing
        data = None
    if not data:
        print("ConversionError: paddle2onnx produced no model", file=sys.stderr)
        return 3
    with open(out, "wb") as f:
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
