"""Global selection over weights split across processes, through a small collectives interface.

The selection is count-based (sample -> bracket -> counts -> band), so it distributes with two collectives:
the sample and the band are gathered, the counts summed. Every rank takes the same branches and selects from
the same gathered band, so every rank gets, bit for bit, the threshold one process would pick over all ranks'
weights. The core stays Paddle-free: the caller hands in any object with the two methods of
:class:`Collectives` (``paddleslim_static.collectives.PaddleCollectives`` for ``paddle.distributed``).

>>> import numpy as np
>>> from paddleslim_static.core import engine
>>> class OneRank:  # a world of one: the identity
...     def allreduce_sum(self, x): return x
...     def allgather(self, x): return [x]
>>> w = {'a': np.array([[1., -2.], [3., 0.]], np.float32)}
>>> float(engine.ratio_thresholds(w, 0.5, False, (1, 1), collectives=OneRank())[0])
2.0
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .selection import NonFiniteScoreError, Solo, _check_finite

try:  # Python >= 3.8
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

__all__ = ["Collectives", "Group"]


class Collectives(Protocol):
    """What the selection needs from a process group. Every rank calls the methods in the same order."""

    def allreduce_sum(self, x: np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks of a 1-D int64 array (same length on every rank)."""

    def allgather(self, x: np.ndarray) -> List[np.ndarray]:
        """The 1-D arrays of all ranks, in rank order (lengths may differ between ranks; dtype kept)."""


class Group(Solo):
    """The selection's reductions across ranks (see :class:`.selection.Solo` for one process)."""

    def __init__(self, collectives: Collectives) -> None:
        for method in ("allreduce_sum", "allgather"):
            if not callable(getattr(collectives, method, None)):
                raise TypeError(f"collectives must have a callable {method}(); got {collectives!r}")
        self.c = collectives

    def sum(self, values: Sequence[int]) -> List[int]:
        out = np.asarray(self.c.allreduce_sum(np.asarray([int(v) for v in values], np.int64)))
        if out.shape != (len(values),):
            raise ValueError(f"collectives.allreduce_sum returned shape {out.shape}; expected ({len(values)},)")
        return [int(v) for v in out]

    def gather(self, a: np.ndarray) -> np.ndarray:
        parts = self.c.allgather(np.ascontiguousarray(a, np.int64))  # int64 travels everywhere; cast back
        return np.concatenate([np.asarray(p, np.int64).reshape(-1) for p in parts] + [np.empty(0, np.int64)]
                              ).astype(a.dtype)

    def agree(self, value: Optional[float]) -> Optional[float]:
        """Rank 0's hint for everyone (a hint changes the number of passes, so all ranks must use the same)."""
        own = np.array([math.nan if value is None else float(value)], np.float64)
        first = float(np.asarray(self.c.allgather(own)[0], np.float64).reshape(-1)[0])
        return None if math.isnan(first) else first

    def check(self, bad: Optional[Tuple[int, str]]) -> None:
        """Raise on every rank if any rank saw a non-finite score (the one that did names the parameter)."""
        if self.sum([0 if bad is None else 1])[0]:
            if bad is not None:
                _check_finite(*bad)
            raise NonFiniteScoreError("weights on another rank contain NaN or Inf; ratio mode cannot place a "
                                      "threshold among non-finite values")
