"""``paddleslim-demo``: train a small CNN, prune it to 90% sparsity with GMP, report, export.

Runs on the bundled 8x8 digits data (sklearn's ``load_digits``) by default, or on local MNIST IDX
files with ``--mnist-dir``. Nothing is ever downloaded.

>>> from paddleslim_tools.demo import main
>>> main(["--epochs", "2", "--no-export", "-q"])  # doctest: +SKIP
0
"""
from __future__ import annotations

import argparse
import gzip
import importlib.resources
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np
import paddle

from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner
from paddleslim_static.core import density as core_density

__all__ = ["main", "run", "DemoResult", "Dataset", "load_digits", "load_mnist", "read_idx", "build_model",
           "gmp_configs"]

_log = logging.getLogger("paddleslim")

TARGET_RATIO = 0.9
TEST_FRACTION = 0.2
SPLIT_SEED = 20240


# -- data ------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """Train/test images (N, 1, H, W) float32 in [0, 1] and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def image_shape(self) -> Tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])


def _digits_path():
    try:
        return importlib.resources.files(__package__ or "paddleslim_tools") / "data" / "digits.npz"
    except (ModuleNotFoundError, TypeError):
        return Path(__file__).resolve().with_name("data") / "digits.npz"


def load_digits() -> Dataset:
    """The bundled digits (1797 8x8 images, values 0..16), split 80/20 with a fixed seed."""
    with importlib.resources.as_file(_digits_path()) as path, np.load(path) as data:
        images, target = data["images"], data["target"]
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    y = target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_test = int(round(TEST_FRACTION * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed): 2 zero bytes, dtype code, ndim, big-endian dims."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX dims {dims} need {count * dtype.itemsize} data bytes, "
                         f"file has {len(raw) - header}")
    return np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path:
    """``train-images-idx3-ubyte`` also matches ``train-images.idx3-ubyte`` and ``.gz`` variants."""
    prefix, kind = stem.rsplit("-", 2)[0], "-".join(stem.rsplit("-", 2)[1:])
    for name in (stem, f"{prefix}.{kind}"):
        for suffix in ("", ".gz"):
            p = directory / (name + suffix)
            if p.is_file():
                return p
    raise FileNotFoundError(f"--mnist-dir {directory}: no {stem}[.gz] (or {prefix}.{kind}[.gz]) found")


