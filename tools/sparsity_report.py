"""Per-layer sparsity report of a model, a program, a saved inference model or a checkpoint.

Named ``sparsity_report`` because ``paddleslim_tools.report`` is the export tool's report (files, ONNX
verification); this one only reads weights and needs neither onnx nor paddle2onnx.

>>> import paddle
>>> from paddleslim_dygraph import UnstructuredPruner
>>> from paddleslim_tools.sparsity_report import sparsity_report
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
import math
import os
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["LayerStat", "SparsityReport", "sparsity_report", "load_weights", "unpack_mask", "schedule_points",
           "static_mode", "load_inference_model", "is_legacy_program", "in_model_order", "MASK_SUFFIX"]

MASK_SUFFIX = "_mask"
NEAR_EMPTY = 0.1  # a layer below this fraction of the model's prunable density is flagged near-empty
PathLike = Union[str, "os.PathLike[str]"]


@dataclasses.dataclass
class LayerStat:
    """One weight: its name, shape, density and (when a pruner says so) threshold and prunable flag."""

    name: str
    shape: List[int]
    dtype: str
    size: int
    nonzeros: int
    density: float
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
        size = sum(r.size for r in self.layers)
        return sum(r.nonzeros for r in self.layers) / size if size else 1.0

    @property
    def prunable_density(self) -> Optional[float]:
        """Density over the prunable weights (None when nothing says which weights are prunable)."""
        rows = [r for r in self.layers if r.prunable]
        size = sum(r.size for r in rows)
        return sum(r.nonzeros for r in rows) / size if size else None

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
        size = sum(r.size for r in rows)
        ref = sum(r.nonzeros for r in rows) / size if size else 0.0
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
            from .plots import require_matplotlib
            require_matplotlib()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"table": str(out / f"{stem}.txt"), "json": str(out / f"{stem}.json")}
        Path(files["table"]).write_text(self.format_table() + "\n", encoding="utf-8")
        Path(files["json"]).write_text(json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n",
                                       encoding="utf-8")
        if plots:
            from .plots import write_plots
            files.update(write_plots(self, out, stem, density_weights=density_weights))
        return files


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# -- static helpers (shared with paddleslim_tools.deployment) --------------------------------------------
def static_mode(legacy: bool = False) -> ContextManager[None]:
    """Static mode (legacy IR with ``legacy``) for the duration: the project's one guard,
    :func:`paddleslim_static.programs.static_mode`."""
    from paddleslim_static.programs import static_mode as _static_mode

    return _static_mode(pir=not legacy)


def is_legacy_program(program: Any) -> bool:
    """True for a legacy-IR ``Program``, False for a PIR one; TypeError for anything else."""
    import paddle

    if isinstance(program, paddle.pir.Program):
        return False
    from paddle.base.framework import Program as LegacyProgram
    if isinstance(program, LegacyProgram):
        return True
    raise TypeError(f"program must be a paddle static Program (PIR or legacy); got {type(program).__name__}")


def _model_file(prefix: PathLike) -> Tuple[str, bool]:
    p = os.fspath(prefix)
    for ext in (".json", ".pdmodel", ".pdiparams"):
        if p.endswith(ext):
            p = p[: -len(ext)]
    for ext, legacy in ((".json", False), (".pdmodel", True)):
        if os.path.isfile(p + ext):
            if not os.path.isfile(p + ".pdiparams"):
                raise FileNotFoundError(f"inference model {p!r}: parameter file {p + '.pdiparams'!r} not found")
            return p, legacy
    raise FileNotFoundError(f"inference model {p!r}: neither {p + '.json'!r} nor {p + '.pdmodel'!r} exists")


def load_inference_model(prefix: PathLike) -> Tuple[Any, Any, bool]:
    """(program, scope holding its weights, legacy?) of a saved inference model (``.json`` or ``.pdmodel``)."""
    import paddle

    path, legacy = _model_file(prefix)
    scope = paddle.static.Scope()
    with static_mode(legacy), paddle.static.scope_guard(scope):
        exe = paddle.static.Executor(paddle.CPUPlace())
        program, _, _ = paddle.static.load_inference_model(path, exe)
    return program, scope, legacy


def in_model_order(program: Any, names: Sequence[str]) -> List[str]:
    """``names`` (weights of ``program``) in the order the program's ops first read them - the model's order,
    which ``all_parameters()`` (reversed on a loaded PIR model) is not; unread ones last, as given."""
    legacy = is_legacy_program(program)
    wanted, seen = set(names), {}
    for op in program.global_block().ops:
        if legacy:
            reads = [n for slot in op.input_names for n in op.input(slot)]
        else:
            defs = [v.get_defining_op() for v in op.operands_source()]
            reads = [d.attrs().get("parameter_name") for d in defs if d is not None and d.name() == "builtin.parameter"]
        for n in reads:
            if n in wanted:
                seen.setdefault(n, len(seen))
    return sorted(names, key=lambda n: seen.get(n, len(seen)))


def _program_weights(program: Any, scope: Any) -> Dict[str, np.ndarray]:
    import paddle

    legacy = is_legacy_program(program)
    scope = scope if scope is not None else paddle.static.global_scope()
    block = program.global_block()
    names = [p.name for p in block.all_parameters()]
    if legacy and not names:  # a loaded legacy inference model: persistable dense tensors
        names = [n for n, v in block.vars.items() if v.persistable and n not in ("feed", "fetch")]
    names = in_model_order(program, names)
    out = {}
    for n in names:
        var = scope.find_var(n)
        if var is None:
            raise ValueError(f"scope has no variable {n!r} of the program (run the startup program, or pass "
                             "the scope the program ran in)")
        out[n] = np.array(var.get_tensor())
    return out


# -- weights of any source ---------------------------------------------------------------------------------
def unpack_mask(mask: np.ndarray, shape: Sequence[int], key: str = "mask") -> np.ndarray:
    """A pruner mask as bool of ``shape``: bool/0-1 arrays of that shape, or ``np.packbits`` of the flat mask.

    >>> unpack_mask(np.packbits([1, 0, 1]), (3,)).tolist()
    [True, False, True]
    """
    m = np.asarray(mask)
    n = int(np.prod(shape, dtype=np.int64))
    if m.shape == tuple(shape) and (m.dtype == np.bool_ or n != math.ceil(n / 8) or np.isin(m, (0, 1)).all()):
        return m.astype(bool)
    if m.dtype == np.uint8 and m.shape == (math.ceil(n / 8),):
        return np.unpackbits(m, count=n).astype(bool).reshape(tuple(shape))
    raise ValueError(f"{key}: shape {list(m.shape)} dtype {m.dtype} is neither a mask of shape {list(shape)} nor "
                     f"a bit-packed mask of {math.ceil(n / 8)} uint8")


def _checkpoint_weights(state: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray], Dict[str, bool]]:
    arrays: Dict[str, np.ndarray] = {}
    for k, v in state.items():  # numpy arrays (paddle.load(return_numpy=True)) or paddle Tensors
        if isinstance(v, (np.ndarray, np.generic)):
            arrays[k] = np.asarray(v)
        elif callable(getattr(v, "numpy", None)):
            arrays[k] = np.asarray(v.numpy())
    weights: Dict[str, np.ndarray] = {}
    masked: Dict[str, bool] = {}
    for k, v in arrays.items():
        base = k[: -len(MASK_SUFFIX)] if k.endswith(MASK_SUFFIX) else None
        if base is not None and base in arrays:
            continue
        if not np.issubdtype(v.dtype, np.floating):
            continue  # counters, packed state, integer buffers: not weights
        m = arrays.get(k + MASK_SUFFIX)
        if m is not None:
            v = v * unpack_mask(m, v.shape, k + MASK_SUFFIX).astype(v.dtype)
            masked[k] = True
        weights[k] = v
    return weights, masked


def load_weights(source: Any, scope: Any = None) -> Tuple[str, Dict[str, np.ndarray], Dict[str, str], Dict[str, bool]]:
    """(kind, name -> array, name -> structured name, name -> has a pruner mask) of any supported source.

    Checkpoint masks (``<key>_mask``: bool, or bit-packed uint8) are folded into their weights.
    """
    import paddle

    if isinstance(source, paddle.nn.Layer):
        weights, structured, masked = {}, {}, {}
        for lname, layer in source.named_sublayers(include_self=True):
            for attr, p in layer._parameters.items():
                if p is None or p.name in weights:
                    continue
                weights[p.name] = np.array(p.numpy())
                structured[p.name] = f"{lname}.{attr}" if lname else attr
                masked[p.name] = (attr + MASK_SUFFIX) in layer._buffers
        return "dygraph model", weights, structured, masked
    if isinstance(source, Mapping):
        weights, masked = _checkpoint_weights(source)
        return "state dict", weights, {}, masked
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.endswith(".pdparams") or path.endswith(".pdopt"):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"checkpoint {path!r} not found")
            state = paddle.load(path, return_numpy=True)
            if not isinstance(state, Mapping):
                raise ValueError(f"checkpoint {path!r} is not a state dict (got {type(state).__name__})")
            weights, masked = _checkpoint_weights(state)
            return "checkpoint", weights, {}, masked
        program, scope, legacy = load_inference_model(path)
        return ("legacy inference model" if legacy else "inference model"), _program_weights(program, scope), {}, {}
    is_legacy_program(source)  # TypeError for anything that is not a program
    weights = _program_weights(source, scope)
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
