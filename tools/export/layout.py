"""The export targets and where an export puts their files, so that every loader reads its model and nothing else.

``paddle.jit.load(DIR/NAME)`` does not read one model: it lists ``DIR`` and loads every file
``NAME<x>.<method>.json`` / ``.pdmodel`` / ``.pdiparams`` as the program or weights of a further method
``<method>`` (Paddle 3.3.1, ``pir_translated_layer._construct_program_holders``). A report ``NAME.report.json`` or a
Lite model ``NAME.lite.pdmodel`` next to the model made it fail (``Invalid model file``, ``KeyError: 'lite'``).

The rule, for every file an export writes into ``out_dir``:

* the top level holds one Paddle model, the dense Paddle 3 inference model ``NAME.json`` (``NAME.pdmodel`` for a
  legacy-IR source) + ``NAME.pdiparams`` - what ``paddle.jit.load`` and ``paddle.inference`` read - and files
  no Paddle loader looks at: ``NAME.onnx``, ``NAME.sparse.onnx`` (onnxruntime) and the report ``NAME_report.json``
  (side files use ``_``, never a second ``.``: ``jit.load`` skips ``NAME_x.json``);
* every other model goes into a subdirectory named for its target, keeping ``NAME``: ``lite/NAME.pdmodel`` +
  ``lite/NAME.pdiparams`` (Paddle Lite's ``opt``), ``sparse-cpu/NAME.json`` + ``sparse-cpu/NAME.pdiparams`` (the sparse Paddle model for x86 CPUs);
  each such directory is a model directory by the same rule.

:func:`misread_by_jit_load` checks a directory against it.

>>> relpaths("model", "all")[5:]
['model_report.json', 'lite/model.pdmodel', 'lite/model.pdiparams', 'sparse-cpu/model.json', \
'sparse-cpu/model.pdiparams']
>>> misread_by_jit_load(["model.json", "model.pdiparams", "model.report.json", "model_report.json"], "model")
['model.report.json']
"""
from __future__ import annotations

import os
from typing import Any, Iterable, List

from ..errors import ExportError

__all__ = ["TARGETS", "parse_targets", "TARGET_DIRS", "LITE_DIR", "SPARSE_CPU_DIR", "REPORT_SUFFIX", "LEGACY_FILES",
           "model_prefix", "lite_prefix", "sparse_cpu_prefix", "report_path", "relpaths", "misread_by_jit_load"]

#: what an export writes besides the dense Paddle 3 inference model: ONNX (+ compressed), the legacy model for Lite,
#: the sparse Paddle model for x86 CPUs; a target is one of them, a comma-separated combination, or "all"
TARGETS = ("onnx", "lite", "sparse-cpu")
LITE_DIR = "lite"
SPARSE_CPU_DIR = "sparse-cpu"  # the sparse Paddle model of the x86 sparse-CPU target
#: subdirectory of each target that writes a second Paddle model
TARGET_DIRS = {"lite": LITE_DIR, "sparse-cpu": SPARSE_CPU_DIR}
REPORT_SUFFIX = "_report.json"
#: what earlier versions wrote next to the model and ``jit.load`` misreads: removed when re-exporting over them
LEGACY_FILES = (".report.json", ".lite.pdmodel", ".lite.pdiparams")
_MODEL_EXTS = (".json", ".pdmodel", ".pdiparams")


def parse_targets(target: Any) -> frozenset:
    """The targets a ``target`` string names: one of :data:`TARGETS`, a comma-separated combination, or ``all``.

    >>> sorted(parse_targets("onnx,sparse-cpu")), sorted(parse_targets("all"))
    (['onnx', 'sparse-cpu'], ['lite', 'onnx', 'sparse-cpu'])
    """
    if not isinstance(target, str):
        raise ExportError(f"target must be a str like 'onnx' or 'onnx,sparse-cpu'; got {target!r}")
    if target == "all":
        return frozenset(TARGETS)
    parts = [t.strip() for t in target.split(",")]
    bad = [t for t in parts if t not in TARGETS]
    if bad or not parts:
        raise ExportError(f"target must be one of {list(TARGETS)}, a comma-separated combination, or 'all'; "
                          f"got {target!r}")
    return frozenset(parts)


def model_prefix(out_dir: str, name: str) -> str:
    """Path prefix of the dense Paddle model: ``out_dir/NAME`` (+ ``.json``/``.pdmodel``, ``.pdiparams``)."""
    return os.path.join(out_dir, name)


def lite_prefix(out_dir: str, name: str) -> str:
    """Path prefix of the legacy-IR model for Paddle Lite: ``out_dir/lite/NAME``."""
    return os.path.join(out_dir, LITE_DIR, name)


def sparse_cpu_prefix(out_dir: str, name: str) -> str:
    """Path prefix of the sparse Paddle model for x86 CPUs: ``out_dir/sparse-cpu/NAME``."""
    return os.path.join(out_dir, SPARSE_CPU_DIR, name)


def report_path(out_dir: str, name: str) -> str:
    """The export report: ``out_dir/NAME_report.json``."""
    return os.path.join(out_dir, name + REPORT_SUFFIX)


def relpaths(name: str, target: str = "all") -> List[str]:
    """Every file (relative to ``out_dir``, ``/``-separated) an export under ``name`` may write for ``target``;
    re-exporting removes the ones it does not write this time."""
    out = [name + e for e in _MODEL_EXTS] + [name + ".onnx", name + ".sparse.onnx", name + REPORT_SUFFIX]
    targets = parse_targets(target)
    if "lite" in targets:
        out += [f"{LITE_DIR}/{name}.pdmodel", f"{LITE_DIR}/{name}.pdiparams"]
    if "sparse-cpu" in targets:
        out += [f"{SPARSE_CPU_DIR}/{name}.json", f"{SPARSE_CPU_DIR}/{name}.pdiparams"]
    return out


def misread_by_jit_load(files: Iterable[str], name: str) -> List[str]:
    """The entries of a directory listing that ``paddle.jit.load(DIR/NAME)`` would load as an extra method
    (Paddle 3.3.1's rule: starts with ``NAME``, ends in a model extension, exactly two dots after ``NAME``)."""
    bad = []
    for f in files:
        for ext in _MODEL_EXTS:
            if f.startswith(name) and f.endswith(ext) and f != name + ext:
                middle = f[len(name): -len(ext) + 1].split(".")
                if len(middle) == 3 and middle[1]:
                    bad.append(f)
    return bad
