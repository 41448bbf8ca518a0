"""How many threads the core's streaming passes may use, and the pool that runs them.

The count is ``PADDLESLIM_NUM_THREADS`` if set, else ``OMP_NUM_THREADS``, else 1 (so a default run uses one
thread, like Paddle under ``OMP_NUM_THREADS=1``); :func:`set_num_threads` overrides both. Work is split into
disjoint slices whose partial results are combined in slice order, so every thread count gives the same bits.
Threads only help when the C kernels run (they release the GIL); the numpy fallback stays on one thread.

>>> from paddleslim_static.core import threads
>>> previous = threads.set_num_threads(2)
>>> threads.num_threads()
2
>>> _ = threads.set_num_threads(previous)
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, TypeVar

__all__ = ["num_threads", "set_num_threads", "run_parts", "split"]

T = TypeVar("T")
R = TypeVar("R")

_override: Optional[int] = None
_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_lock = threading.Lock()
_local = threading.local()  # set inside pool workers: nested run_parts calls run inline (no pool deadlock)


def _from_env() -> int:
    for var in ("PADDLESLIM_NUM_THREADS", "OMP_NUM_THREADS"):
        raw = os.environ.get(var, "").strip()
        if raw:
            try:
                n = int(raw.split(",")[0])
            except ValueError:
                continue
            if n >= 1:
                return n
    return 1


def num_threads() -> int:
    """Threads the streaming passes use now."""
    return _override if _override is not None else _from_env()


def set_num_threads(n: Optional[int]) -> Optional[int]:
    """Use ``n`` threads (``None``: back to the environment); returns the previous override."""
    global _override
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads: n must be a positive int or None; got {n!r}")
    previous = _override
    _override = n
    return previous


def split(total: int, parts: int, align: int = 1) -> List[int]:
    """Boundaries 0 = b0 <= b1 <= ... <= b_parts = total, inner ones multiples of ``align``."""
    step = -(-total // max(parts, 1))
    step = -(-step // align) * align
    return [min(i * step, total) for i in range(parts)] + [total]


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="paddleslim-core")
            _pool_size = n
        return _pool


def run_parts(fn: Callable[[T], R], parts: Sequence[T]) -> List[R]:
    """[fn(p) for p in parts], the parts spread over :func:`num_threads` threads; results in input order."""
    n = min(num_threads(), len(parts))
    if n <= 1 or getattr(_local, "worker", False):
        return [fn(p) for p in parts]

    def call(p: T) -> R:
        _local.worker = True
        try:
            return fn(p)
        finally:
            _local.worker = False
    return list(_executor(n).map(call, parts))
