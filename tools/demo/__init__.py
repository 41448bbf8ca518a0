"""``paddleslim-demo``: train a small CNN, prune it to 90% with GMP, report, save and export it.

:mod:`.cli` (the run and the command line), :mod:`.models` (the networks: ``paddleslim_tools.demo:digits_cnn``,
``:mnist_cnn``, ``:build_model`` for ``--model``), :mod:`.training` (the bundled digits, MNIST IDX files, one
training epoch, accuracy). Names load on first use.

>>> from paddleslim_tools.demo import digits_cnn
>>> list(digits_cnn()[0].weight.shape)
[16, 1, 3, 3]
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_names

if TYPE_CHECKING:
    from .cli import EXPORT_TARGET, TARGET_RATIO, DemoResult, gmp_configs, main, missing_extras, run
    from .models import build_model, digits_cnn, mnist_cnn
    from .training import Dataset, accuracy, load_digits, load_mnist, read_idx, train_epoch

_WHERE = {
    "main": ".cli", "run": ".cli", "DemoResult": ".cli", "gmp_configs": ".cli", "missing_extras": ".cli",
    "EXPORT_TARGET": ".cli", "TARGET_RATIO": ".cli",
    "build_model": ".models", "digits_cnn": ".models", "mnist_cnn": ".models",
    "Dataset": ".training", "load_digits": ".training", "load_mnist": ".training", "read_idx": ".training",
    "train_epoch": ".training", "accuracy": ".training",
}
__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_names(__name__, _WHERE)
