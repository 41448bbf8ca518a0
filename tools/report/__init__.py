"""``paddleslim-report`` and what it reports: the per-layer sparsity report (table, JSON, plots) of a model, program,
inference model or checkpoint, and the deployment verdicts (which ops Paddle Lite / XNNPACK would run sparse on ARM).

>>> from paddleslim_tools.report import sparsity_report, deployment_report  # doctest: +SKIP

Modules: :mod:`.sparsity` (the report), :mod:`.plots` (its PNGs, matplotlib), :mod:`.deployment` (the ARM
verdicts), :mod:`.cli` (the command line; ``python -m paddleslim_tools.report``). Not the export's report: that is
:mod:`paddleslim_tools.export.export_report`. Importing this package imports nothing heavy: names load on first use,
so the command line can quieten Paddle first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_names

if TYPE_CHECKING:
    from .cli import main
    from .deployment import (DEFAULT_SPARSE_THRESHOLD, SCOPE, SCOPE_NOTE, DeploymentReport, OpVerdict,
                             deployment_report, lite_verdict, lite_zero_fraction)
    from .plots import write_plots
    from .sparsity import LayerStat, SparsityReport, load_weights, schedule_points, sparsity_report

_WHERE = {
    "sparsity_report": ".sparsity", "SparsityReport": ".sparsity", "LayerStat": ".sparsity",
    "schedule_points": ".sparsity", "load_weights": ".sparsity", "write_plots": ".plots",
    "deployment_report": ".deployment", "DeploymentReport": ".deployment", "OpVerdict": ".deployment",
    "lite_verdict": ".deployment", "lite_zero_fraction": ".deployment", "DEFAULT_SPARSE_THRESHOLD": ".deployment",
    "SCOPE": ".deployment", "SCOPE_NOTE": ".deployment", "main": ".cli",
}
__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_names(__name__, _WHERE)
