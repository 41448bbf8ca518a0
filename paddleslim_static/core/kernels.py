"""The optional C kernels (``_kernels.c``): single-pass versions of the core's two streaming loops.

``pip install`` builds them when a C compiler is available (setup.py marks the extension optional). The core
calls them only through :func:`enabled`; otherwise it runs its numpy code, which computes the same bits (the
tests run both and compare). ``PADDLESLIM_NO_C_KERNELS=1`` in the environment, or ``use_c(False)``, forces numpy.
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

__all__ = ["available", "enabled", "use_c", "stream", "mask_apply", "apply"]

try:
    from . import _kernels as _c  # type: ignore[attr-defined]
except ImportError:  # built without a compiler: numpy only
    _c = None

_enabled = _c is not None and os.environ.get("PADDLESLIM_NO_C_KERNELS", "") in ("", "0")


def available() -> bool:
    """Whether the C extension was built and imports."""
    return _c is not None


def enabled() -> bool:
    """Whether the core uses the C kernels now."""
    return _enabled


def use_c(flag: bool) -> bool:
    """Turn the C kernels on or off (on only if available); returns the previous setting."""
    global _enabled
    previous = _enabled
    _enabled = bool(flag) and _c is not None
    return previous


def eligible(w: np.ndarray, mask: np.ndarray) -> bool:
    """Whether (w, mask) can go to the float32 kernels: enabled, float32/bool, C-contiguous, writable."""
    return (_enabled and w.dtype == np.float32 and mask.dtype == np.bool_ and w.flags.c_contiguous
            and mask.flags.c_contiguous and w.flags.writeable)


def stream(keys: np.ndarray, lo: int, hi: int, band_out: np.ndarray) -> Tuple[int, int, int]:
    """Over contiguous uint32 keys (sign bit ignored): (#keys <= lo, #keys in (lo, hi] written to the start of
    ``band_out``, max key). ``band_out`` (uint32) must hold at least ``keys.size`` items."""
    return _c.stream(keys, lo, hi, band_out)


def mask_apply(w: np.ndarray, mask: np.ndarray, t_key: int, apply: bool) -> None:
    """mask = key(w) >= t_key, and w *= mask with ``apply`` (arrays must be :func:`eligible`)."""
    _c.mask_apply(w.reshape(-1), mask.reshape(-1).view(np.uint8), int(t_key), bool(apply))


def apply(w: np.ndarray, mask: np.ndarray) -> None:
    """w *= mask in place, bit for bit what ``np.multiply(w, mask, out=w)`` gives (arrays :func:`eligible`)."""
    _c.apply(w.reshape(-1), mask.reshape(-1).view(np.uint8))
