"""The optional ``export`` extra (onnx, onnxruntime, paddle2onnx): detect it without importing it."""
from __future__ import annotations

import importlib.util
from typing import List, Sequence

__all__ = ["EXTRA_MODULES", "INSTALL_EXTRA", "missing_extra", "require_extra"]

EXTRA_MODULES = ("onnx", "onnxruntime", "paddle2onnx")
INSTALL_EXTRA = 'pip install "paddleslim-sparsity[export]"'


def missing_extra(modules: Sequence[str] = EXTRA_MODULES) -> List[str]:
    """The modules of the ``export`` extra (or of ``modules``) that cannot be imported here."""
    missing = []
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                missing.append(m)
        except (ImportError, ValueError):
            missing.append(m)
    return missing


def require_extra(what: str = "the ONNX export") -> None:
    """ImportError naming the extra to install when any of its modules is missing."""
    missing = missing_extra()
    if missing:
        raise ImportError(f"{what} needs the export extra (missing: {', '.join(missing)}): {INSTALL_EXTRA}")
