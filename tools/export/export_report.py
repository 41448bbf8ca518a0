"""The export report: per-weight sparsity table, file sizes, verification results (text and JSON)."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from paddleslim_static.core import nonzero_and_size

from ..report.sparsity import WeightCount, rows_density
from .onnx_sparse import coo_bytes
from .verify import OutputCheck, WeightMatch

__all__ = ["LayerRow", "ExportReport", "layer_rows"]


@dataclasses.dataclass
class LayerRow(WeightCount):
    """One weight of the exported Paddle inference model."""

    zeros: int
    bytes_dense: int
    bytes_sparse: int  # COO payload with INT64 indices
    stored_sparse: bool = False  # a sparse_initializer in the compressed ONNX
    onnx_name: Optional[str] = None
    match: Optional[str] = None  # how the ONNX tensor was found (see paddleslim_tools.export.verify)
    pattern_ok: Optional[bool] = None
    layer: Optional[str] = None  # structured name in the dygraph model, when known


def layer_rows(weights: Dict[str, np.ndarray], structured: Optional[Dict[str, str]] = None) -> List[LayerRow]:
    """Report rows for ``weights`` (name -> array, in model order: a saved model's in the order its ops read them),
    densities from the shared core; ``structured``: name -> structured name (``features.3.weight``), when known.
    """
    rows = []
    for name in weights:
        arr = weights[name]
        nz, size = nonzero_and_size([arr])
        item = arr.dtype.itemsize
        rows.append(LayerRow(
            name=name, shape=[int(d) for d in arr.shape], dtype=str(arr.dtype), size=size, nonzeros=nz,
            density=(nz / size if size else 1.0), zeros=size - nz, bytes_dense=size * item,
            bytes_sparse=coo_bytes(nz, item), layer=(structured or {}).get(name)))
    return rows


def _check(how: Optional[str], pattern_ok: Optional[bool]) -> str:
    """A check cell: ``ok``, ``ZEROS DIFFER`` or ``MISSING``, with how the tensor was found unless by name."""
    text = "MISSING" if how is None else ("ok" if pattern_ok else "ZEROS DIFFER")
    return text + (f" ({how})" if how and how != "name" else "")


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


@dataclasses.dataclass
class ExportReport:
    """Result of an export: ``ok`` is False when any verification failed."""

    name: str
    out_dir: str
    rows: List[LayerRow] = dataclasses.field(default_factory=list)
    files: Dict[str, str] = dataclasses.field(default_factory=dict)
    file_sizes: Dict[str, int] = dataclasses.field(default_factory=dict)
    opset: int = 13
    sparse_cutoff: Optional[float] = None  # max density stored sparse; None = "when COO is smaller"
    weight_checks: List[WeightMatch] = dataclasses.field(default_factory=list)
    output_checks: List[OutputCheck] = dataclasses.field(default_factory=list)
    failures: List[str] = dataclasses.field(default_factory=list)
    warnings: List[str] = dataclasses.field(default_factory=list)
    verified: bool = False
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    target: str = "onnx"  # "onnx", "lite" or "all" (see paddleslim_tools.export)
    lite_weight_checks: List[WeightMatch] = dataclasses.field(default_factory=list)
    lite_command: Optional[str] = None  # Paddle Lite's opt, sparse kernels enabled
    diagnosis: Optional[str] = None  # when onnxruntime and Paddle disagree: the op that diverges
    deployment: Optional[Dict[str, Any]] = None  # paddleslim_tools.report.deployment's verdicts, when available
    nm: Optional[Dict[str, Any]] = None  # with nm_pattern: {"pattern", "checked", "skipped"} per weight
    sparse_cpu: Optional[Dict[str, Any]] = None  # the sparse-cpu target: per-layer x86 verdicts, end-to-end speed

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def total_density(self) -> float:
        return rows_density(self.rows)

    @property
    def unmatched(self) -> List[str]:
        return [m.name for m in self.weight_checks if m.how is None]

    @property
    def compression_ratio(self) -> Optional[float]:
        """Size of the compressed ONNX file / size of the plain one."""
        a, b = self.file_sizes.get("onnx_sparse"), self.file_sizes.get("onnx")
        return a / b if a and b else None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "out_dir": self.out_dir, "ok": self.ok, "verified": self.verified,
            "opset": self.opset, "sparse_cutoff": self.sparse_cutoff,
            "total_density": self.total_density, "files": self.files, "file_sizes": self.file_sizes,
            "compression_ratio": self.compression_ratio,
            "layers": [dataclasses.asdict(r) for r in self.rows],
            "weight_checks": [dataclasses.asdict(m) for m in self.weight_checks],
            "unmatched": self.unmatched,
            "output_checks": [dataclasses.asdict(c) for c in self.output_checks],
            "failures": self.failures, "warnings": self.warnings, "timings": self.timings,
            "target": self.target, "lite_weight_checks": [dataclasses.asdict(m) for m in self.lite_weight_checks],
            "lite_command": self.lite_command, "diagnosis": self.diagnosis, "deployment": self.deployment,
            "nm": self.nm, "sparse_cpu": self.sparse_cpu,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    def _columns(self) -> List[Tuple[str, Callable[[LayerRow], str]]]:
        """(header, cell) of every column that applies to this export: ``layer`` when structured names are known,
        the COO size and the ONNX storage with a compressed ONNX, one check column per verified model."""
        cols: List[Tuple[str, Callable[[LayerRow], str]]] = [("weight", lambda r: r.name)]
        if any(r.layer for r in self.rows):
            cols.append(("layer", lambda r: r.layer or "-"))
        cols += [("shape", lambda r: "x".join(map(str, r.shape)) or "scalar"),
                 ("density", lambda r: f"{r.density:.3f}"), ("zeros", lambda r: str(r.zeros)),
                 ("dense", lambda r: _fmt_bytes(r.bytes_dense))]
        if "onnx_sparse" in self.files or "onnx_sparse" in self.file_sizes:
            cols += [("sparse", lambda r: _fmt_bytes(r.bytes_sparse)),
                     ("onnx", lambda r: "sparse" if r.stored_sparse else "dense")]
        if self.weight_checks:
            cols.append(("onnx check", lambda r: _check(r.match, r.pattern_ok)))
        if self.lite_weight_checks:
            lite = {m.name: m for m in self.lite_weight_checks}
            cols.append(("lite check", lambda r: _check(getattr(lite.get(r.name), "how", None),
                                                        getattr(lite.get(r.name), "pattern_ok", None))))
        return cols

    def format_table(self, max_rows: Optional[int] = None) -> str:
        """Per-weight table (in model order; only the columns that apply), totals, file sizes and the
        verification verdict as plain text."""
        cols = self._columns()
        head = tuple(h for h, _ in cols)
        rows = self.rows if max_rows is None else self.rows[:max_rows]
        table = [tuple(cell(r) for _, cell in cols) for r in rows]
        left = {"weight", "layer", "shape", "onnx", "onnx check", "lite check"}
        widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:{'<' if h in left else '>'}{w}}}" for h, w in zip(head, widths))
        lines = [fmt.format(*head).rstrip(), "  ".join("-" * w for w in widths)]
        lines.extend(fmt.format(*t).rstrip() for t in table)
        if max_rows is not None and len(self.rows) > max_rows:
            lines.append(f"... {len(self.rows) - max_rows} more weights")
        nz = sum(r.nonzeros for r in self.rows)
        size = sum(r.size for r in self.rows)
        lines.append(f"total: {len(self.rows)} weights, {size} elements, density {self.total_density:.4f} "
                     f"({size - nz} zeros)")
        for key, path in self.files.items():
            lines.append(f"{key:12s} {path}  ({_fmt_bytes(self.file_sizes.get(key))})")
        if self.compression_ratio is not None:
            lines.append(f"compressed ONNX is {self.compression_ratio:.3f}x the plain ONNX "
                         f"({self.file_sizes['onnx'] - self.file_sizes['onnx_sparse']} bytes smaller)")
        for c in self.output_checks:
            lines.append(f"output {c.name} [{c.what}]: max abs err {c.max_abs_err:.3g}, "
                         f"max rel err {c.max_rel_err:.3g} -> {'ok' if c.ok else 'FAIL'}")
        if self.deployment:
            from ..report.deployment import SCOPE_NOTE

            lines.append(f"deployment: {self.deployment.get('summary')} {SCOPE_NOTE}")
        if self.lite_command:
            lines.append(f"Paddle Lite (sparse kernels): {self.lite_command}")
        if self.sparse_cpu:
            lines.extend(format_sparse_cpu(self.sparse_cpu))
        for w in self.warnings:
            lines.append(f"warning: {w}")
        for f in self.failures:
            lines.append(f"FAILED: {f}")
        if self.verified:
            lines.append("verification: " + ("passed" if self.ok else "FAILED"))
        else:
            lines.append("verification: skipped")
        return "\n".join(lines)


def format_sparse_cpu(section: Dict[str, Any]) -> List[str]:
    """The sparse-cpu target's x86 verdict: one line per measured layer, then the end-to-end sentence."""
    lines = []
    for p in section.get("layers") or []:
        what = (f"converted, {p['speedup']:.2f}x" if p.get("converted") else f"dense ({p.get('reason')})")
        lines.append(f"sparse-cpu {p['name']} [{p['kind']} {'x'.join(map(str, p['shape']))}, "
                     f"{p['nnz']} nonzeros, density {p['density']:.3f}]: {what}")
    lines.append(f"x86 verdict: {section.get('verdict')}")
    return lines


def file_sizes(files: Dict[str, str]) -> Dict[str, int]:
    """Size in bytes of every existing file of ``files`` (key -> path)."""
    return {k: os.path.getsize(p) for k, p in files.items() if os.path.isfile(p)}
