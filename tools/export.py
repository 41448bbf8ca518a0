"""Export a pruned model as a sparse Paddle inference model and a verified (optionally compressed) ONNX model.

Python API::

    from paddleslim_tools.export import export_layer, export_program, export_checkpoint
    report = export_layer(layer, [paddle.static.InputSpec([None, 1, 8, 8], "float32", "x")], "out/")
    print(report.format_table()); assert report.ok

Command line (``paddleslim-export --help``)::

    paddleslim-export --model paddle.vision.models:mobilenet_v1 --kwargs '{"scale": 0.25, "num_classes": 10}' \\
        --checkpoint pruned.pdparams --input x:1x3x32x32:float32 --out exported/
    paddleslim-export --inference-model infer/model --out exported/
    paddleslim-export --check exported/            # re-verify an existing export

Exit codes: 0 exported and verified, 1 verification failed (files are written, the report says why),
2 bad input or conversion error (one line on stderr, nothing written).

Output files in ``out_dir`` (``name`` defaults to ``model``): ``name.json``/``name.pdmodel`` +
``name.pdiparams`` (Paddle inference model, masks folded in), ``name.onnx``, ``name.sparse.onnx``
(sparse weights as ``sparse_initializer``), ``name.report.json``. Everything is written into a temporary
directory next to ``out_dir`` and moved into place only when complete.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np


def _quiet_cli() -> None:
    """CLI only, before paddle is imported: no glog info lines, no ccache warning, never autoinstall."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"
    warnings.filterwarnings("ignore", message=".*ccache.*")


if __name__ == "__main__" or os.path.basename(sys.argv[0] or "") == "paddleslim-export":
    _quiet_cli()

from .onnx_sparse import canonicalize, compress as compress_model, densify, onnx_tensors
from .p2o_convert import ConversionError, convert
from .report import ExportReport, file_sizes, layer_rows
from .verify import compare_outputs, match_weights, random_feeds, run_onnx

if TYPE_CHECKING:  # paddle is imported lazily so the CLI can quieten it first
    import onnx
    import paddle

__all__ = [
    "ExportError", "ExportReport", "export_layer", "export_program", "export_checkpoint", "verify_export",
    "load_checkpoint", "fold_checkpoint_masks", "parse_input_spec", "main",
]