def load_mnist(directory: Path) -> Dataset:
    """MNIST (or a same-format set) from the four local IDX files in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--mnist-dir: {directory} is not a directory")
    parts = []
    for split in ("train", "t10k"):
        images = read_idx(_find_idx(directory, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(directory, f"{split}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"--mnist-dir {directory}: {split} images {images.shape} / labels {labels.shape} "
                             "do not match (want (N, H, W) and (N,))")
        parts.append(((images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = parts
    return Dataset("mnist", x_train, y_train, x_test, y_test)


# -- model -----------------------------------------------------------------------------------------
def build_model(image_shape: Sequence[int] = (8, 8), num_classes: int = 10) -> paddle.nn.Layer:
    """conv3x3(16)-BN-ReLU-maxpool2, conv3x3(32)-ReLU, maxpool2 while the map is >= 8, FC(64)-ReLU, FC(classes).

    Only ops with an exact ONNX equivalent (no adaptive pooling with uneven windows), so the export check
    passes at any input size: 8x8 digits -> 4x4 maps, 28x28 MNIST -> 14x14 -> 7x7 maps. The BatchNorm layer
    is there to show it is skipped by the default prunable-parameter rule.

    >>> list(build_model((28, 28))[-3].weight.shape)
    [1568, 64]
    """
    if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 2 for d in image_shape)):
        raise ValueError(f"image_shape must be two ints >= 2 (height, width); got {image_shape!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
    h, w = image_shape[0] // 2, image_shape[1] // 2
    layers: List[paddle.nn.Layer] = [
        paddle.nn.Conv2D(1, 16, 3, padding=1), paddle.nn.BatchNorm2D(16), paddle.nn.ReLU(), paddle.nn.MaxPool2D(2),
        paddle.nn.Conv2D(16, 32, 3, padding=1), paddle.nn.ReLU(),
    ]
    while min(h, w) >= 8:
        layers.append(paddle.nn.MaxPool2D(2))
        h, w = h // 2, w // 2
    layers += [paddle.nn.Flatten(), paddle.nn.Linear(32 * h * w, 64), paddle.nn.ReLU(),
               paddle.nn.Linear(64, num_classes)]
    return paddle.nn.Sequential(*layers)


def digits_cnn() -> paddle.nn.Layer:
    """The demo network for the bundled 8x8 digits (``paddleslim-export --model paddleslim_tools.demo:digits_cnn``)."""
    return build_model((8, 8))


def mnist_cnn() -> paddle.nn.Layer:
    """The demo network for 28x28 MNIST (``paddleslim-export --model paddleslim_tools.demo:mnist_cnn``)."""
    return build_model((28, 28))


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


# -- training --------------------------------------------------------------------------------------
def _batches(n: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def accuracy(model: paddle.nn.Layer, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
    model.eval()
    correct = 0
    with paddle.no_grad():
        for i in range(0, len(y), batch_size):
            logits = model(paddle.to_tensor(x[i:i + batch_size]))
            correct += int((logits.argmax(axis=1).numpy() == y[i:i + batch_size]).sum())
    model.train()
    return correct / max(1, len(y))


def _prunable_density(model: paddle.nn.Layer, names: Sequence[str]) -> float:
    wanted = set(names)
    return core_density(p.numpy() for p in model.parameters() if p.name in wanted)


@dataclass
class DemoResult:
    """What a demo run measured; ``main`` prints it."""

    dataset: str
    dense_accuracy: float
    sparse_accuracy: float
    total_density: float
    prunable_density: float
    prunable_params: List[str]
    layers: List[Tuple[str, Tuple[int, ...], float, bool]] = field(default_factory=list)
    export_ok: Optional[bool] = None
    seconds: float = 0.0

    @property
    def prunable_sparsity(self) -> float:
        return 1.0 - self.prunable_density


class _Out:
    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream, self.quiet = stream, quiet

    def __call__(self, msg: str = "", always: bool = False) -> None:
        if always or not self.quiet:
            print(msg, file=self.stream, flush=True)


def train_epoch(model, opt, loss_fn, data: Dataset, batch_size: int, rng, pruner=None) -> Tuple[float, float]:
    total_loss, correct, seen = 0.0, 0, 0
    for idx in _batches(len(data.y_train), batch_size, rng):
        x = paddle.to_tensor(data.x_train[idx])
        y = paddle.to_tensor(data.y_train[idx])
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        if pruner is not None:
            pruner.step()
        total_loss += float(loss) * len(idx)
        correct += int((logits.argmax(axis=1).numpy() == data.y_train[idx]).sum())
        seen += len(idx)
    return total_loss / seen, correct / seen


def run(args: argparse.Namespace, out: _Out) -> Tuple[DemoResult, paddle.nn.Layer, Dataset]:
    """Train dense, prune with GMP to 90%, finalize; returns (result, pruned model, data) for export."""
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
    prune_epochs = max(1, args.epochs)
    tune_epochs = max(1, args.epochs)
    configs = gmp_configs(iters, prune_epochs, tune_epochs)
    pruner = GMPUnstructuredPruner(model, ratio=TARGET_RATIO, configs=configs)
    prunable = pruner.prunable_params
    total_epochs = -(-(configs["pruning_iterations"] + configs["tunning_iterations"]) // iters)
    out(f"== GMP pruning to {TARGET_RATIO:.0%}: {total_epochs} epochs ({iters} iterations each); configs {configs} ==")
    for epoch in range(total_epochs):
        loss, acc = train_epoch(model, opt, loss_fn, data, args.batch_size, rng, pruner)
        out(f"prune  epoch {epoch + 1:2d}/{total_epochs}  loss {loss:.4f}  train acc {acc:.4f}  "
            f"ratio {pruner.ratio:.4f}  prunable density {_prunable_density(model, prunable):.4f}")

    sparse_acc = accuracy(model, data.x_test, data.y_test)
    pruner.finalize()  # masks applied for good, hook and mask buffers gone
    by_layer = UnstructuredPruner.sparse_by_layer(model)
    shapes = {p.name: tuple(p.shape) for p in model.parameters()}
    layers = [(name, shapes[name], d, name in set(prunable)) for name, d in by_layer.items()]
    return DemoResult(
        dataset=data.name,
        dense_accuracy=dense_acc,
        sparse_accuracy=sparse_acc,
        total_density=UnstructuredPruner.total_sparse(model),
        prunable_density=_prunable_density(model, prunable),
        prunable_params=prunable,
        layers=layers,
        seconds=time.perf_counter() - start,
    ), model, data


def format_layer_table(layers: Sequence[Tuple[str, Tuple[int, ...], float, bool]]) -> str:
    """Markdown-ish table: parameter, shape, density, pruned?"""
    rows = [("parameter", "shape", "density", "pruned")]
    rows += [(n, "x".join(map(str, s)) or "scalar", f"{d:.4f}", "yes" if p else "no") for n, s, d, p in layers]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _export(model: paddle.nn.Layer, data: Dataset, out_dir: Path, out: _Out) -> Optional[bool]:
    try:
        from paddleslim_tools.export import export_layer
    except ImportError as e:  # the export extra (onnx, paddle2onnx, onnxruntime) is not installed
        _log.warning("export skipped: %s; install the export extra (pip install \".[export]\") or pass --no-export", e)
        return None
    h, w = data.image_shape
    spec = [paddle.static.InputSpec([None, 1, h, w], "float32", "image")]
    model.eval()
    out(f"== export to {out_dir} ==", always=True)
    report = export_layer(model, spec, str(out_dir), name=f"{data.name}_cnn")
    out(report.format_table(), always=True)
    out(f"exported {len(report.files)} files to {Path(out_dir).resolve()}: "
        + ", ".join(Path(p).name for _, p in sorted(report.files.items())), always=True)
    return bool(report.ok)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paddleslim-demo",
        description="Train a small CNN, prune it to 90%% unstructured sparsity with GMP, report and export it.",
    )
    p.add_argument("--epochs", type=int, default=12,
                   help="dense training epochs; GMP then prunes for as many epochs and fine-tunes for as many "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=0.05, help="Momentum learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="paddle and numpy seed (default: %(default)s)")
    p.add_argument("--mnist-dir", type=Path, default=None,
                   help="train on local MNIST IDX files (train-images-idx3-ubyte[.gz] etc.) instead of digits")
    p.add_argument("--out-dir", type=Path, default=Path("out"), help="export directory (default: ./out)")
    p.add_argument("--no-export", action="store_true", help="skip the Paddle inference / ONNX export")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the results")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if not args.lr > 0 or not np.isfinite(args.lr):
        p.error(f"--lr must be a positive number; got {args.lr}")


def main(argv: Optional[Sequence[str]] = None, stream: Optional[TextIO] = None) -> int:
    """Entry point of ``paddleslim-demo``; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if not logging.getLogger().handlers and not _log.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = _Out(stream if stream is not None else sys.stdout, args.quiet)
    warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
    t0 = time.perf_counter()
    try:
        result, model, data = run(args, out)
    except (OSError, ValueError) as e:
        print(f"paddleslim-demo: error: {e}", file=sys.stderr)
        return 2
    out("== result ==", always=True)
    out(f"dense test accuracy:  {result.dense_accuracy:.4f}", always=True)
    out(f"sparse test accuracy: {result.sparse_accuracy:.4f}", always=True)
    out(f"total_sparse (density of all parameters): {result.total_density:.4f}", always=True)
    out(f"prunable weights: {len(result.prunable_params)} parameters, density {result.prunable_density:.4f}, "
        f"sparsity {result.prunable_sparsity:.4f}", always=True)
    out(format_layer_table(result.layers), always=True)
    if args.no_export:
        out(f"done in {result.seconds:.1f} s (export skipped: --no-export)", always=True)
        return 0
    ok = _export(model, data, args.out_dir, out)
    out(f"done in {time.perf_counter() - t0:.1f} s", always=True)
    if ok is False:
        print("paddleslim-demo: export verification failed (see the report above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
