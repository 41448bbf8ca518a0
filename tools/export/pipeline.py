"""The back half every export shares, once the Paddle 3 inference model is saved into the staging directory:
convert (ONNX) -> compress -> verify (ONNX, Lite) -> report. Each step returns a small result object."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, List, Optional

from ..loading import SavedModel, model_files
from .checks import check_no_masks, verify_lite, verify_onnx
from .export_report import ExportReport, file_sizes, layer_rows
from .layout import lite_prefix, model_prefix, report_path
from .lite import lite_command
from .onnx_sparse import canonicalize, compress as compress_model
from .p2o_convert import convert
from .sparse_cpu import SparseCpuResult, check_sparse_model
from .specs import ExportOptions
from .verify import random_feeds

__all__ = ["Timer", "OnnxResult", "CompressResult", "LiteResult", "convert_onnx", "compress_onnx", "finish"]


class Timer:
    """Named wall-clock timings: ``with timer("paddle_save"): ...``."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def __call__(self, key: str) -> "_Span":
        return _Span(self.seconds, key)


class _Span:
    def __init__(self, into: Dict[str, float], key: str) -> None:
        self.into, self.key = into, key

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.into[self.key] = self.into.get(self.key, 0.0) + time.perf_counter() - self.start


@dataclasses.dataclass
class OnnxResult:
    path: str
    model: Any  # onnx.ModelProto, canonical form
    opset: Optional[int]  # the opset the file actually has


@dataclasses.dataclass
class CompressResult:
    path: Optional[str]  # None: not written, it would not have been smaller than the plain ONNX
    stored_sparse: List[str]
    size: int = 0  # bytes of the compressed model (written or not)


@dataclasses.dataclass
class LiteResult:
    model_file: str
    params_file: str


