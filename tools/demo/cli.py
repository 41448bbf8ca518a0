"""``paddleslim-demo``: train a small CNN, prune it to 90% sparsity with GMP, report, save, export.

Runs on the bundled 8x8 digits data (sklearn's ``load_digits``) by default, or on local MNIST IDX
files with ``--mnist-dir``. Nothing is ever downloaded. Writes into ``--out-dir``: the checkpoint
(``<net>.pdparams``, accepted by ``paddleslim-export --checkpoint``), the sparsity report
(``sparsity.txt``/``.json`` and PNGs), ``results.json`` (accuracies) and the export (``export/``).

The package: :mod:`.cli` (this: run, report, save, export, the command line), :mod:`.models` (the networks,
``paddleslim_tools.demo:digits_cnn`` for the export and report tools), :mod:`.training` (data, training loop).

>>> from paddleslim_tools.demo import main
>>> main(["--epochs", "2", "--no-export", "-q", "--out-dir", "/tmp/demo"])  # doctest: +SKIP
0
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional, Sequence, TextIO, Tuple

import numpy as np

with warnings.catch_warnings():  # Paddle's import-time "No ccache found" notice is not the demo's output
    warnings.filterwarnings("ignore", message=".*ccache.*")
    import paddle

from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner

from ..cli_contract import EXIT_INTERRUPTED, check_output_dir, sigterm_as_interrupt
from .models import build_model
from .training import Dataset, accuracy, check_mnist_dir, load_digits, load_mnist, train_epoch

__all__ = ["main", "run", "DemoResult", "gmp_configs", "missing_extras", "EXPORT_TARGET", "TARGET_RATIO"]

_log = logging.getLogger(__name__)
_PROG = "paddleslim-demo"

TARGET_RATIO = 0.9
MAX_EPOCHS = 1000


def gmp_configs(iters_per_epoch: int, prune_epochs: int, tune_epochs: int) -> Dict[str, float]:
    """GMP configs for the demo: prune over ``prune_epochs`` epochs, then fine-tune at the target ratio.

    ``pruning_steps`` is chosen so each ratio is held for more than 10 iterations (PaddleSlim's rule).
    """
    pruning = max(11, prune_epochs * iters_per_epoch)
    steps = max(1, min(20, (pruning - 1) // 10))
    return {
        "stable_iterations": 0,
        "pruning_iterations": pruning,
        "tunning_iterations": max(0, tune_epochs * iters_per_epoch),
        "resume_iteration": 0,
        "pruning_steps": steps,
        "initial_ratio": 0.3,
    }


def _prunable_sparsity(model: paddle.nn.Layer, names: Sequence[str]) -> float:
    wanted = set(names)
    arrays = [p.numpy() for p in model.parameters() if p.name in wanted]
    return 1.0 - sum(int(np.count_nonzero(a)) for a in arrays) / max(1, sum(a.size for a in arrays))


@dataclass
class DemoResult:
    """What a demo run measured; ``main`` prints it and writes it to ``results.json``."""

    dataset: str
    image_shape: Tuple[int, int]
    dense_accuracy: float
    sparse_accuracy: float
    total_density: float
    prunable_density: float
    prunable_params: List[str]
    seconds: float = 0.0
    files: Dict[str, str] = field(default_factory=dict)
    export_ok: Optional[bool] = None

    @property
    def prunable_sparsity(self) -> float:
        return 1.0 - self.prunable_density


class _Out:
    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream, self.quiet = stream, quiet

    def __call__(self, msg: str = "", always: bool = False) -> None:
        if always or not self.quiet:
            print(msg, file=self.stream, flush=True)


def run(args: argparse.Namespace, out: _Out) -> Tuple[DemoResult, paddle.nn.Layer, Dataset, Any]:
    """Train dense, prune with GMP to 90%; returns (result, model, data, sparsity report) before finalize."""
    from ..report.sparsity import schedule_points, sparsity_report

    start = time.perf_counter()
    paddle.set_device("cpu")
    paddle.seed(args.seed)
    np.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = load_mnist(args.mnist_dir) if args.mnist_dir else load_digits()
    out(f"dataset: {data.name}  train {len(data.y_train)}  test {len(data.y_test)}  "
        f"image {data.image_shape[0]}x{data.image_shape[1]}")

    with paddle.utils.unique_name.guard():  # same parameter names (conv2d_0.w_0, ...) on every run
        model = build_model(data.image_shape)
    loss_fn = paddle.nn.CrossEntropyLoss()
    opt = paddle.optimizer.Momentum(learning_rate=args.lr, momentum=0.9, parameters=model.parameters())

    out(f"== dense training: {args.epochs} epochs ==")
    for epoch in range(args.epochs):
        loss, acc = train_epoch(model, opt, loss_fn, data, args.batch_size, rng)
        out(f"dense  epoch {epoch + 1:2d}/{args.epochs}  loss {loss:.4f}  train acc {acc:.4f}")
    dense_acc = accuracy(model, data.x_test, data.y_test)
    out(f"dense test accuracy: {dense_acc:.4f}")

    iters = -(-len(data.y_train) // args.batch_size)
    configs = gmp_configs(iters, args.epochs, args.epochs)
    pruner = GMPUnstructuredPruner(model, ratio=TARGET_RATIO, configs=configs)
    prunable = list(pruner.masks)
    total_iters = configs["pruning_iterations"] + configs["tunning_iterations"]
    total_epochs = -(-total_iters // iters)
    measured: List[List[float]] = []

    def on_step(it: int, ratio_changed: bool) -> None:
        if ratio_changed:  # the measured sparsity right after every schedule change
            measured.append([it, _prunable_sparsity(model, prunable)])

    out(f"== GMP pruning to {TARGET_RATIO:.0%}: {total_epochs} epochs ({iters} iterations each); configs {configs} ==")
    for epoch in range(total_epochs):
        loss, acc = train_epoch(model, opt, loss_fn, data, args.batch_size, rng, pruner, on_step)
        out(f"prune  epoch {epoch + 1:2d}/{total_epochs}  loss {loss:.4f}  train acc {acc:.4f}  "
            f"ratio {pruner.ratio:.4f}  prunable density {1 - _prunable_sparsity(model, prunable):.4f}")
        measured.append([pruner.cur_iteration - 1, _prunable_sparsity(model, prunable)])

    pruner.update_params()
    sparse_acc = accuracy(model, data.x_test, data.y_test)
    history = {"schedule": schedule_points(pruner.schedule, total_epochs * iters), "measured": measured,
               "target": TARGET_RATIO, "configs": configs}
    report = sparsity_report(model, pruner=pruner, history=history)
    pruner.finalize()  # masks applied for good, hook and mask buffers gone: a plain checkpoint
    return DemoResult(
        dataset=data.name, image_shape=data.image_shape, dense_accuracy=dense_acc, sparse_accuracy=sparse_acc,
        total_density=UnstructuredPruner.total_sparse(model),
        prunable_density=1.0 - _prunable_sparsity(model, prunable), prunable_params=prunable,
        seconds=time.perf_counter() - start,
    ), model, data, report


def _builder(shape: Tuple[int, int]) -> str:
    if tuple(shape) == (8, 8):
        return "--model paddleslim_tools.demo:digits_cnn"
    if tuple(shape) == (28, 28):
        return "--model paddleslim_tools.demo:mnist_cnn"
    return f"--model paddleslim_tools.demo:build_model --kwargs '{{\"image_shape\": [{shape[0]}, {shape[1]}]}}'"


def _write_files(result: DemoResult, model: paddle.nn.Layer, report: Any, args: argparse.Namespace,
                 out: _Out, out_dir: Path) -> None:
    from ..report.deployment import SCOPE_NOTE, deployment_report

    h, w = result.image_shape
    stem = f"{result.dataset}_cnn"
    ckpt = out_dir / f"{stem}.pdparams"
    out(f"[files 1/2] checkpoint {ckpt.name}")
    paddle.save(model.state_dict(), str(ckpt))
    out(f"[files 2/2] sparsity report{'' if args.no_plots else ' and plots'}")
    dep = deployment_report(model, [1, 1, h, w])
    report.extra["deployment"] = dep.to_dict()
    report.extra["accuracy"] = {"dense": result.dense_accuracy, "sparse": result.sparse_accuracy}
    result.files.update(report.write(out_dir, "sparsity", plots=not args.no_plots))
    result.files["checkpoint"] = str(ckpt)
    out(f"deployment: {dep.summary()} {SCOPE_NOTE}", always=True)


def _export_command(result: DemoResult, out_dir: Path) -> str:
    """The command that re-exports the checkpoint as the demo's export did: same network, input spec (dynamic
    batch), file names."""
    h, w = result.image_shape
    return (f"paddleslim-export --checkpoint {shlex.quote(result.files['checkpoint'])} {_builder(result.image_shape)} "
            f"--input 'image:?x1x{h}x{w}:float32' --name {_export_name(result.dataset)} --target {EXPORT_TARGET} "
            f"--out {shlex.quote(str(out_dir))}")


#: the demo's export: ONNX (+ compressed, verified) and the sparse x86 model when it measures faster
EXPORT_TARGET = "onnx,sparse-cpu"


def _export_name(dataset: str) -> str:
    return f"{dataset}_cnn"


class _StepLog(logging.Handler):
    """While the export runs: its INFO records become progress lines; warnings go to the root handlers as usual
    (the export loggers stop propagating meanwhile, so INFO lines are not printed twice)."""

    def __init__(self, out: _Out) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            self.out(f"  export: {record.getMessage()}")
            return
        for h in logging.getLogger().handlers:
            if record.levelno >= h.level:
                h.handle(record)


def _export(model: paddle.nn.Layer, data: Dataset, out_dir: Path, out: _Out, shown: Optional[Path] = None) -> bool:
    """Export into ``out_dir`` (``shown``: where its files will be once moved into place)."""
    from paddleslim_tools.export import export_layer

    h, w = data.image_shape
    spec = [paddle.static.InputSpec([None, 1, h, w], "float32", "image")]
    model.eval()
    out(f"== export to {shown or out_dir} (Paddle inference model, ONNX, compressed ONNX, sparse x86 model if faster, "
        "verification) ==", always=True)
    handler, loggers = _StepLog(out), [logging.getLogger(n) for n in ("paddleslim_static", "paddleslim_tools.export")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        report = export_layer(model, spec, str(out_dir), name=_export_name(data.name), target=EXPORT_TARGET)
    finally:
        for lg, (level, propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
    if shown is not None:  # the table names the files where they will be, not in the staging directory
        staged = str(out_dir)
        report.files = {k: str(shown) + p[len(staged):] if p.startswith(staged) else p
                        for k, p in report.files.items()}
    out(report.format_table(), always=True)
    steps = getattr(report, "timings", None) or {}
    if steps:
        out("export steps: " + ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
    out(f"exported {len(report.files)} files to {Path(shown or out_dir).resolve()}: "
        + ", ".join(Path(p).name for _, p in sorted(report.files.items())), always=True)
    return bool(report.ok)


def missing_extras(plots: bool = True, export: bool = True) -> Optional[str]:
    """One line naming every missing module of the extras the run needs (``plot``: matplotlib; ``export``: onnx,
    onnxruntime, paddle2onnx) and how to install them or do without, or None when nothing is missing."""
    from ..export.extras import EXTRA_MODULES, missing_extra

    need = [("plot", "--no-plots", ["matplotlib"] if plots else []),
            ("export", "--no-export", list(EXTRA_MODULES) if export else [])]
    gaps = [(extra, flag, missing_extra(mods)) for extra, flag, mods in need]
    gaps = [(extra, flag, mods) for extra, flag, mods in gaps if mods]
    if not gaps:
        return None
    what = "; ".join(f"{extra} extra: " + ", ".join(mods) for extra, _, mods in gaps)
    extras = ",".join(extra for extra, _, _ in gaps)
    flags = " ".join(flag for _, flag, _ in gaps)
    return f'missing {what}: pip install "paddleslim-sparsity[{extras}]", or pass {flags}'



class _UsageError(Exception):
    """An argparse error, shown as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, not usage + message
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=_PROG, description="Train a small CNN, prune it to 90% unstructured sparsity with GMP, "
                                        "report, save and export it.")
    p.add_argument("--epochs", type=int, default=12,
                   help="dense training epochs; GMP then prunes for as many epochs and fine-tunes for as many "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=0.05, help="Momentum learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="paddle and numpy seed (default: %(default)s)")
    p.add_argument("--mnist-dir", type=Path, default=None,
                   help="train on local MNIST IDX files (train-images-idx3-ubyte[.gz] etc.) instead of digits")
    p.add_argument("--out-dir", type=Path, default=Path("out"),
                   help="checkpoint, reports, results.json and export/ go here (default: ./out)")
    p.add_argument("--no-export", action="store_true", help="skip the Paddle inference / ONNX export")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (matplotlib not needed)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the results")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before training; ValueError with one line."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.epochs > MAX_EPOCHS:  # the demo trains 3 x epochs: more is a typo, not a demo
        raise ValueError(f"--epochs must be <= {MAX_EPOCHS}; got {args.epochs}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number; got {args.lr}")
    if not 0 <= args.seed < 2 ** 32:
        raise ValueError(f"--seed must be in [0, 2**32); got {args.seed}")
    if args.mnist_dir is not None:
        try:
            check_mnist_dir(args.mnist_dir)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
    out_dir = Path(args.out_dir)
    check_output_dir("--out-dir", str(out_dir))
    for sub in ("export",) if not args.no_export else ():
        if (out_dir / sub).exists() and not (out_dir / sub).is_dir():
            raise ValueError(f"--out-dir {str(out_dir)!r}: {str(out_dir / sub)!r} exists and is not a directory")
    missing = missing_extras(plots=not args.no_plots, export=not args.no_export)
    if missing:
        raise ValueError(missing)


def main(argv: Optional[Sequence[str]] = None, stream: Optional[TextIO] = None) -> int:
    """Entry point of ``paddleslim-demo``; returns the exit code (0 ok, 1 export check failed, 2 bad input, 130
    Ctrl-C or SIGTERM). The files are written into a staging directory next to ``--out-dir`` and moved into place
    at the end: a failed, interrupted or killed run leaves nothing partial."""
    try:
        with sigterm_as_interrupt(), warnings.catch_warnings():
            # Paddle's "No ccache found" (its import, or building the sparse CPU operators) is not the demo's output
            warnings.filterwarnings("ignore", message=".*ccache.*")
            return _main(argv, stream)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Optional[Sequence[str]], stream: Optional[TextIO]) -> int:
    from ..staging import staging

    try:
        args = _parser().parse_args(argv)
        _check_args(args)
    except (_UsageError, ValueError) as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers and not _log.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = _Out(stream if stream is not None else sys.stdout, args.quiet)
    from paddleslim_static.core.kernels import not_in_use

    if not_in_use():  # said once, up front: the run is slower than it need be
        out(not_in_use(), always=True)
    warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
    t0 = time.perf_counter()
    try:
        result, model, data, report = run(args, out)
    except (OSError, ValueError) as e:
        print(f"{_PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out("== result ==", always=True)
    out(f"dense test accuracy:  {result.dense_accuracy:.4f}", always=True)
    out(f"sparse test accuracy: {result.sparse_accuracy:.4f}", always=True)
    out(f"total_sparse (density of all parameters): {result.total_density:.4f}", always=True)
    out(f"prunable weights: {len(result.prunable_params)} parameters, density {result.prunable_density:.4f}, "
        f"sparsity {result.prunable_sparsity:.4f}", always=True)
    out(report.format_table(), always=True)
    ok, failed = None, None
    try:
        with staging(args.out_dir, []) as (tmp, final):
            where = lambda p: str(Path(final) / Path(p).relative_to(tmp))  # noqa: E731  (files land in final)
            _write_files(result, model, report, args, out, Path(tmp))
            if not args.no_export:
                try:
                    ok = _export(model, data, Path(tmp) / "export", out, shown=Path(final) / "export")
                    result.files["export_dir"] = str(Path(tmp) / "export")
                except OSError:  # the output location (a full disk): below, exit 2 with nothing left behind
                    raise
                except Exception as e:  # the export tool's own errors: one line, not a traceback
                    failed = f"export failed: {' '.join(str(e).split())[:300]}"
            result.export_ok = ok
            result.files = {k: where(p) for k, p in result.files.items()}
            result.files["results"] = where(Path(tmp) / "results.json")
            payload = dict(asdict(result), export_command=_export_command(result, Path(final) / "export2"))
            (Path(tmp) / "results.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    except (OSError, ValueError) as e:  # a full disk, a vanished directory: the OS's words, nothing left behind
        print(f"{_PROG}: error: --out-dir {str(args.out_dir)!r}: {getattr(e, 'strerror', None) or e}",
              file=sys.stderr)
        return 2
    if failed is not None:
        print(f"{_PROG}: error: {failed}", file=sys.stderr)
        return 1
    for kind, path in sorted(result.files.items()):
        out(f"wrote {kind}: {Path(path).resolve()}", always=True)
    out(f"re-export the checkpoint: {payload['export_command']}", always=True)
    out(f"done in {time.perf_counter() - t0:.1f} s" + (" (export skipped: --no-export)" if args.no_export else ""),
        always=True)
    if ok is False:
        print(f"{_PROG}: export verification failed (see the report above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
