"""Density (nonzero / all) of weight arrays."""
from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["nonzero_and_size", "density"]


def nonzero_and_size(arrays: Iterable[np.ndarray]):
    nz, size = 0, 0
    for a in arrays:
        nz += int(np.count_nonzero(a))
        size += int(a.size)
    return nz, size


def density(arrays: Iterable[np.ndarray]) -> float:
    """Nonzero elements / all elements (1.0 for no elements).

    >>> import numpy as np
    >>> density([np.array([0., 1., 2., 0.])])
    0.5
    """
    nz, size = nonzero_and_size(arrays)
    return nz / size if size else 1.0