def convert_onnx(saved: SavedModel, model_file: str, params_file: str, opts: ExportOptions) -> OnnxResult:
    """paddle2onnx (child process), the optional user transform, canonical form; saved as ``NAME.onnx``."""
    import onnx

    data = convert(model_file, params_file, opts.opset, op_names=saved.op_names)
    model = onnx.load_model_from_string(data)
    if opts.onnx_transform is not None:
        model = opts.onnx_transform(model) or model
    plain = canonicalize(model)
    path = saved.prefix + ".onnx"
    onnx.save_model(plain, path)
    got = max((o.version for o in plain.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return OnnxResult(path, plain, got)


def compress_onnx(result: OnnxResult, opts: ExportOptions) -> CompressResult:
    """``NAME.sparse.onnx``: weights stored as ``sparse_initializer`` where that is smaller (or ``sparse_cutoff``);
    not written when the file would not be smaller than ``NAME.onnx`` (a "compressed" model that is larger)."""
    small, stored = compress_model(result.model, opts.sparse_cutoff)
    data = small.SerializeToString()
    if len(data) >= os.path.getsize(result.path):
        return CompressResult(None, [], len(data))
    path = os.path.splitext(result.path)[0] + ".sparse.onnx"
    with open(path, "wb") as f:
        f.write(data)
    return CompressResult(path, stored, len(data))


def _deployment(report: ExportReport, saved: SavedModel, opts: ExportOptions) -> None:
    """The deployment-eligibility verdicts of :mod:`paddleslim_tools.report.deployment` for the saved model."""
    from paddleslim_static.programs import static_mode

    from ..report.deployment import deployment_report

    if len(saved.feed_specs) != 1:
        report.warnings.append(f"deployment report skipped: it takes one input, the model has "
                               f"{len(saved.feed_specs)}")
        return
    shape = [1 if d is None or int(d) < 0 else int(d) for d in saved.feed_specs[0][1]]
    try:
        with static_mode(pir=not saved.legacy):
            result = deployment_report(saved.program, shape, scope=saved.scope,
                                       sparse_threshold=opts.sparse_threshold)
    except Exception as e:  # a report section must never fail the export
        report.warnings.append(f"deployment report unavailable: {type(e).__name__}: {e}")
        return
    report.deployment = result.to_dict()


def check_nm_pattern(report: ExportReport, saved: SavedModel, nm_pattern: str) -> None:
    """Every qualifying weight of the saved Paddle model must be ``nm_pattern`` ('N:M') sparse (else a failure in
    ``report``); what an export with ``nm_pattern`` and ``verify_export(..., nm_pattern=)`` check."""
    from paddleslim_static.core.nm import parse_pattern
    from paddleslim_static.nm import check_nm
    from paddleslim_static.programs import static_mode

    n, m = parse_pattern(nm_pattern, "nm_pattern")
    with static_mode(pir=not saved.legacy):
        verdicts = check_nm(saved.program, n, m, scope=saved.scope)
    checked = {k: v for k, v in verdicts.items() if not v.skipped}
    report.nm = {"pattern": f"{n}:{m}", "checked": {k: bool(v.ok) for k, v in checked.items()},
                 "skipped": {k: v.reason for k, v in verdicts.items() if v.skipped}}
    bad = [f"{k} ({v.violations}/{v.groups} groups)" for k, v in checked.items() if not v.ok]
    if not checked:
        report.failures.append(f"nm_pattern {n}:{m}: the model has no weight an N:M pattern applies to")
    elif bad:
        report.failures.append(f"weights not {n}:{m} sparse: {', '.join(bad[:5])}")


def _sparse_cpu(report: ExportReport, result: SparseCpuResult, saved: SavedModel, model_file: str,
                params_file: str, opts: ExportOptions, local: Dict[str, str]) -> None:
    """Verify the sparse-cpu model (written only when it was measured faster) against the dense one; report it."""
    if result.model_file is not None and opts.verify:
        feeds = random_feeds(saved.feed_specs, seed=opts.seed, dynamic_dim=1)
        checks = check_sparse_model(result, model_file, params_file, feeds, opts.rtol)
        report.output_checks += checks
        for c in checks:
            if not c.ok:
                report.failures.append(f"output {c.name} ({c.what}) differs: max abs err {c.max_abs_err:.3g}, "
                                       f"max rel err {c.max_rel_err:.3g}")
        report.verified = True
    if result.model_file is not None:
        local["sparse_cpu_model"], local["sparse_cpu_params"] = result.model_file, result.params_file
    report.sparse_cpu = result.to_dict()


def finish(tmp: str, final: str, opts: ExportOptions, legacy: bool, timer: Timer,
           structured: Optional[Dict[str, str]] = None, lite: Optional[LiteResult] = None,
           sparse_cpu: Optional[SparseCpuResult] = None) -> ExportReport:
    """Convert, compress, verify and report the model saved at ``tmp/NAME``; writes ``NAME_report.json``.

    ``lite``: the legacy-IR model written for Paddle Lite (None when the Paddle model itself is legacy IR).
    ``sparse_cpu``: what the sparse-cpu target did (its model, if written, is checked and timed here).
    ``structured``: Paddle parameter name -> structured name (``features.3.weight``), in model order.
    """
    prefix = model_prefix(tmp, opts.name)
    at_final = lambda p: os.path.join(final, os.path.relpath(p, tmp))  # noqa: E731
    model_file, params_file, _ = model_files(prefix)
    saved = SavedModel(prefix, legacy)
    report = ExportReport(name=opts.name, out_dir=final, opset=opts.opset, sparse_cutoff=opts.sparse_cutoff,
                          timings=timer.seconds, target=opts.target)
    check_no_masks(report, saved)
    if opts.nm_pattern is not None:
        check_nm_pattern(report, saved, opts.nm_pattern)
    local = {"paddle_model": model_file, "paddle_params": params_file}
    plain = packed = None
    if opts.onnx:
        with timer("onnx_convert"):
            plain = convert_onnx(saved, model_file, params_file, opts)
        local["onnx"] = plain.path
        if plain.opset != opts.opset:
            report.warnings.append(f"ONNX model has opset {plain.opset}, requested {opts.opset}")
        if opts.compress:
            with timer("compress"):
                packed = compress_onnx(plain, opts)
            if packed.path is not None:
                local["onnx_sparse"] = packed.path
            else:
                report.warnings.append(
                    f"{opts.name}.sparse.onnx not written: it would be {packed.size} bytes, not smaller than "
                    f"{opts.name}.onnx ({os.path.getsize(plain.path)}); sparse storage pays off for weights with more "
                    "than 2/3 zeros (float32)")
                packed = None
    if opts.lite:
        lite = lite or LiteResult(model_file, params_file)
        local["lite_model"], local["lite_params"] = lite.model_file, lite.params_file
        report.lite_command = lite_command(at_final(lite.model_file), at_final(lite.params_file),
                                           at_final(lite_prefix(tmp, opts.name) + "_sparse"), opts.sparse_threshold)
    report.rows = layer_rows(saved.weights, structured)
    stored = set(packed.stored_sparse) if packed else set()
    for r in report.rows:
        r.stored_sparse = r.name in stored
    if opts.verify:
        with timer("verify"):
            if lite is not None and lite.model_file != model_file:
                lite_saved = SavedModel(lite_prefix(tmp, opts.name), legacy=True)
                verify_lite(report, saved, lite_saved, opts.seed, opts.rtol)
            if plain is not None:  # last: locating a diverging op adds fetch ops to saved.program
                verify_onnx(report, saved, plain.model, plain.path, packed.path if packed else None, opts.seed,
                            opts.rtol)
    if sparse_cpu is not None:
        with timer("sparse_cpu_check"):
            _sparse_cpu(report, sparse_cpu, saved, model_file, params_file, opts, local)
    with timer("deployment_report"):
        _deployment(report, saved, opts)
    if report.deployment is not None and report.sparse_cpu is not None:  # the x86 verdict beside the ARM ones
        report.deployment["x86_sparse_cpu"] = {
            "verdict": report.sparse_cpu["verdict"],
            "layers": [{k: p[k] for k in ("name", "weight", "converted", "speedup", "reason")}
                       for p in report.sparse_cpu["layers"]]}
    report.file_sizes = file_sizes(local)
    local["report"] = report_path(tmp, opts.name)
    report.files = {k: at_final(p) for k, p in local.items()}
    with open(local["report"], "w", encoding="utf-8") as f:
        f.write(report.to_json())
    return report
