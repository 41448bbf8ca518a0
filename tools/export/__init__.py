"""Export a pruned model as a sparse Paddle inference model and a verified (optionally compressed) ONNX model,
or as a legacy-IR model for Paddle Lite.

Python API::

    from paddleslim_tools.export import export_layer, export_program, export_checkpoint
    report = export_layer(layer, [paddle.static.InputSpec([None, 1, 8, 8], "float32", "x")], "out/")
    print(report.format_table()); assert report.ok

Command line (``paddleslim-export --help``)::

    paddleslim-export --model paddle.vision.models:mobilenet_v1 --kwargs '{"scale": 0.25, "num_classes": 10}' \\
        --checkpoint pruned.pdparams --input x:1x3x32x32:float32 --out exported/ [--target onnx|lite|sparse-cpu|all]
    paddleslim-export --inference-model infer/model --out exported/
    paddleslim-export --check exported/            # re-verify an existing export

Modules: :mod:`.cli` (command line), :mod:`.api` (the export functions), :mod:`.pipeline` (convert -> compress ->
verify -> report), :mod:`.checks` / :mod:`.diagnose` (verification, the op that diverges), :mod:`.lite` (the
Paddle Lite target), :mod:`.loading` (checkpoints, builders, saved models), :mod:`.folding` (pruner masks folded
in), :mod:`.specs` (input specs, options), :mod:`.staging` (atomic output). Importing this package imports nothing
heavy: names are loaded on first use, so the command line can quieten Paddle and check the extra first.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..report import ExportReport
    from .api import export_checkpoint, export_layer, export_program, verify_export
    from .cli import main
    from .errors import ExportError
    from .loading import fold_checkpoint_masks, load_checkpoint
    from .specs import ExportOptions, parse_input_spec

__all__ = [
    "ExportError", "ExportReport", "ExportOptions", "export_layer", "export_program", "export_checkpoint",
    "verify_export", "load_checkpoint", "fold_checkpoint_masks", "parse_input_spec", "main",
]

_WHERE = {
    "ExportError": ".errors", "ExportReport": "..report", "ExportOptions": ".specs", "export_layer": ".api",
    "export_program": ".api", "export_checkpoint": ".api", "verify_export": ".api", "load_checkpoint": ".loading",
    "fold_checkpoint_masks": ".loading", "parse_input_spec": ".specs", "main": ".cli",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_WHERE))
