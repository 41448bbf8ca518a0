"""``paddleslim-export``: the command line. Every error is one line on stderr and exit code 2; Ctrl-C exits 130.

Nothing heavy is imported before the arguments are parsed and the export extra is checked, so ``--help`` and the
"install the extra" message work without onnx/paddle2onnx/onnxruntime; Paddle is quietened (glog) only here.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Iterator, NoReturn, Optional, Sequence

from ..cli_contract import check_output_dir, interrupted, sigterm_as_interrupt
from ..errors import ExportError, one_line
from .extras import INSTALL_EXTRA, missing_extra
from .p2o_convert import ConversionError

if TYPE_CHECKING:
    from .export_report import ExportReport

__all__ = ["main", "build_parser"]

PROG = "paddleslim-export"
EXIT_OK, EXIT_VERIFY_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class _UsageError(Exception):
    """argparse's complaint, to be printed as one line like every other error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _target(text: str) -> str:
    """argparse type of --target: the value itself once :func:`.layout.parse_targets` accepts it."""
    from .layout import TARGETS, parse_targets  # no Paddle import: argparse errors come before the quiet block

    try:
        parse_targets(text)
    except ExportError:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (one of {', '.join(TARGETS)}, a "
                                         "comma-separated combination, or all)") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Export a pruned Paddle model as a sparse Paddle inference model and a verified "
        "(optionally compressed) ONNX model, or a legacy-IR model for Paddle Lite. "
        "Exit codes: 0 ok, 1 verification failed, 2 error, 130 interrupted.")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--checkpoint", help="dygraph .pdparams (pruner *_mask entries are folded in)")
    src.add_argument("--model", help="'module:callable' building the network, e.g. paddle.vision.models:LeNet")
    src.add_argument("--kwargs", default=None, help="JSON object of keyword arguments for --model")
    src.add_argument("--input", action="append", default=[], metavar="[NAME:]SHAPE[:DTYPE]",
                     help="input spec for --model, e.g. x:1x3x32x32:float32 ('?' = dynamic); repeatable")
    src.add_argument("--inference-model", metavar="PREFIX", help="static inference model prefix (.json or .pdmodel)")
    src.add_argument("--check", metavar="DIR", help="re-verify an existing export directory; writes nothing")
    p.add_argument("--out", "-o", metavar="DIR", help="output directory")
    p.add_argument("--name", default="model", help="file name stem of the outputs (default: model)")
    p.add_argument("--target", default="onnx", type=_target, metavar="{onnx,lite,sparse-cpu,all}[,...]",
                   help="onnx: NAME.onnx + NAME.sparse.onnx (default); lite: lite/NAME.pdmodel + .pdiparams "
                   "(legacy IR, for Paddle Lite's opt); sparse-cpu: sparse-cpu/NAME.json + .pdiparams, the layers "
                   "measured faster on this CPU run on sparse kernels (load it with "
                   "paddleslim_tools.runtime.create_predictor); a comma-separated combination (onnx,sparse-cpu); "
                   "all: the three. The dense Paddle model NAME.json + NAME.pdiparams is always written and loads "
                   "with paddle.jit.load(OUT/NAME)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13)")
    p.add_argument("--no-compress", action="store_true", help="do not write NAME.sparse.onnx")
    p.add_argument("--no-verify", action="store_true", help="skip verification")
    p.add_argument("--sparse-cutoff", type=float, default=None, metavar="DENSITY",
                   help="store weights with density <= DENSITY sparse (default: whenever COO is smaller)")
    p.add_argument("--sparse-threshold", type=float, default=0.6, metavar="ZEROS",
                   help="Paddle Lite opt's --sparse_threshold in the printed command (default 0.6)")
    p.add_argument("--nm", metavar="N:M", default=None,
                   help="also verify that every matmul/conv weight of the model is N:M sparse, e.g. 2:4 (with "
                   "--check too)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    p.add_argument("--max-rows", type=int, default=None, help="print at most this many table rows")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the file paths and verdict")
    p.add_argument("--verbose", "-v", action="store_true", help="log progress (to stderr)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No glog info lines, no ccache warning, never autoinstall; the caller's environment is restored after."""
    saved = {k: os.environ.get(k) for k in ("GLOG_minloglevel", "POLYGRAPHY_AUTOINSTALL_DEPS")}
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ccache.*")
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(args: argparse.Namespace) -> "ExportReport":
    if args.max_rows is not None and args.max_rows < 1:
        raise ExportError(f"--max-rows must be >= 1; got {args.max_rows}")
    chosen = [x for x in ("checkpoint", "inference_model", "check") if getattr(args, x)]
    if len(chosen) != 1:
        raise ExportError("give exactly one of --checkpoint (with --model, --input), --inference-model, --check")
    from .specs import parse_targets

    targets = parse_targets(args.target)
    needs_onnx = "onnx" in targets and not args.check
    if args.check:
        needs_onnx = os.path.isfile(os.path.join(args.check, args.name + ".onnx"))
    missing = missing_extra() if needs_onnx else []
    if missing:
        raise ExportError(f"the ONNX export needs the export extra (missing: {', '.join(missing)}): "
                          f"{INSTALL_EXTRA}")
    if targets == {"sparse-cpu"} and not args.check:  # can it be done here at all? before reading any input
        from .sparse_cpu import require_kernels

        require_kernels()
    from .api import export_checkpoint, export_program, verify_export
    from .specs import parse_input_spec

    if args.check:
        return verify_export(args.check, name=args.name, seed=args.seed, nm_pattern=args.nm)
    if not args.out:
        raise ExportError("--out DIR is required")
    check_output_dir("--out", args.out)
    common = dict(name=args.name, opset=args.opset, compress=not args.no_compress, verify=not args.no_verify,
                  sparse_cutoff=args.sparse_cutoff, seed=args.seed, target=args.target,
                  sparse_threshold=args.sparse_threshold, nm_pattern=args.nm)
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


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``paddleslim-export``; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        return _error(f"{e} (see {PROG} --help)")
    log = logging.getLogger("paddleslim_tools")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        log.setLevel(logging.INFO)
    elif log.level == logging.NOTSET:  # importing paddle sets the root logger to INFO: stay quiet unless -v
        log.setLevel(logging.WARNING)
    try:
        with _quiet(), sigterm_as_interrupt(load_paddle=True):  # SIGTERM is Ctrl-C: staging removed, exit 130
            report = _run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # one line, no partial output (staging cleaned up); an interruption is one still
        if args.debug:
            raise
        if interrupted():  # an extension turned the KeyboardInterrupt into its own error
            print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
            return EXIT_INTERRUPTED
        known = (ExportError, ConversionError, TypeError, ValueError, OSError, ImportError)
        return _error(one_line(e) if isinstance(e, known) else f"{type(e).__name__}: {one_line(e)}")
    if args.quiet:
        for k, v in report.files.items():
            print(f"{k}: {v}")
        if report.lite_command:
            print(report.lite_command)
    else:
        print(report.format_table(args.max_rows))
    if not report.ok:
        print(f"{PROG}: verification FAILED: {report.failures[0]}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    return EXIT_OK
