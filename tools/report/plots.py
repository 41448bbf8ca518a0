"""PNG plots of a sparsity report (matplotlib, the optional ``plot`` extra; Agg backend, no display needed).

* ``<stem>_density.png``   - per-weight density bars of the prunable weights (or all), at most 960 px high;
* ``<stem>_schedule.png``  - the GMP schedule against iterations with the measured sparsity on top (when the
  report has a history);
* ``<stem>_histogram.png`` - histogram of |w| of the prunable weights (log scale) with the threshold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Union

import numpy as np

__all__ = ["require_matplotlib", "density_rows", "density_figure", "plot_density", "plot_schedule", "plot_histogram",
           "write_plots", "PLOT_EXTRA_HINT", "DENSITY_WEIGHTS"]

class Report(Protocol):
    """What the plots read of a :class:`~paddleslim_tools.report.sparsity.SparsityReport` (which imports this
    module, not the other way round): rows with ``name``, ``layer``, ``shape``, ``density``, ``prunable``,
    ``threshold``; the two densities; the weights; the history."""

    layers: Sequence[Any]
    weights: Dict[str, np.ndarray]
    history: Optional[Dict[str, Any]]

    @property
    def density(self) -> float: ...

    @property
    def prunable_density(self) -> Optional[float]: ...


PLOT_EXTRA_HINT = "plots need matplotlib: pip install \"paddleslim-sparsity[plot]\" (or pass --no-plots)"


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; ImportError with a one-line install hint when missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(PLOT_EXTRA_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


DENSITY_WEIGHTS = ("prunable", "all")
_MAX_HEIGHT_IN = 9.6  # 960 px at the 100 dpi the plots are saved with: one screen
_MAX_LABELS = 60  # more rows than that: every k-th row is labelled


def density_rows(report: Report, weights: str = "prunable") -> List[Any]:
    """The rows the density plot shows: ``"prunable"`` (default) the prunable weights - when nothing says which
    are, the >= 2-D ones - or ``"all"``; every row when the selection is empty."""
    if weights not in DENSITY_WEIGHTS:
        raise ValueError(f"weights must be one of {list(DENSITY_WEIGHTS)}; got {weights!r}")
    rows = report.layers
    if weights == "prunable":
        known = any(r.prunable is not None for r in rows)
        picked = [r for r in rows if r.prunable] if known else [r for r in rows if len(r.shape) >= 2]
        rows = picked or rows
    return list(rows)


def density_figure(report: Report, weights: str = "prunable") -> Any:
    """The density bars as a matplotlib figure, at most 960 px high whatever the number of weights."""
    plt = require_matplotlib()
    rows = density_rows(report, weights)
    n = len(rows)
    labels = [f"{r.layer or r.name}  {'x'.join(map(str, r.shape)) or 'scalar'}" for r in rows]
    colors = ["tab:blue" if r.prunable else ("tab:gray" if r.prunable is None else "lightgray") for r in rows]
    height = min(_MAX_HEIGHT_IN, 1.4 + 0.26 * n)
    fig, ax = plt.subplots(figsize=(8.5, height))
    y = np.arange(n)
    ax.barh(y, [r.density for r in rows], color=colors, height=0.8)
    step = max(1, -(-n // _MAX_LABELS))
    font = max(5.0, min(8.0, 0.75 * 72 * (height - 1.4) / max(1, -(-n // step))))
    if step == 1 and n <= 40:
        for yi, r in zip(y, rows):
            ax.text(min(r.density, 1.0) + 0.01, yi, f"{r.density:.3f}", va="center", fontsize=font)
    ax.set_yticks(y[::step], labels[::step], fontsize=font)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("density (nonzero / all)" + (f"; one label per {step} weights" if step > 1 else ""))
    shown = "prunable weights" if weights == "prunable" and any(r.prunable for r in rows) else (
        ">= 2-D weights" if weights == "prunable" and len(rows) < len(report.layers) else "weights")
    title = f"density of {n} {shown}" + (f" (of {len(report.layers)})" if n < len(report.layers) else "")
    pd = report.prunable_density
    sub = f"all weights {report.density:.3f}" + ("" if pd is None else f", prunable {pd:.3f}")
    ax.set_title(f"{title}\n{sub}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_density(report: Report, path: Union[str, Path], weights: str = "prunable") -> str:
    """Horizontal bars: density of every prunable weight (``weights="all"``: every weight), structured name and
    shape as labels, readable on one screen for any network (see :func:`density_figure`)."""
    plt = require_matplotlib()
    fig = density_figure(report, weights)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_schedule(history: Dict[str, Any], path: Union[str, Path]) -> str:
    """The schedule's ratio as a step line against iterations, the measured sparsity as dots on top."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4))
    sched = history.get("schedule") or []
    if sched:
        xs = [p[0] for p in sched]
        ys = [p[1] for p in sched]
        ax.step(xs, ys, where="post", color="tab:blue", label="GMP schedule (target ratio)")
    meas = history.get("measured") or []
    if meas:
        ax.plot([p[0] for p in meas], [p[1] for p in meas], "o", ms=3.5, color="tab:orange",
                label="measured sparsity of the prunable weights")
    target = history.get("target")
    if target is not None:
        ax.axhline(target, color="0.6", lw=0.8, ls="--", label=f"target {target:.0%}")
    ax.set_xlabel("iteration (optimizer steps)")
    ax.set_ylabel("sparsity")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("GMP schedule and measured sparsity", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_histogram(report: Report, path: Union[str, Path], bins: int = 80) -> str:
    """Histogram of nonzero |w| of the prunable weights (all >= 2-D weights when unknown), log x axis,
    the number of zeros in the legend, the threshold(s) as vertical lines."""
    plt = require_matplotlib()
    names = [r.name for r in report.layers if r.prunable] or \
        [r.name for r in report.layers if r.prunable is None and len(r.shape) >= 2]
    vals = np.concatenate([np.abs(report.weights[n]).ravel() for n in names if n in report.weights]) \
        if names else np.zeros(0)
    nz = vals[vals > 0].astype(np.float64)
    fig, ax = plt.subplots(figsize=(7, 4))
    if nz.size:
        lo, hi = max(nz.min(), 1e-12), nz.max()
        edges = np.logspace(np.log10(lo), np.log10(hi * 1.0001), bins)
        ax.hist(nz, bins=edges, color="tab:blue", alpha=0.8,
                label=f"nonzero |w| ({nz.size} of {vals.size}; {vals.size - nz.size} zeros)")
        ax.set_xscale("log")
    thresholds = sorted({r.threshold for r in report.layers if r.name in names and r.threshold is not None})
    for i, t in enumerate(thresholds[:8]):
        if t > 0:
            ax.axvline(t, color="tab:red", lw=1.2, label=f"threshold {t:.4g}" if i < 3 else None)
    ax.set_xlabel("|w|")
    ax.set_ylabel("count")
    ax.set_title("|w| of the prunable weights" if any(r.prunable for r in report.layers)
                 else "|w| of the >= 2-D weights", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def write_plots(report: Report, out_dir: Union[str, Path], stem: str = "sparsity",
                history: Optional[Dict[str, Any]] = None, density_weights: str = "prunable") -> Dict[str, str]:
    """All plots of ``report`` into ``out_dir``; returns {"density_png": path, ...}."""
    out = Path(out_dir)
    files = {"density_png": plot_density(report, out / f"{stem}_density.png", density_weights),
             "histogram_png": plot_histogram(report, out / f"{stem}_histogram.png")}
    hist = history or report.history
    if hist:
        files["schedule_png"] = plot_schedule(hist, out / f"{stem}_schedule.png")
    return files
