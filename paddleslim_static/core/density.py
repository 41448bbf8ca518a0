"""Density (nonzero / all) of weight arrays, and the density queries both modes answer (the whole model, its 1x1
convolutions, each parameter) over ``(name, shape, array)`` triples a mode hands out.

>>> import numpy as np
>>> params = [("conv.w", (4, 2, 1, 1), np.array([0., 1.] * 4).reshape(4, 2, 1, 1)), ("fc.b", (3,), np.ones(3))]
>>> density_of(params), density_of(params, only=lambda shape: len(shape) == 4), density_by_name(params)
(0.6363636363636364, 0.5, {'conv.w': 0.5, 'fc.b': 1.0})
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

__all__ = ["nonzero_and_size", "density", "density_of", "density_by_name", "NamedArray"]

NamedArray = Tuple[str, Sequence[int], np.ndarray]  # (parameter name, shape, host array)


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


def density_of(params: Iterable[NamedArray], only: Optional[Callable[[Sequence[int]], bool]] = None) -> float:
    """Density over the parameters whose shape passes ``only`` (all by default). ``params`` may be a generator:
    arrays are read one at a time."""
    return density(a for _, shape, a in params if only is None or only(shape))


def density_by_name(params: Iterable[NamedArray]) -> Dict[str, float]:
    """Parameter name -> density."""
    return {name: density([a]) for name, _, a in params}