_log = logging.getLogger("paddleslim")
MASK_SUFFIX = "_mask"
DEFAULT_OPSET = 13
_OUTPUT_SUFFIXES = (".json", ".pdmodel", ".pdiparams", ".onnx", ".sparse.onnx", ".report.json")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class ExportError(ValueError):
    """The export cannot proceed (bad argument, missing file, mismatching checkpoint...); one-line message."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """A short single-line summary of an exception (Paddle errors are many lines of C++ context)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not set(ln) <= set("-=*") and not ln.startswith(("C++ Traceback", "[Hint"))]
    pick = next((ln for ln in lines if re.match(r"^\(\w+\)", ln) or "Error" in ln or "must" in ln), None)
    text = pick or (lines[0] if lines else type(exc).__name__)
    text = re.sub(r"\s*\(at /[^)]*\)\s*$", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- paddle helpers -----------------------------------------------------------------------------------
def _paddle():
    import paddle

    return paddle


@contextlib.contextmanager
def _static_mode(legacy: bool = False) -> Iterator[None]:
    paddle = _paddle()
    was_dynamic = paddle.in_dynamic_mode()
    if was_dynamic:
        paddle.enable_static()
    try:
        if legacy:
            with paddle.pir_utils.OldIrGuard():
                yield
        else:
            yield
    finally:
        if was_dynamic:
            paddle.disable_static()


def _is_pruner_hook(hook: Any) -> bool:
    from paddleslim_static.pruner_base import PrunerBase

    return isinstance(getattr(hook, "__self__", None), PrunerBase)


@contextlib.contextmanager
def _clean_layer(layer: "paddle.nn.Layer") -> Iterator[int]:
    """Temporarily: eval mode, pruner masks folded into the weights, pruner hooks and mask buffers removed.

    Everything is restored on exit (the caller's model and live pruner keep working). Yields the number of
    masks folded.
    """
    paddle = _paddle()
    training = layer.training
    saved_buffers, saved_hooks, saved_values = [], [], []
    folded = 0
    try:
        layer.eval()
        for _, sub in layer.named_sublayers(include_self=True):
            hooks = getattr(sub, "_forward_pre_hooks", None)
            if hooks and any(_is_pruner_hook(h) for h in hooks.values()):
                saved_hooks.append((sub, hooks.copy()))
                for k in [k for k, h in hooks.items() if _is_pruner_hook(h)]:
                    del hooks[k]
            masks = {}
            for attr, p in sub.named_parameters(include_sublayers=False):
                buf = sub._buffers.get(attr + MASK_SUFFIX)
                if buf is not None and tuple(buf.shape) == tuple(p.shape):
                    masks[attr + MASK_SUFFIX] = (p, buf)
            if masks:
                saved_buffers.append((sub, sub._buffers.copy()))
                for key, (p, buf) in masks.items():
                    orig = p.numpy()
                    with paddle.no_grad():
                        p.set_value(orig * buf.numpy().astype(orig.dtype))
                    saved_values.append((p, orig))
                    del sub._buffers[key]
                    folded += 1
        yield folded
    finally:
        with paddle.no_grad():
            for p, orig in saved_values:
                p.set_value(orig)
        for sub, bufs in saved_buffers:
            sub._buffers.clear()
            sub._buffers.update(bufs)
        for sub, hooks in saved_hooks:
            sub._forward_pre_hooks.clear()
            sub._forward_pre_hooks.update(hooks)
        layer.train(training) if training else layer.eval()


# -- staging: nothing partial ever lands in out_dir ------------------------------------------------------
@contextlib.contextmanager
def _staging(out_dir: Union[str, os.PathLike], name: str) -> Iterator[Tuple[str, str]]:
    """Yield (temp dir next to out_dir, final out_dir); move the temp dir's files into place on success.

    In an existing out_dir, files of an earlier export under the same ``name`` that this export does not
    write (e.g. ``name.sparse.onnx`` after ``compress=False``) are removed so the set stays consistent.
    """
    final = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(final) and not os.path.isdir(final):
        raise ExportError(f"out_dir {os.fspath(out_dir)!r} exists and is not a directory")
    parent = os.path.dirname(final)
    created = []
    probe = parent
    while probe and not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
    try:
        yield tmp, final
        if not os.path.exists(final):
            os.rename(tmp, final)
        else:
            produced = set(os.listdir(tmp))
            for suffix in _OUTPUT_SUFFIXES:
                stale = os.path.join(final, name + suffix)
                if name + suffix not in produced and os.path.isfile(stale):
                    os.remove(stale)
            for f in produced:
                os.replace(os.path.join(tmp, f), os.path.join(final, f))
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise


# -- the Paddle side of an export ----------------------------------------------------------------------
class _PaddleModel:
    """A saved inference model loaded back: program, feeds, fetches, weights (what a deployment sees)."""

    def __init__(self, prefix: str, legacy: bool) -> None:
        paddle = _paddle()
        self.prefix, self.legacy = prefix, legacy
        self.scope = paddle.static.Scope()
        with _static_mode(legacy), paddle.static.scope_guard(self.scope):
            self.exe = paddle.static.Executor(paddle.CPUPlace())
            self.program, self.feed_names, self.fetch = paddle.static.load_inference_model(prefix, self.exe)
            block = self.program.global_block()
            self.params = _legacy_persistables(block) if legacy else [p.name for p in block.all_parameters()]
            if legacy:
                self.op_names = [op.type for op in block.ops]
                self.var_names = list(block.vars)
                self.feed_specs = [(n, list(block.var(n).shape), _np_dtype(block.var(n).dtype))
                                   for n in self.feed_names]
            else:
                self.op_names = [op.name() for op in block.ops]
                self.var_names = list(self.params)
                data = {op.attrs().get("name"): op.results()[0] for op in block.ops if op.name() == "pd_op.data"}
                self.feed_specs = [(n, list(data[n].shape), _np_dtype(data[n].dtype)) for n in self.feed_names]
            self.weights = {n: np.array(self.scope.find_var(n).get_tensor()) for n in self.params}

    def run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        paddle = _paddle()
        with _static_mode(self.legacy), paddle.static.scope_guard(self.scope):
            outs = self.exe.run(self.program, feed={n: feeds[n] for n in self.feed_names}, fetch_list=self.fetch)
        return [np.asarray(o) for o in outs]


def _legacy_persistables(block: Any) -> List[str]:
    """Weights of a legacy-IR block: parameters, or (loaded inference models) persistable dense tensors."""
    names = [p.name for p in block.all_parameters()]
    if names:
        return names
    out = []
    for n, v in block.vars.items():
        kind = str(v.type).upper()
        if v.persistable and n not in ("feed", "fetch") and ("LOD_TENSOR" in kind or "DENSE_TENSOR" in kind) \
                and "ARRAY" not in kind:
            out.append(n)
    return out


def _np_dtype(dtype: Any) -> str:
    text = str(dtype).replace("paddle.", "").replace("VarType.", "").lower()
    table = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "int64": "int64", "int32": "int32",
             "bool": "bool", "uint8": "uint8", "int8": "int8", "float32": "float32", "float64": "float64",
             "float16": "float16", "bfloat16": "float32"}
    return table.get(text, text)


