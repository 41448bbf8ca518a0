"""The optional C kernels (``_kernels.c``): single-pass versions of the core's streaming loops.

``pip install`` builds them when a C compiler is available (setup.py marks the extension optional). The core
calls them only for arrays :func:`eligible` accepts (native float32 / uint32 keys / bool masks, C-contiguous,
aligned, writable where written); anything else runs the numpy code, which computes the same bits (the tests
run both and compare). ``PADDLESLIM_NO_C_KERNELS=1`` in the environment, or ``use_c(False)``, forces numpy.
The kernels release the GIL: with :func:`paddleslim_static.core.threads.set_num_threads` (or
``PADDLESLIM_NUM_THREADS`` / ``OMP_NUM_THREADS``) > 1 the element-wise passes split across threads.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from . import threads

__all__ = ["available", "enabled", "not_in_use", "use_c", "eligible", "keys_eligible", "stream", "stream_w", "mask_apply",
           "apply", "block_scores", "block_mask_apply"]

try:
    from . import _kernels as _c  # type: ignore[attr-defined]
except ImportError:  # built without a compiler: numpy only
    _c = None

_enabled = _c is not None and os.environ.get("PADDLESLIM_NO_C_KERNELS", "") in ("", "0")
_U32, _F32 = np.dtype(np.uint32), np.dtype(np.float32)
_MIN_PART = 1 << 20  # elements per thread below which splitting costs more than it saves


def available() -> bool:
    """Whether the C extension was built and imports."""
    return _c is not None


def enabled() -> bool:
    """Whether the core uses the C kernels now."""
    return _enabled


def not_in_use() -> Optional[str]:
    """One line saying that the C kernels are not in use and why, for tools and benchmarks to print; None when they
    are in use.

    >>> not_in_use() is None or not_in_use().startswith("C kernels not in use")
    True
    """
    if _enabled:
        return None
    if _c is None:
        return ("C kernels not in use: paddleslim_static/core/_kernels is not built or not importable here (Python "
                "started in a source tree without `pip install .` or `python setup.py build_ext --inplace`?); the "
                "core runs its numpy code, same results, slower")
    return "C kernels not in use: turned off (PADDLESLIM_NO_C_KERNELS or use_c(False)); the core runs its numpy code"


def use_c(flag: bool) -> bool:
    """Turn the C kernels on or off (on only if available); returns the previous setting."""
    global _enabled
    previous = _enabled
    _enabled = bool(flag) and _c is not None
    return previous


def _plain(a: np.ndarray, dtype: np.dtype) -> bool:
    return (isinstance(a, np.ndarray) and a.dtype == dtype and a.dtype.isnative and a.flags.c_contiguous
            and a.flags.aligned)


def eligible(w: np.ndarray, mask: np.ndarray) -> bool:
    """Whether (w, mask) can go to the float32 kernels: enabled, native float32 / bool of the same size,
    C-contiguous, aligned, both writable."""
    return (_enabled and _plain(w, _F32) and isinstance(mask, np.ndarray) and mask.dtype == np.bool_
            and mask.flags.c_contiguous and w.size == mask.size and w.flags.writeable and mask.flags.writeable)


def keys_eligible(keys: np.ndarray) -> bool:
    """Whether a key array can go to :func:`stream`: enabled, native uint32, C-contiguous, aligned."""
    return _enabled and _plain(keys, _U32)


def stream(keys: np.ndarray, lo: int, hi: int, band_out: np.ndarray) -> Tuple[int, int, int]:
    """Over contiguous uint32 keys (sign bit ignored): (#keys <= lo, #keys in (lo, hi] written to the start of
    ``band_out``, max key). ``band_out`` (uint32) must hold at least ``keys.size`` items; 0 <= lo <= hi < 2**31."""
    return _c.stream(keys, lo, hi, band_out)


def stream_w(keys: np.ndarray, ncols: int, w_int: int, w_last: int, lo: int, hi: int, band_out: np.ndarray,
             band_w_out: np.ndarray) -> Tuple[int, int, int]:
    """:func:`stream` over rows of ``ncols`` keys where each key stands for ``w_int`` elements (the last key of a
    row for ``w_last``): the count is weighted, and each band key's weight goes to ``band_w_out`` (int64)."""
    return _c.stream_w(keys, ncols, w_int, w_last, lo, hi, band_out, band_w_out)


def _flat_parts(n: int, align: int = 4096):
    parts = max(1, min(threads.num_threads(), n // _MIN_PART))
    b = threads.split(n, parts, align)
    return [(b[i], b[i + 1]) for i in range(parts) if b[i + 1] > b[i]]


def mask_apply(w: np.ndarray, mask: np.ndarray, t_key: int, apply: bool) -> None:
    """mask = key(w) >= t_key, and w *= mask with ``apply`` (arrays must be :func:`eligible`)."""
    fw, fm = w.reshape(-1), mask.reshape(-1).view(np.uint8)
    t, ap = int(t_key), bool(apply)
    threads.run_parts(lambda p: _c.mask_apply(fw[p[0]:p[1]], fm[p[0]:p[1]], t, ap), _flat_parts(fw.size))


def apply(w: np.ndarray, mask: np.ndarray) -> None:
    """w *= mask in place, bit for bit what ``np.multiply(w, mask, out=w)`` gives (arrays :func:`eligible`)."""
    fw, fm = w.reshape(-1), mask.reshape(-1).view(np.uint8)
    threads.run_parts(lambda p: _c.apply(fw[p[0]:p[1]], fm[p[0]:p[1]]), _flat_parts(fw.size))


def _row_parts(rows: int, m: int, per_row: int):
    parts = max(1, min(threads.num_threads(), (rows * per_row) // _MIN_PART))
    b = threads.split(rows, parts, m)
    return [(b[i], b[i + 1]) for i in range(parts) if b[i + 1] > b[i]]


def block_scores(w2: np.ndarray, m: int, L: int, out: np.ndarray) -> None:
    """out[I, J] = float32 mean |w2| over rows I*m.. and columns J*L.. of the 2-D float32 ``w2`` (the order of
    the float64 sums is the one scores.py's numpy code uses). ``out``: float32 (ceil(rows/m), ceil(D/L))."""
    rows, D = w2.shape

    def part(p):
        r0, r1 = p
        _c.block_scores(w2[r0:r1], r1 - r0, D, m, L, out[r0 // m:(r1 + m - 1) // m].reshape(-1))
    threads.run_parts(part, _row_parts(rows, m, D))


def block_mask_apply(w2: np.ndarray, mask2: np.ndarray, keys: np.ndarray, m: int, L: int, t_key: int,
                     apply: bool) -> None:
    """mask2 = (block key >= t_key) broadcast over each m x L block of the 2-D ``w2``; w2 *= mask2 with ``apply``.
    ``keys``: the uint32 view of the (ceil(rows/m), ceil(D/L)) block scores, 2-D."""
    rows, D = w2.shape
    mv = mask2.view(np.uint8)
    t, ap = int(t_key), bool(apply)

    def part(p):
        r0, r1 = p
        _c.block_mask_apply(w2[r0:r1], mv[r0:r1], keys[r0 // m:(r1 + m - 1) // m].reshape(-1), r1 - r0, D, m, L, t, ap)
    threads.run_parts(part, _row_parts(rows, m, D))
