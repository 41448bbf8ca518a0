"""Find, (if needed) build, and load the one sparse operator library of this process.

Order: the library built when the package was installed (``paddleslim_tools/runtime/_lib``), if its stamp matches
the running Paddle and sources; else a cached build in ``$PADDLESLIM_CACHE`` (default
``~/.cache/paddleslim-sparsity``) under a directory named after the Paddle version and source hash; else a build
into that cache (about 10 s, once). Exactly one library is ever loaded per process: Paddle aborts the process when
two libraries register the same operator. Instruction-set dispatch (portable / AVX2 / AVX-512) happens inside the
library, per CPU.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .build import LIB_NAME, BuildError, build_library, paddle_stamp

__all__ = ["OPS", "KernelsUnavailable", "Library", "load_library", "kernels_status"]

_log = logging.getLogger(__name__)

OPS = ("paddleslim_sparse_linear", "paddleslim_sparse_conv1x1")
_INSTALLED = Path(__file__).resolve().parent / "_lib"


class KernelsUnavailable(RuntimeError):
    """The sparse CPU kernels cannot be used in this process; the message says why and what to do."""


@dataclass(frozen=True)
class Library:
    """The loaded operator library: where it is, which instruction set it dispatched to, how it was obtained."""

    path: Path
    isa: str
    origin: str  # "installed", "cache" or "built"
    _handle: ctypes.CDLL

    def set_num_threads(self, n: int) -> None:
        """Force ``n`` threads for every sparse operator call in this process; ``0`` (the default) follows Paddle's
        setting for the calling thread: a predictor's ``set_cpu_math_library_num_threads``, else
        ``OMP_NUM_THREADS``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0; got {n!r}")
        self._handle.paddleslim_sparse_set_num_threads(n)

    def num_threads(self) -> int:
        """The forced thread count (0: following Paddle's setting)."""
        return int(self._handle.paddleslim_sparse_num_threads())

    def last_call_threads(self) -> int:
        """Threads the last sparse operator call of the process used (small calls use one)."""
        return int(self._handle.paddleslim_sparse_last_threads())


_lock = threading.Lock()
_loaded: Optional[Library] = None
_failure: Optional[str] = None


def cache_dir() -> Path:
    root = os.environ.get("PADDLESLIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                              "paddleslim-sparsity")
    stamp = paddle_stamp()
    return Path(root) / f"ops-paddle{stamp['paddle']}-{stamp['commit'][:10]}-{stamp['sources']}"


def _valid(directory: Path) -> bool:
    lib, stamp = directory / LIB_NAME, directory / f"{LIB_NAME}.json"
    if not (lib.is_file() and stamp.is_file()):
        return False
    try:
        return json.loads(stamp.read_text(encoding="utf-8")) == paddle_stamp()
    except (OSError, ValueError):
        return False


def load_library() -> Library:
    """The sparse operator library, registered with Paddle (eager, ``jit.save``d programs and Paddle Inference).

    Raises :class:`KernelsUnavailable` (every later call too, without retrying) when no library can be had.

    >>> from paddleslim_tools.runtime import load_library
    >>> load_library().isa in ("portable", "avx2", "avx512")
    True
    """
    global _loaded, _failure
    with _lock:
        if _loaded is not None:
            return _loaded
        if _failure is not None:
            raise KernelsUnavailable(_failure)
        try:
            _loaded = _find_or_build()
        except BuildError as exc:
            _failure = f"the sparse CPU kernels are unavailable: {exc}"
            raise KernelsUnavailable(_failure) from None
        return _loaded


def kernels_status() -> str:
    """One line: which library is loaded (loading it if needed), or why none can be."""
    try:
        lib = load_library()
    except KernelsUnavailable as exc:
        return str(exc)
    return f"sparse CPU kernels: {lib.isa} ({lib.origin}: {lib.path})"


def _find_or_build() -> Library:
    import paddle  # noqa: F401  (maps libpaddle.so, which the library links against)
    with warnings.catch_warnings():  # Paddle warns about ccache at import; the library prints nothing
        warnings.simplefilter("ignore")
        from paddle.utils.cpp_extension import load_op_meta_info_and_register_op

    if _valid(_INSTALLED):
        path, origin = _INSTALLED / LIB_NAME, "installed"
    else:
        cached = cache_dir()
        if _valid(cached):
            path, origin = cached / LIB_NAME, "cache"
        else:
            _log.info("building the sparse CPU operator library in %s (once per Paddle version)", cached)
            path, origin = build_library(cached), "built"
    load_op_meta_info_and_register_op(str(path))
    handle = ctypes.CDLL(str(path))
    handle.paddleslim_sparse_isa.restype = ctypes.c_char_p
    handle.paddleslim_sparse_num_threads.restype = ctypes.c_int
    handle.paddleslim_sparse_last_threads.restype = ctypes.c_int
    lib = Library(path=path, isa=handle.paddleslim_sparse_isa().decode(), origin=origin, _handle=handle)
    _log.debug("loaded %s (%s, %s)", path, lib.isa, origin)
    return lib
