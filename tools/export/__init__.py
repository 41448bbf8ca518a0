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
verify -> report), :mod:`.p2o_convert` (paddle2onnx in a child process), :mod:`.onnx_sparse` (sparse ONNX storage),
:mod:`.checks` / :mod:`.verify` / :mod:`.diagnose` (verification, the op that diverges), :mod:`.lite` (the Paddle
Lite target), :mod:`.sparse_cpu` (the x86 sparse target), :mod:`.layout` (file names), :mod:`.specs` (input specs,
options), :mod:`.export_report` (the export's report: files, sizes, checks). Loading and mask folding are
:mod:`paddleslim_tools.loading`'s, atomic output :mod:`paddleslim_tools.staging`'s. Importing this package imports
nothing heavy: names are loaded on first use, so the command line can quieten Paddle and check the extra first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_names

if TYPE_CHECKING:
    from ..errors import ExportError
    from ..loading import fold_checkpoint_masks, load_checkpoint
    from .api import export_checkpoint, export_layer, export_program, verify_export
    from .cli import main
    from .export_report import ExportReport
    from .specs import ExportOptions, parse_input_spec

__all__ = [
    "ExportError", "ExportReport", "ExportOptions", "export_layer", "export_program", "export_checkpoint",
    "verify_export", "load_checkpoint", "fold_checkpoint_masks", "parse_input_spec", "main",
]

_WHERE = {
    "ExportError": "..errors", "ExportReport": ".export_report", "ExportOptions": ".specs", "export_layer": ".api",
    "export_program": ".api", "export_checkpoint": ".api", "verify_export": ".api", "load_checkpoint": "..loading",
    "fold_checkpoint_masks": "..loading", "parse_input_spec": ".specs", "main": ".cli",
}
__getattr__, __dir__ = lazy_names(__name__, _WHERE)
