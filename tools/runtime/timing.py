"""Timing for the conversion decisions and the benchmark: the median of repeated calls (no Paddle import).

>>> median_seconds(lambda: sum(range(100)), min_seconds=0.001) > 0
True
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

__all__ = ["median_seconds"]


def median_seconds(fn: Callable[[], Any], min_seconds: float = 0.03, max_calls: int = 500) -> float:
    """Median wall time of ``fn()`` over enough calls to fill about ``min_seconds`` (at least 3, at most
    ``max_calls``), after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    fn()
    n = int(min(max_calls, max(3, min_seconds / max(time.perf_counter() - t0, 1e-7))))
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)
