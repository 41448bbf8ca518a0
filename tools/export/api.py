"""The public export functions: a dygraph layer, a dygraph checkpoint, a static program or inference model."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import paddle

from paddleslim_static.programs import program_mode

from ..errors import ExportError, one_line
from ..loading import SavedModel, build_network, folded_layer, folded_program, is_legacy_program, load_checkpoint, \
    model_files, np_dtype
from ..staging import check_out_dir, staging
from .checks import verify_lite, verify_onnx
from .export_report import ExportReport, file_sizes, layer_rows
from .extras import require_extra
from .layout import lite_prefix, model_prefix, report_path, sparse_cpu_prefix
from .lite import save_lite_layer
from .pipeline import LiteResult, Timer, check_nm_pattern, finish
from .sparse_cpu import (SparseCpuResult, check_sparse_model, kernels_or_skip, require_kernels, save_sparse_layer,
                         save_sparse_program, skipped)
from .specs import ExportOptions, check_input_spec
from .verify import random_feeds

__all__ = ["export_layer", "export_program", "export_checkpoint", "verify_export"]

_log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]


def _options(kwargs: Dict[str, Any]) -> ExportOptions:
    opts = ExportOptions(**kwargs)
    if opts.onnx:
        require_extra()
    return opts


def export_layer(layer: paddle.nn.Layer, input_spec: Sequence[paddle.static.InputSpec], out_dir: PathLike,
                 **options: Any) -> ExportReport:
    """Export a (pruned) dygraph layer; a live ``paddleslim_dygraph`` pruner's masks are folded in.

    ``options``: the fields of :class:`ExportOptions` (``name``, ``opset``, ``compress``, ``verify``,
    ``sparse_cutoff``, ``seed``, ``rtol``, ``onnx_transform``, ``target``, ``sparse_threshold``). The layer itself
    is left as it was (train/eval mode, live pruners attached again after the save).
    """
    if not isinstance(layer, paddle.nn.Layer):
        raise TypeError(f"layer must be a paddle.nn.Layer; got {type(layer).__name__}")
    specs = check_input_spec(input_spec)
    check_out_dir(out_dir)
    opts = _options(options)
    if not paddle.in_dynamic_mode():
        raise ExportError("export_layer needs dygraph mode (call paddle.disable_static() first)")
    unavailable = kernels_or_skip(opts.target) if opts.sparse_cpu else None  # before anything is written
    timer = Timer()
    with staging(out_dir, opts.outputs) as (tmp, final):
        with folded_layer(layer):  # only while saving: the pruners are live again for the verification
            lite, sparse = _save_layer(layer, specs, tmp, opts, timer, opts.sparse_cpu and unavailable is None)
        sparse = sparse or unavailable
        structured = {p.name: n for n, p in layer.named_parameters()}
        return finish(tmp, final, opts, False, timer, structured=structured, lite=lite, sparse_cpu=sparse)


def _save_layer(layer: paddle.nn.Layer, specs: List[paddle.static.InputSpec], tmp: str, opts: ExportOptions,
                timer: Timer, sparse_cpu: bool) -> Tuple[Optional[LiteResult], Optional[SparseCpuResult]]:
    """The Paddle 3 inference model of a folded layer in ``tmp``, and the legacy-IR one (Lite target) and the
    sparse one (sparse-cpu target; measured at the export's input shape, dynamic dimensions 1)."""
    with timer("paddle_save"):
        feeds = random_feeds([(s.name or f"x{i}", s.shape, np_dtype(s.dtype)) for i, s in enumerate(specs)],
                             seed=opts.seed, dynamic_dim=1)
        try:
            with paddle.no_grad():
                layer(*[paddle.to_tensor(v) for v in feeds.values()])
        except Exception as e:
            raise ExportError(f"input_spec does not fit the network: {one_line(e)}") from None
        try:
            paddle.jit.save(layer, model_prefix(tmp, opts.name), input_spec=specs)
        except Exception as e:
            raise ExportError(f"paddle.jit.save failed: {one_line(e)}") from None
    sparse = None
    if sparse_cpu:
        with timer("sparse_cpu_measure_save"):
            sparse = save_sparse_layer(layer, specs, feeds, tmp, opts.name, model_prefix(tmp, opts.name))
    if not opts.lite:
        return None, sparse
    with timer("lite_save"):
        prefix = lite_prefix(tmp, opts.name)
        save_lite_layer(layer, specs, prefix)
    return LiteResult(prefix + ".pdmodel", prefix + ".pdiparams"), sparse


def export_checkpoint(checkpoint: Union[PathLike, Dict[str, Any]], model: Union[str, Callable[..., Any]],
                      input_spec: Sequence[paddle.static.InputSpec], out_dir: PathLike, *,
                      kwargs: Optional[Dict[str, Any]] = None, **options: Any) -> ExportReport:
    """Build the network with ``model(**kwargs)`` (a callable or ``'module:callable'``), load ``checkpoint``
    (path or state dict; dygraph-pruner masks, bool or bit-packed, folded in), then :func:`export_layer`."""
    check_input_spec(input_spec)
    check_out_dir(out_dir)
    _options(options)
    state = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    net, folded = build_network(model, kwargs, state)
    if folded:
        _log.info("export: folded %d checkpoint masks into the weights", folded)
    return export_layer(net, input_spec, out_dir, **options)


def _op_key(op: Any, operand_ids: Sequence[Any]) -> Any:
    attrs = op.attrs()
    return op.name(), tuple(operand_ids), str(sorted((k, str(v)) for k, v in attrs.items()))


def _own_values(program: Any, values: Sequence[Any]) -> List[Any]:
    """``values`` as values of ``program``: a value of a program ``program`` was cloned from is mapped to its
    counterpart (same op, same attributes, same operands, recursively; parameters and data by name)."""
    block = program.global_block()
    ops = list(block.ops)
    own = {r.id for op in ops for r in op.results()}
    index: Dict[Any, Any] = {}
    for op in ops:
        index.setdefault(_op_key(op, [v.id for v in op.operands_source()]), op)
    memo: Dict[Any, Any] = {}

    def counterpart(v: Any) -> Any:
        if v.id in own:
            return v
        if v.id not in memo:
            op = v.get_defining_op()
            if op is None:
                raise KeyError(v.id)
            twin = index.get(_op_key(op, [counterpart(s).id for s in op.operands_source()]))
            if twin is None:
                raise KeyError(v.id)
            res = next(k for k, r in enumerate(op.results()) if r.id == v.id)
            memo[v.id] = twin.results()[res]
        return memo[v.id]

    out = []
    for i, v in enumerate(values):
        try:
            out.append(counterpart(v) if hasattr(v, "get_defining_op") else v)
        except (KeyError, StopIteration):
            raise ExportError(f"fetch_vars[{i}] is not a value of the program (nor of a program it was cloned "
                              f"from); pass the value of the exported program, e.g. IrMapping.look_up(value)") from None
    return out


def export_program(program_or_prefix: Any, out_dir: PathLike, *, scope: Any = None,
                   feed_names: Optional[Sequence[str]] = None, fetch_vars: Optional[Sequence[Any]] = None,
                   **options: Any) -> ExportReport:
    """Export a static program (PIR or legacy) with its scope, or a saved inference model prefix.

    ``program_or_prefix``: a ``paddle.static.Program`` (an inference/test program; weights from ``scope``,
    default the global scope; ``feed_names`` default: every data op; ``fetch_vars`` required unless the program
    has fetch ops; values of the program it was cloned from are accepted), or the path prefix of an inference
    model (``prefix.json``/``prefix.pdmodel`` + ``prefix.pdiparams``). Static-pruner masks (``<param>_mask``
    scope variables) are folded into the saved weights; the scope itself is left unchanged. ``target="lite"``
    needs a legacy-IR program or model: Paddle 3.3.1 cannot translate PIR programs back to legacy IR.
    """
    check_out_dir(out_dir)
    opts = _options(options)
    if isinstance(program_or_prefix, (str, os.PathLike)):
        src = SavedModel(program_or_prefix)
        program, scope, legacy = src.program, src.scope, src.legacy
        feed_names = list(feed_names or src.feed_names)
        fetch_vars = list(fetch_vars or src.fetch)
    else:
        program = program_or_prefix
        try:
            legacy = is_legacy_program(program)
        except TypeError:
            raise TypeError(f"program_or_prefix must be a paddle static Program (PIR or legacy) or an "
                            f"inference model path prefix; got {type(program).__name__}") from None
        scope = scope if scope is not None else paddle.static.global_scope()
    sparse = None
    if opts.sparse_cpu:  # before anything is written: can it be made at all?
        sparse = (skipped(opts.target, "the sparse-cpu model of a static program is made from a PIR program: "
                          "legacy-IR programs and .pdmodel models are not converted") if legacy
                  else kernels_or_skip(opts.target))
    if opts.lite and not legacy:
        raise ExportError("target 'lite' needs a legacy-IR model: Paddle 3.3.1 cannot translate a PIR program back "
                          "to legacy IR; export the dygraph layer or checkpoint, or build the program under "
                          "paddle.pir_utils.OldIrGuard()")
    with program_mode(program):
        block = program.global_block()
        if legacy:
            data_names = [n for n, v in block.vars.items() if getattr(v, "is_data", False)]
            feed_names = list(feed_names or data_names)
            missing = [n for n in feed_names if not block.has_var(n)]
            feed_vars = [block.var(n) for n in feed_names if block.has_var(n)]
        else:
            data = {op.attrs().get("name"): op.results()[0] for op in block.ops if op.name() == "pd_op.data"}
            feed_names = list(feed_names or data)
            missing = [n for n in feed_names if n not in data]
            feed_vars = [data[n] for n in feed_names if n in data]
            if fetch_vars is None:
                fetch_vars = [op.operands_source()[0] for op in block.ops if op.name() == "pd_op.fetch"]
            fetch_vars = _own_values(program, list(fetch_vars or []))
        if missing:
            raise ExportError(f"feed_names: {missing} are not inputs of the program")
        if not fetch_vars:
            raise ExportError("fetch_vars is required: the program has no fetch ops")
    timer = Timer()
    with staging(out_dir, opts.outputs) as (tmp, final):
        with timer("paddle_save"), folded_program(program, scope), program_mode(program), \
                paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            try:
                paddle.static.save_inference_model(model_prefix(tmp, opts.name), feed_vars, list(fetch_vars), exe,
                                                   program=program)
            except Exception as e:
                raise ExportError(f"save_inference_model failed: {one_line(e)}") from None
        if opts.sparse_cpu and sparse is None:
            feeds = random_feeds(SavedModel(model_prefix(tmp, opts.name), False).feed_specs, seed=opts.seed,
                                 dynamic_dim=1)
            with timer("sparse_cpu_measure_save"):
                sparse = save_sparse_program(tmp, opts.name, feeds, model_prefix(tmp, opts.name))
        return finish(tmp, final, opts, legacy, timer, sparse_cpu=sparse)


def _structured_names(report_file: str) -> Optional[Dict[str, str]]:
    """Paddle name -> structured name, in model order, from an export's report (None if it has none)."""
    try:
        with open(report_file, encoding="utf-8") as f:
            layers = json.load(f).get("layers") or []
        names = {r["name"]: r["layer"] for r in layers if r.get("layer")}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return names or None


def _exported_target(report_file: str) -> Optional[str]:
    """The target an export was made with, from its report (None without a readable one): a sparse-cpu model that
    measured slower is not written, so the files alone do not tell."""
    try:
        with open(report_file, encoding="utf-8") as f:
            target = json.load(f).get("target")
    except (OSError, ValueError, AttributeError):
        return None
    return target if isinstance(target, str) else None


def verify_export(out_dir: PathLike, *, name: str = "model", seed: int = 0, rtol: float = 1e-5,
                  nm_pattern: Optional[str] = None) -> ExportReport:
    """Re-verify an existing export directory: the Paddle model against ``NAME.onnx``, ``NAME.sparse.onnx``,
    ``lite/NAME.pdmodel`` and ``sparse-cpu/NAME.json``, whichever exist, and with ``nm_pattern`` ('2:4') that every qualifying weight of the
    Paddle model is N:M sparse; writes nothing."""
    if nm_pattern is not None:  # a bad pattern is refused before anything is read
        from paddleslim_static.core.nm import parse_pattern

        parse_pattern(nm_pattern, "nm_pattern")
    out_dir = check_out_dir(out_dir)
    prefix = model_prefix(out_dir, name)
    model_file, params_file, legacy = model_files(prefix)
    plain_path, sparse_path = prefix + ".onnx", prefix + ".sparse.onnx"
    lite, sparse_cpu = lite_prefix(out_dir, name), sparse_cpu_prefix(out_dir, name)
    has_onnx, has_lite = os.path.isfile(plain_path), os.path.isfile(lite + ".pdmodel")
    has_sparse_cpu = os.path.isfile(sparse_cpu + ".json")
    if not (has_onnx or has_lite or has_sparse_cpu):
        raise ExportError(f"none of {plain_path!r}, {lite + '.pdmodel'!r}, {sparse_cpu + '.json'!r} exists")
    if has_sparse_cpu:
        require_kernels()  # before anything is read: its outputs are checked through the sparse operators
    saved = SavedModel(prefix, legacy)
    targets = [t for t, has in (("onnx", has_onnx), ("lite", has_lite), ("sparse-cpu", has_sparse_cpu)) if has]
    report = ExportReport(name=name, out_dir=out_dir, target=_exported_target(report_path(out_dir, name)) or
                          ("all" if len(targets) == 3 else ",".join(targets)))
    report.rows = layer_rows(saved.weights, _structured_names(report_path(out_dir, name)))
    report.files = {"paddle_model": model_file, "paddle_params": params_file}
    if nm_pattern is not None:
        check_nm_pattern(report, saved, nm_pattern)
    if has_lite:
        report.files.update(lite_model=lite + ".pdmodel", lite_params=lite + ".pdiparams")
        verify_lite(report, saved, SavedModel(lite, legacy=True), seed, rtol)
    if has_onnx:
        require_extra("verifying an ONNX export")
        import onnx

        report.files["onnx"] = plain_path
        if not os.path.isfile(sparse_path):
            sparse_path = None
        else:
            report.files["onnx_sparse"] = sparse_path
            stored = {sp.values.name for sp in onnx.load_model(sparse_path).graph.sparse_initializer}
            for r in report.rows:
                r.stored_sparse = r.name in stored
        verify_onnx(report, saved, onnx.load_model(plain_path), plain_path, sparse_path, seed, rtol)
    if has_sparse_cpu:
        written = SparseCpuResult([], [], "", model_file=sparse_cpu + ".json", params_file=sparse_cpu + ".pdiparams")
        report.files.update(sparse_cpu_model=written.model_file, sparse_cpu_params=written.params_file)
        checks = check_sparse_model(written, model_file, params_file,
                                    random_feeds(saved.feed_specs, seed=seed, dynamic_dim=1), rtol)
        report.output_checks += checks
        report.failures += [f"output {c.name} ({c.what}) differs: max abs err {c.max_abs_err:.3g}, max rel err "
                            f"{c.max_rel_err:.3g}" for c in checks if not c.ok]
        report.verified = True
    report.file_sizes = file_sizes(report.files)
    return report
