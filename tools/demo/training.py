"""Data and training loop of the demo and the quality study: the bundled 8x8 digits or MNIST from local
IDX files (nothing is ever downloaded), one training epoch, held-out accuracy.
"""
from __future__ import annotations

import gzip
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import paddle

__all__ = ["Dataset", "load_digits", "load_mnist", "read_idx", "find_idx", "check_mnist_dir", "MNIST_FILES",
           "train_epoch", "accuracy"]

TEST_FRACTION = 0.2
SPLIT_SEED = 20240
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

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
        return importlib.resources.files("paddleslim_tools") / "data" / "digits.npz"
    except (ModuleNotFoundError, TypeError):
        return Path(__file__).resolve().parent.parent / "data" / "digits.npz"


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


def find_idx(directory: Path, stem: str) -> Path:
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
        images = read_idx(find_idx(directory, f"{split}-images-idx3-ubyte"))
        labels = read_idx(find_idx(directory, f"{split}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"--mnist-dir {directory}: {split} images {images.shape} / labels {labels.shape} "
                             "do not match (want (N, H, W) and (N,))")
        parts.append(((images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = parts
    if x_train.shape[2:] != x_test.shape[2:]:
        raise ValueError(f"--mnist-dir {directory}: train images are {x_train.shape[2:]}, test images "
                         f"{x_test.shape[2:]}")
    for split, y in (("train", y_train), ("t10k", y_test)):
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"--mnist-dir {directory}: {split} labels must be 0..9; found {y.min()}..{y.max()}")
    return Dataset("mnist", x_train, y_train, x_test, y_test)


def check_mnist_dir(directory: Path) -> None:
    """Raise FileNotFoundError unless ``directory`` holds the four IDX files (reads none of them)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--mnist-dir: {directory} is not a directory")
    for stem in MNIST_FILES:
        find_idx(directory, stem)


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


def train_epoch(model, opt, loss_fn, data: Dataset, batch_size: int, rng, pruner=None,
                on_step=None) -> Tuple[float, float]:
    """One epoch; with ``pruner``: ``pruner.step()`` after each optimizer step, then ``on_step(iteration, ratio
    changed?)``. Returns (mean loss, train accuracy)."""
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
            before = pruner.ratio
            pruner.step()
            if on_step is not None:
                on_step(pruner.cur_iteration - 1, pruner.ratio != before)
        total_loss += float(loss) * len(idx)
        correct += int((logits.argmax(axis=1).numpy() == data.y_train[idx]).sum())
        seen += len(idx)
    return total_loss / seen, correct / seen
