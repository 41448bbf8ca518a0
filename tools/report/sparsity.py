"""Per-layer sparsity report of a model, a program, a saved inference model or a checkpoint.

It only reads weights (through :mod:`paddleslim_tools.loading`) and needs neither onnx nor paddle2onnx; the export's
own report (files, ONNX checks) is :mod:`paddleslim_tools.export.export_report`.

>>> import paddle
>>> from paddleslim_dygraph import UnstructuredPruner
>>> from paddleslim_tools.report import sparsity_report
>>> net = paddle.nn.Sequential(paddle.nn.Linear(16, 8), paddle.nn.Linear(8, 2))
>>> pruner = UnstructuredPruner(net, "ratio", ratio=0.5)
>>> pruner.step()
>>> rep = sparsity_report(net, pruner=pruner)
>>> round(rep.prunable_density, 2), [r.prunable for r in rep.layers]
(0.5, [True, False, True, False])
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..loading import MASK_SUFFIX, SavedModel, fold_checkpoint_masks, is_legacy_program, load_checkpoint, \
    program_weights
from .plots import require_matplotlib, write_plots

__all__ = ["WeightCount", "LayerStat", "SparsityReport", "sparsity_report", "load_weights", "schedule_points", "rows_density",
           "NEAR_EMPTY"]

NEAR_EMPTY = 0.1  # a layer below this fraction of the model's prunable density is flagged near-empty
PathLike = Union[str, "os.PathLike[str]"]


@dataclasses.dataclass
class WeightCount:
    """One weight's name, shape, dtype and nonzero count: what every report row starts with (this report's
    :class:`LayerStat`, the export report's ``LayerRow``)."""

    name: str
    shape: List[int]
    dtype: str
    size: int
    nonzeros: int
    density: float


@dataclasses.dataclass
class LayerStat(WeightCount):
    """One weight: its name, shape, density and (when a pruner says so) threshold and prunable flag."""

    threshold: Optional[float] = None
    prunable: Optional[bool] = None
    layer: Optional[str] = None  # structured name in a dygraph model / checkpoint key


