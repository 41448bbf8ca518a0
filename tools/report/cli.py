"""``paddleslim-report``: per-layer sparsity table, JSON and PNGs, plus the deployment report.

    paddleslim-report out/digits_cnn.pdparams                       # table of a dygraph checkpoint
    paddleslim-report out/export/digits_cnn --out rep/              # inference model; rep/sparsity.{txt,json,png}
    paddleslim-report ckpt.pdparams --model paddleslim_tools.demo:digits_cnn --input-shape 1x1x8x8
    paddleslim-report model.pdmodel --input-shape 1x3x224x224 --sparse-threshold 0.4

The report itself is :mod:`.sparsity` and :mod:`.deployment`; loading is :mod:`paddleslim_tools.loading`'s.
Exit codes: 0 done, 2 bad input (one line on stderr, nothing written), 130 Ctrl-C or SIGTERM. The files of ``--out``
are written into a staging directory next to it and moved into place at the end, so a failed, interrupted or
killed run leaves no partial report.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence

from ..cli_contract import EXIT_INTERRUPTED, check_output_dir, sigterm_as_interrupt
from ..errors import one_line

__all__ = ["main", "parse_shape", "check_input_shape"]

_PROG = "paddleslim-report"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage + message)
        raise _UsageError(message)


def parse_shape(text: str) -> List[int]:
    """``1x3x224x224`` (or ``1,3,224,224``) -> [1, 3, 224, 224]."""
    parts = str(text).replace(",", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--input-shape must look like 1x3x224x224; got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"--input-shape dims must be positive ints; got {text!r}")
    return dims


def check_input_shape(shape: Sequence[int], program: Any, legacy: bool, text: str) -> None:
    """ValueError unless ``shape`` fits the single input of an inference model (same rank; fixed dims equal)."""
    from paddleslim_static.programs import static_mode

    with static_mode(pir=not legacy):
        if legacy:
            block = program.global_block()
            feeds = [list(block.var(op.output("Out")[0]).shape) for op in block.ops if op.type == "feed"]
        else:
            feeds = [list(op.result(0).shape) for op in program.global_block().ops if op.name() == "pd_op.data"]
    if len(feeds) != 1:
        return  # several inputs: --input-shape describes the first only; nothing to compare reliably
    want = [int(d) for d in feeds[0]]
    if len(want) != len(shape) or any(w >= 0 and w != d for w, d in zip(want, shape)):
        model = "x".join("?" if w < 0 else str(w) for w in want)
        raise ValueError(f"--input-shape {text} does not fit the model's input {model}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=_PROG, description="Per-layer sparsity report (table, JSON, PNG) and deployment report of a "
                                        "checkpoint or an inference model.")
    p.add_argument("source", help="dygraph checkpoint (.pdparams) or inference model prefix (.json / .pdmodel)")
    p.add_argument("--model", help="module:callable building the network of a checkpoint (needed for "
                                   "--input-shape with a checkpoint)")
    p.add_argument("--kwargs", default=None, help="JSON object of keyword arguments for --model")
    p.add_argument("--input-shape", default=None, metavar="NxCxHxW",
                   help="also write the deployment report for this input shape")
    p.add_argument("--sparse-threshold", type=float, default=None, metavar="F",
                   help="Paddle Lite opt's --sparse_threshold (default 0.6)")
    p.add_argument("--history", default=None, metavar="JSON",
                   help="GMP history {'schedule': [[it, ratio], ...], 'measured': [[it, sparsity], ...]}, or a "
                        "sparsity.json that carries one (the demo writes out/sparsity.json)")
    p.add_argument("--out", default=None, metavar="DIR", help="write NAME.txt, NAME.json and PNGs here")
    p.add_argument("--name", default="sparsity", help="file name stem (default: sparsity)")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (matplotlib not needed)")
    p.add_argument("--max-rows", type=int, default=None, help="print at most this many table rows")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the written paths")
    return p


def _validate(args: argparse.Namespace) -> Dict[str, Any]:
    src = args.source
    is_ckpt = src.endswith(".pdparams")
    if is_ckpt and not os.path.isfile(src):
        raise ValueError(f"checkpoint {src!r} not found")
    if not is_ckpt:
        from ..loading import model_files

        model_files(src)
    kw = None
    if args.kwargs is not None:
        try:
            kw = json.loads(args.kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(f"--kwargs is not JSON ({e.msg}): {args.kwargs!r}") from None
        if not isinstance(kw, dict):
            raise ValueError(f"--kwargs must be a JSON object; got {args.kwargs!r}")
    if args.model and not is_ckpt:
        raise ValueError("--model goes with a .pdparams checkpoint, not an inference model")
    shape = parse_shape(args.input_shape) if args.input_shape is not None else None
    if shape is not None and is_ckpt and not args.model:
        raise ValueError("--input-shape with a checkpoint needs --model module:callable (the network's ops)")
    if args.sparse_threshold is not None and not 0.0 <= args.sparse_threshold <= 1.0:
        raise ValueError(f"--sparse-threshold must be in [0, 1]; got {args.sparse_threshold}")
    if args.sparse_threshold is not None and shape is None:
        raise ValueError("--sparse-threshold needs --input-shape (it applies to the deployment report)")
    if args.max_rows is not None and args.max_rows < 1:
        raise ValueError(f"--max-rows must be >= 1; got {args.max_rows}")
    history = None
    if args.history is not None:
        try:
            history = json.loads(Path(args.history).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: JSON errors and undecodable (binary) files
            raise ValueError(f"--history {args.history!r}: {e}") from None
    if args.out is not None:
        check_output_dir("--out", args.out)
        if not args.no_plots:
            from .plots import require_matplotlib

            try:
                require_matplotlib()
            except ImportError as e:
                raise ValueError(str(e)) from None
    if not args.name or os.sep in args.name or args.name in (".", ".."):
        raise ValueError(f"--name must be a plain file name stem; got {args.name!r}")
    return {"checkpoint": is_ckpt, "kwargs": kw, "shape": shape, "history": history}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``paddleslim-report``; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    glog = os.environ.get("GLOG_minloglevel")
    os.environ.setdefault("GLOG_minloglevel", "2")  # no glog INFO lines on stderr (read when Paddle loads)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time noise on stderr
            with sigterm_as_interrupt(load_paddle=True):  # Paddle's import would replace the handler
                return _main(argv)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if glog is None:
            os.environ.pop("GLOG_minloglevel", None)


def _main(argv: Optional[Sequence[str]]) -> int:
    try:
        args = _parser().parse_args(argv)
        v = _validate(args)
        import paddle

        from ..loading import build_network, load_checkpoint, load_inference_model
        from .deployment import DEFAULT_SPARSE_THRESHOLD, deployment_report
        from .sparsity import sparsity_report

        paddle.set_device("cpu")
        target: Any = args.source
        state = load_checkpoint(args.source) if v["checkpoint"] else None
        if state is None:
            program, _, legacy = load_inference_model(args.source)
            if v["shape"] is not None:
                check_input_shape(v["shape"], program, legacy, args.input_shape)
        if args.model:
            target, _ = build_network(args.model, v["kwargs"], state)
        rep = sparsity_report(args.source if state is None else state, history=v["history"])  # masks: prunable
        if state is not None:
            rep.source, rep.kind = args.source, "checkpoint"
        dep = None
        if v["shape"] is not None:
            th = args.sparse_threshold if args.sparse_threshold is not None else DEFAULT_SPARSE_THRESHOLD
            try:
                dep = deployment_report(target, v["shape"], sparse_threshold=th)
            except MemoryError:
                raise ValueError(f"--input-shape {args.input_shape}: too large (out of memory)") from None
            except (ValueError, RuntimeError) as e:  # Paddle's shape errors (InvalidArgument...) are ValueErrors
                raise ValueError(f"--input-shape {args.input_shape} does not fit the network: {one_line(e)}") from None
            rep.extra["deployment"] = dep.to_dict()
    except _UsageError as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        print(f"{_PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"{rep.kind}: {rep.source}")
        print(rep.format_table(args.max_rows))
        if dep is not None:
            print()
            print(dep.format_table())
    if args.out is not None:
        from ..staging import staging

        try:
            with staging(args.out, []) as (tmp, final):  # nothing partial: moved into place at the end
                files = rep.write(tmp, args.name, plots=not args.no_plots)
                if dep is not None:
                    path = Path(tmp) / f"{args.name}_deployment.txt"
                    path.write_text(dep.format_table() + "\n", encoding="utf-8")
                    files["deployment"] = str(path)
        except (OSError, ValueError) as e:  # full disk, permissions: the OS's words
            print(f"{_PROG}: error: --out {args.out!r}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return 2
        for kind, path in files.items():
            print(f"wrote {kind}: {os.path.join(final, os.path.relpath(path, tmp))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
