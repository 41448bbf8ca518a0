"""Verification of an export: the ONNX files and the Lite model against the saved Paddle 3 inference model."""
from __future__ import annotations

import logging
from typing import Any, Optional

from ..loading import SavedModel
from .diagnose import find_divergence
from .export_report import ExportReport
from .onnx_sparse import densify, onnx_tensors
from .verify import compare_outputs, match_weights, random_feeds, run_onnx

__all__ = ["check_no_masks", "verify_onnx", "verify_lite"]

_log = logging.getLogger(__name__)


def check_no_masks(report: ExportReport, saved: SavedModel) -> None:
    from paddleslim_static.core.naming import is_mask_name

    leftovers = [n for n in saved.var_names if is_mask_name(n)]
    if leftovers:
        report.failures.append(f"mask variables left in the Paddle inference model: {leftovers[:5]}")


def _weight_failures(report: ExportReport, checks: Any, where: str) -> None:
    for m in checks:
        if m.how is None and m.sparse:
            report.failures.append(f"sparse weight {m.name} not found in the {where}")
        elif m.how is None:
            report.warnings.append(f"dense weight {m.name} not found in the {where} (folded or unused?)")
        elif not m.pattern_ok:
            report.failures.append(f"weight {m.name}: {where} tensor {m.onnx_name} ({m.how}) has a different zero "
                                   f"pattern ({m.pattern_mismatches} elements)")


def verify_onnx(report: ExportReport, saved: SavedModel, plain: Any, plain_path: str, sparse_path: Optional[str],
                seed: int, rtol: float) -> None:
    """Zeros weight by weight, onnxruntime vs Paddle outputs, compressed == plain; failures go into ``report``.

    When the outputs disagree, the failure names the first op the ONNX model does not reproduce.
    """
    import onnx

    report.verified = True
    weights = {n: w for n, w in saved.weights.items() if w.dtype.kind == "f"}
    checks = match_weights(weights, onnx_tensors(plain), rtol=rtol)
    report.weight_checks = checks
    rows = {r.name: r for r in report.rows}
    for m in checks:
        row = rows.get(m.name)
        if row is not None:
            row.onnx_name, row.match, row.pattern_ok = m.onnx_name, m.how, m.pattern_ok
    _weight_failures(report, checks, "ONNX model")
    feeds = random_feeds(saved.feed_specs, seed=seed)
    ref = saved.run(feeds)
    names, got = run_onnx(plain_path, feeds)
    outs = compare_outputs(names, ref, got, rtol=rtol, atol_scale=rtol)
    if sparse_path is not None:
        if densify(onnx.load_model(sparse_path)).SerializeToString() != plain.SerializeToString():
            report.failures.append("compressed ONNX, densified, differs from the plain ONNX")
        _, got_sparse = run_onnx(sparse_path, feeds)
        outs += compare_outputs(names, got, got_sparse, rtol=0.0, atol_scale=0.0, what="sparse vs plain onnx")
    report.output_checks += outs
    bad = [c for c in outs if not c.ok]
    for c in bad:
        report.failures.append(f"output {c.name} ({c.what}) differs: max abs err {c.max_abs_err:.3g}, "
                               f"max rel err {c.max_rel_err:.3g}")
    if any(c.what == "onnx vs paddle" for c in bad):
        try:
            div = find_divergence(saved, plain, feeds)
        except Exception as e:  # the diagnosis must never hide the failure itself
            _log.warning("export: could not locate the diverging op: %s", e)
            div = None
        report.diagnosis = div.describe() if div else "no single op located: the difference accumulates"
        report.failures.append(report.diagnosis)


def verify_lite(report: ExportReport, reference: SavedModel, lite: SavedModel, seed: int, rtol: float) -> None:
    """The legacy-IR Lite model against the Paddle 3 model: same weights (zeros included), same outputs."""
    report.verified = True
    weights = {n: w for n, w in reference.weights.items() if w.dtype.kind == "f"}
    lite_weights = {n: w for n, w in lite.weights.items() if w.dtype.kind == "f"}
    checks = match_weights(weights, lite_weights, rtol=0.0)
    report.lite_weight_checks = checks
    _weight_failures(report, checks, "Lite model")
    feeds = random_feeds(reference.feed_specs, seed=seed)
    lite_feeds = {n: feeds[n] for n in lite.feed_names if n in feeds}
    if len(lite_feeds) != len(lite.feed_names):
        report.failures.append(f"Lite model inputs {lite.feed_names} differ from the Paddle model's "
                               f"{reference.feed_names}")
        return
    outs = compare_outputs([f"{i}" for i in range(len(reference.fetch))], reference.run(feeds),
                           lite.run(lite_feeds), rtol=rtol, atol_scale=rtol, what="lite vs paddle")
    report.output_checks += outs
    for c in outs:
        if not c.ok:
            report.failures.append(f"output {c.name} ({c.what}) differs: max abs err {c.max_abs_err:.3g}, "
                                   f"max rel err {c.max_rel_err:.3g}")
