"""The tools around the pruners, installed as ``paddleslim_tools``; one package per concern:

* :mod:`.export` - ``paddleslim-export``: the Paddle inference model, ONNX (verified, compressed), the Lite and
  sparse-cpu targets, and the export's own report (:class:`~.export.export_report.ExportReport`);
* :mod:`.report` - ``paddleslim-report``: the per-layer sparsity report, its plots and the ARM deployment verdicts;
* :mod:`.demo` - ``paddleslim-demo``: train, prune, report and export a small CNN (the ``digits_cnn`` builder);
* :mod:`.runtime` - the sparse CPU operators that run the sparse-cpu export.

Shared by them, and importing none of them: :mod:`.loading` (the one loader of checkpoints, inference models,
``module:callable`` networks, and where pruner masks are folded in), :mod:`.errors` (the one error type, one-line
messages), :mod:`.staging` (output moved into place whole) and :mod:`.cli_contract` (what every command does on bad
input and on Ctrl-C/SIGTERM).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Tuple


def lazy_names(package: str, where: Dict[str, str]) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """(``__getattr__``, ``__dir__``) for a package whose public names load on first use: ``where`` maps each name
    to the module (relative to ``package``) that defines it, so importing the package imports nothing heavy."""
    def getattr_(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> List[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(where))

    return getattr_, dir_