@dataclasses.dataclass
class SparsityReport:
    """What :func:`sparsity_report` found; ``weights`` (name -> array) feed the |w| histogram, not the JSON."""

    source: str
    kind: str
    layers: List[LayerStat]
    threshold: Optional[float] = None
    history: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def density(self) -> float:
        """Nonzero / all elements over every weight."""
        return rows_density(self.layers)

    @property
    def prunable_density(self) -> Optional[float]:
        """Density over the prunable weights (None when nothing says which weights are prunable)."""
        rows = [r for r in self.layers if r.prunable]
        return rows_density(rows) if rows else None

    def flags(self) -> List[Dict[str, Any]]:
        """Layers that lost (almost) everything: ``empty`` (no nonzero weight) or ``near-empty`` (density below
        ``NEAR_EMPTY`` times the prunable density of the model). Checked over the prunable weights, or, when
        nothing says which are prunable, over the weights of rank >= 2. A collapsed layer often means a model
        that outputs one class; ``sparsity_allocation='erk'`` / ``min_density`` keep layers away from it.

        >>> rep = SparsityReport("m", "model", [LayerStat("a", [4, 4], "float32", 16, 0, 0.0, prunable=True),
        ...                                     LayerStat("b", [8, 8], "float32", 64, 32, 0.5, prunable=True)])
        >>> [(f["name"], f["flag"]) for f in rep.flags()]
        [('a', 'empty')]
        """
        known = any(r.prunable is not None for r in self.layers)
        rows = [r for r in self.layers if (r.prunable if known else len(r.shape) >= 2)]
        ref = rows_density(rows, empty=0.0)
        out = []
        for r in rows:
            if r.size and r.nonzeros == 0:
                out.append({"name": r.name, "flag": "empty", "nonzeros": 0, "size": r.size})
            elif r.size and r.density < NEAR_EMPTY * ref:
                out.append({"name": r.name, "flag": "near-empty", "nonzeros": r.nonzeros, "size": r.size})
        return out

    def format_table(self, max_rows: Optional[int] = None) -> str:
        """Fixed-width table: parameter, layer, shape, density, threshold, pruned."""
        head = ("parameter", "layer", "shape", "density", "threshold", "pruned")
        rows = [head]
        for r in self.layers[:max_rows]:
            rows.append((r.name, r.layer or "-", "x".join(map(str, r.shape)) or "scalar", f"{r.density:.4f}",
                         "-" if r.threshold is None else f"{r.threshold:.4g}",
                         "?" if r.prunable is None else ("yes" if r.prunable else "no")))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if max_rows is not None and len(self.layers) > max_rows:
            lines.append(f"... {len(self.layers) - max_rows} more rows")
        pd = self.prunable_density
        lines.append(f"total: {len(self.layers)} weights, density {self.density:.4f}"
                     + ("" if pd is None else f"; prunable weights density {pd:.4f} (sparsity {1 - pd:.4f})"))
        for f in self.flags():
            lines.append(f"{f['flag'].upper()}: {f['name']} keeps {f['nonzeros']} of {f['size']} weights"
                         + (" (below a tenth of the model's prunable density)" if f["flag"] == "near-empty" else ""))
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (no arrays)."""
        return {"source": self.source, "kind": self.kind, "density": self.density,
                "prunable_density": self.prunable_density, "threshold": self.threshold,
                "layers": [dataclasses.asdict(r) for r in self.layers], "history": self.history,
                "flags": self.flags(), **self.extra}

    def write(self, out_dir: PathLike, stem: str = "sparsity", plots: bool = True,
              density_weights: str = "prunable") -> Dict[str, str]:
        """Write ``stem.txt`` (the table), ``stem.json`` and, with ``plots``, the PNGs; returns kind -> path.
        ``density_weights``: the density plot shows the ``"prunable"`` weights (default) or ``"all"``.

        Raises ImportError (one line naming the ``plot`` extra) when ``plots`` and matplotlib is missing;
        then nothing is written.
        """
        if plots:
            require_matplotlib()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"table": str(out / f"{stem}.txt"), "json": str(out / f"{stem}.json")}
        Path(files["table"]).write_text(self.format_table() + "\n", encoding="utf-8")
        Path(files["json"]).write_text(json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n",
                                       encoding="utf-8")
        if plots:
            files.update(write_plots(self, out, stem, density_weights=density_weights))
        return files


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def rows_density(rows: Sequence[Any], empty: float = 1.0) -> float:
    """Nonzero / all elements over report rows (anything with ``nonzeros`` and ``size``: this report's
    :class:`LayerStat`, the export report's rows); ``empty`` when they hold no element.

    >>> rows_density([LayerStat("a", [4], "float32", 4, 1, 0.25), LayerStat("b", [4], "float32", 4, 3, 0.75)])
    0.5
    """
    size = sum(r.size for r in rows)
    return sum(r.nonzeros for r in rows) / size if size else empty


def _checkpoint_weights(state: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray], Dict[str, bool]]:
    """The float entries of a state dict with their pruner masks folded in, and which of them had a mask."""
    folded, _ = fold_checkpoint_masks(state)
    weights = {k: v for k, v in folded.items() if np.issubdtype(v.dtype, np.floating)}  # not counters, packed state
    return weights, {k: (k + MASK_SUFFIX) in state for k in weights}


def load_weights(source: Any, scope: Any = None) -> Tuple[str, Dict[str, np.ndarray], Dict[str, str], Dict[str, bool]]:
    """(kind, name -> array, name -> structured name, name -> has a pruner mask) of any supported source.

    Checkpoint masks (``<key>_mask``: bool, or bit-packed uint8) are folded into their weights.
    """
    import paddle

    if isinstance(source, paddle.nn.Layer):
        weights, structured, masked = {}, {}, {}
        for lname, layer in source.named_sublayers(include_self=True):
            buffers = {n for n, _ in layer.named_buffers(include_sublayers=False)}
            for attr, p in layer.named_parameters(include_sublayers=False):
                if p.name in weights:
                    continue
                weights[p.name] = np.array(p.numpy())
                structured[p.name] = f"{lname}.{attr}" if lname else attr
                masked[p.name] = (attr + MASK_SUFFIX) in buffers
        return "dygraph model", weights, structured, masked
    if isinstance(source, Mapping):
        weights, masked = _checkpoint_weights(source)
        return "state dict", weights, {}, masked
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.endswith(".pdparams") or path.endswith(".pdopt"):
            weights, masked = _checkpoint_weights(load_checkpoint(path))
            return "checkpoint", weights, {}, masked
        saved = SavedModel(path)
        return ("legacy inference model" if saved.legacy else "inference model"), saved.weights, {}, {}
    is_legacy_program(source)  # TypeError for anything that is not a program
    weights = program_weights(source, scope)
    sc = scope if scope is not None else paddle.static.global_scope()
    masked = {n: sc.find_var(n + MASK_SUFFIX) is not None for n in weights}
    return "static program", weights, {}, masked


def schedule_points(schedule: Any, total_iterations: int) -> List[List[float]]:
    """[[iteration, ratio], ...] where a GMP schedule's ratio changes (plus the last iteration)."""
    if not isinstance(total_iterations, int) or total_iterations < 1:
        raise ValueError(f"total_iterations must be an int >= 1; got {total_iterations!r}")
    points: List[List[float]] = []
    prev = None
    for i in range(total_iterations):
        r = float(schedule.ratio_at(i))
        if r != prev:
            points.append([i, r])
            prev = r
    points.append([total_iterations - 1, prev])
    return points


def sparsity_report(source: Any, *, scope: Any = None, pruner: Any = None,
                    history: Optional[Dict[str, Any]] = None) -> SparsityReport:
    """Per-weight density of ``source``: a ``paddle.nn.Layer``, a static ``Program`` (weights read from
    ``scope``, default the global scope), an inference-model prefix (``.json`` or ``.pdmodel``), a ``.pdparams``
    checkpoint path or a state dict.

    ``pruner`` (dygraph or static, optional) marks which weights are prunable and gives the thresholds; without
    it, weights with a ``<name>_mask`` (buffer, scope variable or checkpoint entry) count as prunable when any
    exists. ``history`` (optional): ``{"schedule": [[iteration, ratio], ...], "measured": [[iteration,
    sparsity], ...]}`` for the schedule plot (see :func:`schedule_points`), or a report that carries one under
    ``"history"`` (the ``sparsity.json`` the demo and :meth:`SparsityReport.write` write).
    """
    if isinstance(history, Mapping) and isinstance(history.get("history"), Mapping):
        history = history["history"]
    if history is not None:
        if not isinstance(history, Mapping) or not any(k in history for k in ("schedule", "measured")):
            raise ValueError(f"history must be a dict with 'schedule' and/or 'measured' lists; got {history!r:.80}")
        for key in ("schedule", "measured"):
            pts = history.get(key, [])
            if not isinstance(pts, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pts):
                raise ValueError(f"history[{key!r}] must be a list of [iteration, value] pairs")
    if pruner is not None and not hasattr(pruner, "masks"):
        raise TypeError(f"pruner must be a paddleslim pruner (with .masks); got {type(pruner).__name__}")
    kind, weights, structured, masked = load_weights(source, scope)
    if pruner is not None:
        prunable = set(pruner.masks)
        if not prunable.issubset(weights):
            raise ValueError(f"pruner prunes {sorted(prunable - set(weights))[:3]}, which {kind} does not have")
    else:
        prunable = {n for n, m in masked.items() if m}
    threshold = float(pruner.threshold) if pruner is not None and getattr(pruner, "threshold", None) is not None \
        else None
    per = dict(getattr(pruner, "thresholds", None) or {}) if pruner is not None else {}
    layers = []
    for name, arr in weights.items():
        nz = int(np.count_nonzero(arr))
        known = pruner is not None or bool(prunable)
        is_p = (name in prunable) if known else None
        thr = (per.get(name, threshold) if is_p else None)
        layers.append(LayerStat(name=name, shape=[int(d) for d in arr.shape], dtype=str(arr.dtype), size=int(arr.size),
                                nonzeros=nz, density=nz / arr.size if arr.size else 1.0,
                                threshold=None if thr is None else float(thr), prunable=is_p,
                                layer=structured.get(name)))
    label = source if isinstance(source, (str, os.PathLike)) else type(source).__name__
    return SparsityReport(source=os.fspath(label) if isinstance(label, os.PathLike) else str(label), kind=kind,
                          layers=layers, threshold=threshold, history=dict(history) if history else None,
                          weights=weights)