def _model_files(prefix: str) -> Tuple[str, str, bool]:
    """(model file, params file, legacy) for an inference-model prefix (with or without extension)."""
    for ext in (".json", ".pdmodel", ".pdiparams"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    params = prefix + ".pdiparams"
    for ext, legacy in ((".json", False), (".pdmodel", True)):
        if os.path.isfile(prefix + ext):
            if not os.path.isfile(params):
                raise ExportError(f"inference model {prefix!r}: parameter file {params!r} not found")
            return prefix + ext, params, legacy
    raise ExportError(f"inference model {prefix!r}: neither {prefix + '.json'!r} nor {prefix + '.pdmodel'!r} exists")


# -- the common back half: convert, compress, verify, report ---------------------------------------------
def _finish(
    tmp: str, final: str, name: str, legacy: bool, *, opset: int, compress: bool, verify: bool,
    sparse_cutoff: Optional[float], seed: int, rtol: float, structured: Optional[Dict[str, str]],
    onnx_transform: Optional[Callable[["onnx.ModelProto"], Any]], timings: Dict[str, float],
) -> ExportReport:
    import onnx

    prefix = os.path.join(tmp, name)
    model_file, params_file, _ = _model_files(prefix)
    pm = _PaddleModel(prefix, legacy)
    report = ExportReport(name=name, out_dir=final, opset=opset, sparse_cutoff=sparse_cutoff, timings=timings)
    leftovers = [n for n in pm.var_names if n.endswith(MASK_SUFFIX)]
    if leftovers:
        report.failures.append(f"mask variables left in the Paddle inference model: {leftovers[:5]}")

    t = time.perf_counter()
    data = convert(model_file, params_file, opset, op_names=pm.op_names)
    model = onnx.load_model_from_string(data)
    if onnx_transform is not None:
        model = onnx_transform(model) or model
    plain = canonicalize(model)
    plain_path = prefix + ".onnx"
    onnx.save_model(plain, plain_path)
    timings["onnx_convert"] = time.perf_counter() - t
    got_opset = max((o.version for o in plain.opset_import if o.domain in ("", "ai.onnx")), default=None)
    if got_opset != opset:
        report.warnings.append(f"ONNX model has opset {got_opset}, requested {opset}")

    sparse_path, stored = None, []
    if compress:
        t = time.perf_counter()
        small, stored = compress_model(plain, sparse_cutoff)
        sparse_path = prefix + ".sparse.onnx"
        onnx.save_model(small, sparse_path)
        timings["compress"] = time.perf_counter() - t

    report.rows = layer_rows(pm.weights, structured)
    stored_set = set(stored)
    for r in report.rows:
        r.stored_sparse = r.name in stored_set

    local = {"paddle_model": model_file, "paddle_params": params_file, "onnx": plain_path}
    if sparse_path:
        local["onnx_sparse"] = sparse_path
    if verify:
        t = time.perf_counter()
        _verify(report, pm, plain, plain_path, sparse_path, seed, rtol)
        timings["verify"] = time.perf_counter() - t
    report.file_sizes = file_sizes(local)
    local["report"] = prefix + ".report.json"
    report.files = {k: os.path.join(final, os.path.basename(p)) for k, p in local.items()}
    with open(local["report"], "w", encoding="utf-8") as f:
        f.write(report.to_json())
    return report


def _verify(report: ExportReport, pm: _PaddleModel, plain: "onnx.ModelProto", plain_path: str,
            sparse_path: Optional[str], seed: int, rtol: float) -> None:
    import onnx

    report.verified = True
    weights = {n: w for n, w in pm.weights.items() if w.dtype.kind == "f"}
    checks = match_weights(weights, onnx_tensors(plain), rtol=rtol)
    report.weight_checks = checks
    rows = {r.name: r for r in report.rows}
    for m in checks:
        row = rows.get(m.name)
        if row is not None:
            row.onnx_name, row.match, row.pattern_ok = m.onnx_name, m.how, m.pattern_ok
        if m.how is None and m.sparse:
            report.failures.append(f"sparse weight {m.name} not found in the ONNX model")
        elif m.how is None:
            report.warnings.append(f"dense weight {m.name} not found in the ONNX model (folded or unused?)")
        elif not m.pattern_ok:
            report.failures.append(f"weight {m.name}: ONNX tensor {m.onnx_name} ({m.how}) has a different zero "
                                   f"pattern ({m.pattern_mismatches} elements)")
    feeds = random_feeds(pm.feed_specs, seed=seed)
    ref = pm.run(feeds)
    names, got = run_onnx(plain_path, feeds)
    checks_out = compare_outputs(names, ref, got, rtol=rtol, atol_scale=rtol)
    if sparse_path is not None:
        if densify(onnx.load_model(sparse_path)).SerializeToString() != plain.SerializeToString():
            report.failures.append("compressed ONNX, densified, differs from the plain ONNX")
        _, got_sparse = run_onnx(sparse_path, feeds)
        checks_out += compare_outputs(names, got, got_sparse, rtol=0.0, atol_scale=0.0, what="sparse vs plain onnx")
    report.output_checks = checks_out
    for c in checks_out:
        if not c.ok:
            report.failures.append(f"output {c.name} ({c.what}) differs: max abs err {c.max_abs_err:.3g}, "
                                   f"max rel err {c.max_rel_err:.3g}")


# -- public API ------------------------------------------------------------------------------------------
def _check_common(name: str, opset: int, sparse_cutoff: Optional[float]) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ExportError(f"name must be a plain file name (letters, digits, _ . -); got {name!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 7 <= opset <= 21:
        raise ExportError(f"opset must be an int in [7, 21]; got {opset!r}")
    if sparse_cutoff is not None and not (isinstance(sparse_cutoff, (int, float)) and 0 <= sparse_cutoff <= 1):
        raise ExportError(f"sparse_cutoff must be a density in [0, 1] or None; got {sparse_cutoff!r}")


def _check_input_spec(input_spec: Any) -> list:
    paddle = _paddle()
    if not isinstance(input_spec, (list, tuple)) or not input_spec:
        raise TypeError(f"input_spec must be a non-empty list of paddle.static.InputSpec; got {input_spec!r}")
    for s in input_spec:
        if not isinstance(s, paddle.static.InputSpec):
            raise TypeError(f"input_spec items must be paddle.static.InputSpec; got {s!r}")
    return list(input_spec)


def export_layer(
    layer: "paddle.nn.Layer",
    input_spec: Sequence["paddle.static.InputSpec"],
    out_dir: Union[str, os.PathLike],
    *,
    name: str = "model",
    opset: int = DEFAULT_OPSET,
    compress: bool = True,
    verify: bool = True,
    sparse_cutoff: Optional[float] = None,
    seed: int = 0,
    rtol: float = 1e-5,
    onnx_transform: Optional[Callable[["onnx.ModelProto"], Any]] = None,
) -> ExportReport:
    """Export a (pruned) dygraph layer; a live ``paddleslim_dygraph`` pruner's masks are folded in.

    The layer itself is left as it was (training mode, pruner hook and mask buffers are restored).
    ``sparse_cutoff``: store weights with density <= this sparse (None: whenever COO is smaller).
    ``onnx_transform``: optional function applied to the converted ``onnx.ModelProto`` before it is
    saved and verified (custom graph rewrites).
    """
    paddle = _paddle()
    if not isinstance(layer, paddle.nn.Layer):
        raise TypeError(f"layer must be a paddle.nn.Layer; got {type(layer).__name__}")
    specs = _check_input_spec(input_spec)
    _check_common(name, opset, sparse_cutoff)
    if not paddle.in_dynamic_mode():
        raise ExportError("export_layer needs dygraph mode (call paddle.disable_static() first)")
    timings: Dict[str, float] = {}
    with _staging(out_dir, name) as (tmp, final), _clean_layer(layer) as folded:
        t = time.perf_counter()
        feeds = random_feeds([(s.name or f"x{i}", s.shape, _np_dtype(s.dtype)) for i, s in enumerate(specs)],
                             seed=seed, dynamic_dim=1)
        try:
            with paddle.no_grad():
                layer(*[paddle.to_tensor(v) for v in feeds.values()])
        except Exception as e:
            raise ExportError(f"input_spec does not fit the network: {_one_line(e)}") from None
        try:
            paddle.jit.save(layer, os.path.join(tmp, name), input_spec=specs)
        except Exception as e:
            raise ExportError(f"paddle.jit.save failed: {_one_line(e)}") from None
        timings["paddle_save"] = time.perf_counter() - t
        if folded:
            _log.info("export: folded %d pruner masks into the weights", folded)
        structured = {p.name: n for n, p in layer.named_parameters()}
        report = _finish(tmp, final, name, False, opset=opset, compress=compress, verify=verify,
                         sparse_cutoff=sparse_cutoff, seed=seed, rtol=rtol, structured=structured,
                         onnx_transform=onnx_transform, timings=timings)
    return report


def _data_values(program: Any) -> Dict[str, Any]:
    return {op.attrs().get("name"): op.results()[0] for op in program.global_block().ops if op.name() == "pd_op.data"}


@contextlib.contextmanager
def _folded_scope_masks(params: Sequence[str], scope: Any) -> Iterator[int]:
    """Temporarily fold ``<param>_mask`` scope variables (static pruner masks) into the weights."""
    paddle = _paddle()
    saved = []
    try:
        for n in params:
            mv = scope.find_var(n + MASK_SUFFIX)
            pv = scope.find_var(n)
            if mv is None or pv is None:
                continue
            t = pv.get_tensor()
            w = np.array(t)
            m = np.array(mv.get_tensor())
            if m.shape != w.shape:
                continue
            saved.append((t, w))
            t.set((w * m.astype(w.dtype)).astype(w.dtype), paddle.CPUPlace())
        yield len(saved)
    finally:
        for t, w in saved:
            t.set(w, paddle.CPUPlace())


def export_program(
    program_or_prefix: Any,
    out_dir: Union[str, os.PathLike],
    *,
    scope: Any = None,
    feed_names: Optional[Sequence[str]] = None,
    fetch_vars: Optional[Sequence[Any]] = None,
    name: str = "model",
    opset: int = DEFAULT_OPSET,
    compress: bool = True,
    verify: bool = True,
    sparse_cutoff: Optional[float] = None,
    seed: int = 0,
    rtol: float = 1e-5,
    onnx_transform: Optional[Callable[["onnx.ModelProto"], Any]] = None,
) -> ExportReport:
    """Export a static program (PIR or legacy) with its scope, or a saved inference model prefix.

    ``program_or_prefix``: a ``paddle.static.Program`` (pass an inference/test program; the weights are read
    from ``scope``, default the global scope; ``feed_names`` default: every data op; ``fetch_vars``
    required unless the program has fetch ops), or the path prefix of an inference model
    (``prefix.json``/``prefix.pdmodel`` + ``prefix.pdiparams``). Static-pruner masks (``<param>_mask``
    scope variables) are folded into the saved weights; the scope itself is left unchanged.
    """
    paddle = _paddle()
    _check_common(name, opset, sparse_cutoff)
    timings: Dict[str, float] = {}
    if isinstance(program_or_prefix, (str, os.PathLike)):
        model_file, _, legacy = _model_files(os.fspath(program_or_prefix))
        src = _PaddleModel(os.path.splitext(model_file)[0], legacy)
        program, scope = src.program, src.scope
        feed_names = list(feed_names or src.feed_names)
        fetch_vars = list(fetch_vars or src.fetch)
    else:
        program = program_or_prefix
        legacy = isinstance(program, paddle.base.framework.Program)
        if not legacy and not isinstance(program, paddle.pir.Program):
            raise TypeError(f"program_or_prefix must be a paddle static Program (PIR or legacy) or an "
                            f"inference model path prefix; got {type(program).__name__}")
        scope = scope if scope is not None else paddle.static.global_scope()
    with _static_mode(legacy):
        block = program.global_block()
        if legacy:
            data_names = [n for n, v in block.vars.items() if getattr(v, "is_data", False)]
            feed_names = list(feed_names or data_names)
            missing = [n for n in feed_names if not block.has_var(n)]
            feed_vars = [block.var(n) for n in feed_names if block.has_var(n)]
        else:
            data = _data_values(program)
            feed_names = list(feed_names or data)
            missing = [n for n in feed_names if n not in data]
            feed_vars = [data[n] for n in feed_names if n in data]
            if fetch_vars is None:
                fetch_vars = [op.operands_source()[0] for op in block.ops if op.name() == "pd_op.fetch"]
        if missing:
            raise ExportError(f"feed_names: {missing} are not inputs of the program")
        if not fetch_vars:
            raise ExportError("fetch_vars is required: the program has no fetch ops")
        params = _legacy_persistables(block) if legacy else [p.name for p in block.all_parameters()]
    with _staging(out_dir, name) as (tmp, final):
        t = time.perf_counter()
        with _static_mode(legacy), paddle.static.scope_guard(scope), _folded_scope_masks(params, scope) as folded:
            exe = paddle.static.Executor(paddle.CPUPlace())
            try:
                paddle.static.save_inference_model(os.path.join(tmp, name), feed_vars, list(fetch_vars), exe,
                                                   program=program)
            except Exception as e:
                raise ExportError(f"save_inference_model failed: {_one_line(e)}") from None
        timings["paddle_save"] = time.perf_counter() - t
        if folded:
            _log.info("export: folded %d static pruner masks into the weights", folded)
        report = _finish(tmp, final, name, legacy, opset=opset, compress=compress, verify=verify,
                         sparse_cutoff=sparse_cutoff, seed=seed, rtol=rtol, structured=None,
                         onnx_transform=onnx_transform, timings=timings)
    return report


# -- checkpoints -----------------------------------------------------------------------------------------
def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """A ``.pdparams`` state dict as numpy arrays."""
    paddle = _paddle()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"checkpoint {path!r} not found")
    try:
        state = paddle.load(path, return_numpy=True)
    except Exception as e:
        raise ExportError(f"checkpoint {path!r} cannot be read: {_one_line(e)}") from None
    if not isinstance(state, dict):
        raise ExportError(f"checkpoint {path!r} is not a state dict (got {type(state).__name__})")
    return {k: np.asarray(v) for k, v in state.items()}


def fold_checkpoint_masks(state: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], int]:
    """Fold dygraph-pruner mask entries ``<layer>.<attr>_mask`` into ``<layer>.<attr>``; drop them.

    >>> import numpy as np
    >>> s, n = fold_checkpoint_masks({"fc.weight": np.ones(2, np.float32), "fc.weight_mask": np.array([True, False])})
    >>> sorted(s), s["fc.weight"].tolist(), n
    (['fc.weight'], [1.0, 0.0], 1)
    """
    out = dict(state)
    folded = 0
    for key in [k for k in state if k.endswith(MASK_SUFFIX)]:
        base = key[: -len(MASK_SUFFIX)]
        if base not in state:
            continue  # not a pruner mask (e.g. a model's own buffer); left for the key check
        w, m = np.asarray(state[base]), np.asarray(state[key])
        if m.shape != w.shape:
            raise ExportError(f"checkpoint: mask {key!r} has shape {list(m.shape)}, weight {base!r} has "
                              f"{list(w.shape)}")
        out[base] = (w * m.astype(w.dtype)).astype(w.dtype)
        del out[key]
        folded += 1
    return out, folded


