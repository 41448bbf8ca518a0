"""The Paddle Lite target: a legacy-IR inference model (``.pdmodel`` + ``.pdiparams``), what Lite's ``opt`` reads.

Paddle Lite's opt cannot read Paddle 3's PIR ``.json`` models (Paddle-Lite #10666, #10692). On Paddle 3.3.1,
``paddle.jit.save`` under ``paddle.pir_utils.OldIrGuard()`` in dygraph mode writes a legacy model in-process.
Paddle has no PIR -> legacy translation, so a PIR *program* cannot be turned into a Lite model; a legacy-IR
program or inference model is one already.
"""
from __future__ import annotations

import os
import shlex
from typing import List

import paddle

from ..errors import ExportError, one_line

__all__ = ["save_lite_layer", "lite_command"]


def save_lite_layer(layer: paddle.nn.Layer, input_spec: List[paddle.static.InputSpec], prefix: str) -> None:
    """Save ``layer`` (dygraph, already folded and in eval mode) as a legacy-IR inference model at ``prefix``
    (``lite/NAME`` in an export, see :mod:`.layout`)."""
    try:
        with paddle.pir_utils.OldIrGuard():
            paddle.jit.save(layer, prefix, input_spec=input_spec)
    except Exception as e:
        raise ExportError(f"legacy-IR save for Paddle Lite failed: {one_line(e)}") from None
    info = prefix + ".pdiparams.info"  # a training-only side file Lite does not read
    if os.path.isfile(info):
        os.remove(info)
    if not os.path.isfile(prefix + ".pdmodel"):
        raise ExportError(f"legacy-IR save for Paddle Lite wrote no {os.path.basename(prefix)}.pdmodel")


def lite_command(model_file: str, params_file: str, optimize_out: str, sparse_threshold: float = 0.6) -> str:
    """Paddle Lite's ``opt`` command line converting the model with its sparse kernels enabled.

    >>> print(lite_command("m.pdmodel", "m.pdiparams", "m_sparse").replace(" --", "\\n--"))
    paddle_lite_opt
    --model_file=m.pdmodel
    --param_file=m.pdiparams
    --optimize_out=m_sparse
    --valid_targets=arm
    --sparse_model=true
    --sparse_threshold=0.6
    """
    return " ".join([
        "paddle_lite_opt", f"--model_file={shlex.quote(model_file)}", f"--param_file={shlex.quote(params_file)}",
        f"--optimize_out={shlex.quote(optimize_out)}", "--valid_targets=arm", "--sparse_model=true",
        f"--sparse_threshold={sparse_threshold:g}",
    ])