def _resolve_callable(spec: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ExportError(f"model must be 'module:callable' (e.g. paddle.vision.models:mobilenet_v1); got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:
        raise ExportError(f"model {spec!r}: cannot import module {mod_name!r}: {_one_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ExportError(f"model {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExportError(f"model {spec!r} is not callable")
    return obj


def export_checkpoint(
    checkpoint: Union[str, os.PathLike, Dict[str, Any]],
    model: Union[str, Callable[..., Any]],
    input_spec: Sequence["paddle.static.InputSpec"],
    out_dir: Union[str, os.PathLike],
    *,
    kwargs: Optional[Dict[str, Any]] = None,
    **export_kwargs: Any,
) -> ExportReport:
    """Build the network with ``model(**kwargs)`` (a callable or ``'module:callable'``), load ``checkpoint``
    (path or state dict; dygraph-pruner masks folded in), then :func:`export_layer`.
    """
    paddle = _paddle()
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ExportError(f"kwargs must be a dict; got {kwargs!r}")
    state = (load_checkpoint(checkpoint) if not isinstance(checkpoint, dict)
             else {k: np.asarray(v) for k, v in checkpoint.items()})
    fn = _resolve_callable(model)
    try:
        net = fn(**(kwargs or {}))
    except Exception as e:
        raise ExportError(f"model {model!r} failed to build with kwargs {kwargs or {}}: {_one_line(e)}") from None
    if not isinstance(net, paddle.nn.Layer):
        raise ExportError(f"model {model!r} returned {type(net).__name__}, not a paddle.nn.Layer")
    state, folded = fold_checkpoint_masks(state)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ExportError(f"checkpoint keys do not match the network: missing {missing[:5]}"
                          f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                          f"{' ...' if len(unexpected) > 5 else ''}")
    bad = [f"{k}: checkpoint {list(state[k].shape)} vs network {list(v.shape)}"
           for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ExportError(f"checkpoint shapes do not match the network: {'; '.join(bad[:3])}")
    net.set_state_dict({k: state[k].astype(np.dtype(_np_dtype(expected[k].dtype)), copy=False) for k in expected})
    if folded:
        _log.info("export: folded %d checkpoint masks into the weights", folded)
    return export_layer(net, input_spec, out_dir, **export_kwargs)


def verify_export(out_dir: Union[str, os.PathLike], *, name: str = "model", seed: int = 0,
                  rtol: float = 1e-5) -> ExportReport:
    """Re-verify an existing export directory (Paddle model vs ``name.onnx`` and ``name.sparse.onnx``)."""
    import onnx

    out_dir = os.path.abspath(os.fspath(out_dir))
    prefix = os.path.join(out_dir, name)
    model_file, params_file, legacy = _model_files(prefix)
    plain_path = prefix + ".onnx"
    if not os.path.isfile(plain_path):
        raise ExportError(f"{plain_path!r} not found")
    sparse_path = prefix + ".sparse.onnx" if os.path.isfile(prefix + ".sparse.onnx") else None
    pm = _PaddleModel(prefix, legacy)
    plain = onnx.load_model(plain_path)
    report = ExportReport(name=name, out_dir=out_dir)
    report.rows = layer_rows(pm.weights)
    if sparse_path:
        stored = {sp.values.name for sp in onnx.load_model(sparse_path).graph.sparse_initializer}
        for r in report.rows:
            r.stored_sparse = r.name in stored
    report.files = {"paddle_model": model_file, "paddle_params": params_file, "onnx": plain_path}
    if sparse_path:
        report.files["onnx_sparse"] = sparse_path
    report.file_sizes = file_sizes(report.files)
    _verify(report, pm, plain, plain_path, sparse_path, seed, rtol)
    return report


# -- command line ----------------------------------------------------------------------------------------
def parse_input_spec(text: str, index: int = 0) -> "paddle.static.InputSpec":
    """``[name:]shape[:dtype]`` -> InputSpec; shape like ``1x3x32x32`` or ``-1,3,32,32`` (``?``/``-1`` = dynamic).

    >>> s = parse_input_spec("img:?x3x32x32:float32"); (s.name, list(s.shape), str(s.dtype))
    ('img', [-1, 3, 32, 32], 'paddle.float32')
    """
    paddle = _paddle()
    parts = text.split(":")
    dtypes = {"float32", "float64", "float16", "int32", "int64", "bool", "uint8", "int8"}
    name, dtype = f"x{index}" if index else "x", "float32"
    if len(parts) == 3:
        name, shape_s, dtype = parts
    elif len(parts) == 2:
        if parts[1] in dtypes:
            shape_s, dtype = parts
        else:
            name, shape_s = parts
    elif len(parts) == 1:
        shape_s = parts[0]
    else:
        raise ExportError(f"--input {text!r}: expected [name:]shape[:dtype], e.g. x:1x3x32x32:float32")
    if dtype not in dtypes:
        raise ExportError(f"--input {text!r}: unknown dtype {dtype!r} (one of {sorted(dtypes)})")
    dims = []
    for d in re.split(r"[x,]", shape_s.strip("[]()")):
        d = d.strip()
        if d in ("?", "-1", "None", "none"):
            dims.append(None)
        elif d.isdigit() and int(d) > 0:
            dims.append(int(d))
        else:
            raise ExportError(f"--input {text!r}: bad dimension {d!r} in shape {shape_s!r}")
    return paddle.static.InputSpec(dims, dtype, name or "x")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paddleslim-export",
        description="Export a pruned Paddle model as a sparse Paddle inference model and a verified "
        "(optionally compressed) ONNX model. Exit codes: 0 ok, 1 verification failed, 2 error.")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--checkpoint", help="dygraph .pdparams (pruner *_mask entries are folded in)")
    src.add_argument("--model", help="'module:callable' building the network, e.g. paddle.vision.models:lenet")
    src.add_argument("--kwargs", default=None, help="JSON object of keyword arguments for --model")
    src.add_argument("--input", action="append", default=[], metavar="[NAME:]SHAPE[:DTYPE]",
                     help="input spec for --model, e.g. x:1x3x32x32:float32 ('?' = dynamic); repeatable")
    src.add_argument("--inference-model", metavar="PREFIX", help="static inference model prefix (.json or .pdmodel)")
    src.add_argument("--check", metavar="DIR", help="re-verify an existing export directory; writes nothing")
    p.add_argument("--out", "-o", metavar="DIR", help="output directory")
    p.add_argument("--name", default="model", help="file name stem of the outputs (default: model)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-compress", action="store_true", help="do not write NAME.sparse.onnx")
    p.add_argument("--no-verify", action="store_true", help="skip verification")
    p.add_argument("--sparse-cutoff", type=float, default=None, metavar="DENSITY",
                   help="store weights with density <= DENSITY sparse (default: whenever COO is smaller)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    p.add_argument("--max-rows", type=int, default=None, help="print at most this many table rows")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the file paths and verdict")
    p.add_argument("--verbose", "-v", action="store_true", help="log progress (to stderr)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _run(args: argparse.Namespace) -> ExportReport:
    common = dict(name=args.name, opset=args.opset, compress=not args.no_compress, verify=not args.no_verify,
                  sparse_cutoff=args.sparse_cutoff, seed=args.seed)
    chosen = [x for x in ("checkpoint", "inference_model", "check") if getattr(args, x)]
    if len(chosen) != 1:
        raise ExportError("give exactly one of --checkpoint (with --model, --input), --inference-model, --check")
    if args.check:
        return verify_export(args.check, name=args.name, seed=args.seed)
    if not args.out:
        raise ExportError("--out DIR is required")
    if args.inference_model:
        return export_program(args.inference_model, args.out, **common)
    if not args.model:
        raise ExportError("--checkpoint needs --model module:callable")
    if not args.input:
        raise ExportError("--checkpoint needs at least one --input [name:]shape[:dtype]")
    try:
        kwargs = json.loads(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as e:
        raise ExportError(f"--kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise ExportError(f"--kwargs must be a JSON object; got {args.kwargs!r}")
    if not os.path.isfile(args.checkpoint):
        raise ExportError(f"checkpoint {args.checkpoint!r} not found")
    specs = [parse_input_spec(s, i) for i, s in enumerate(args.input)]
    return export_checkpoint(args.checkpoint, args.model, specs, args.out, kwargs=kwargs, **common)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``paddleslim-export``; returns the exit code."""
    _quiet_cli()
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        _log.setLevel(logging.INFO)
    elif _log.level == logging.NOTSET:
        _log.setLevel(logging.WARNING)
    try:
        report = _run(args)
    except (ExportError, ConversionError, TypeError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"paddleslim-export: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # anything else: still one line, still no partial output (staging cleaned up)
        if args.debug:
            raise
        print(f"paddleslim-export: error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 2
    if args.quiet:
        for k, v in report.files.items():
            print(f"{k}: {v}")
    else:
        print(report.format_table(args.max_rows))
    if not report.ok:
        print(f"paddleslim-export: verification FAILED: {report.failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
