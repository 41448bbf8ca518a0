"""Compile the sparse CPU operator library against the running Paddle's C++ headers.

Used twice, with the same command: by ``setup.py`` when the package is installed (the library lands in
``paddleslim_tools/runtime/_lib``), and by :mod:`.loader` at first use when there is no installed library or it was
built for another Paddle (the C++ operator API is only stable within one Paddle build). A build writes the library
and a JSON stamp naming the Paddle it was built for; both appear atomically (temporary names, then rename), so an
interrupted build leaves nothing a later process could load.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["LIB_NAME", "SOURCES", "BuildError", "find_compiler", "source_hash", "paddle_stamp", "build_library"]

LIB_NAME = "paddleslim_sparse_ops.so"
_CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("sparse_ops.cc", "spmm_impl.h")


class BuildError(RuntimeError):
    """The operator library could not be built; the message says why in one line."""


def find_compiler() -> Optional[str]:
    """The C++ compiler to use: ``$CXX`` if set (even when it does not exist: then there is none), else ``c++`` /
    ``g++`` on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    return shutil.which("c++") or shutil.which("g++")


def source_hash() -> str:
    """A short hash of the operator's sources: a changed kernel is rebuilt, never mixed with an old build."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode())
        h.update((_CSRC / name).read_bytes())
    return h.hexdigest()[:16]


def paddle_stamp() -> Dict[str, str]:
    """What a built library is only valid for: this Paddle build and these sources."""
    import paddle

    return {"paddle": paddle.__version__, "commit": str(getattr(paddle.version, "commit", "")),
            "sources": source_hash()}


def _command(cxx: str, out: Path) -> List[str]:
    import paddle
    with warnings.catch_warnings():  # Paddle warns about ccache at import; the library prints nothing
        warnings.simplefilter("ignore")
        from paddle.utils.cpp_extension.extension_utils import find_paddle_includes

    base = Path(paddle.__file__).resolve().parent / "base"  # where libpaddle.so lives
    includes = list(find_paddle_includes()) + [sysconfig.get_paths()["include"]]
    return [
        cxx, "-std=c++17", "-O3", "-fPIC", "-shared", "-w", "-pthread",
        "-D_GLIBCXX_USE_CXX11_ABI=1", "-DPADDLE_WITH_CUSTOM_KERNEL",
        *(f"-I{i}" for i in includes),
        str(_CSRC / "sparse_ops.cc"), "-o", str(out),
        f"-L{base}", "-Wl,--no-as-needed", "-l:libpaddle.so", "-Wl,--as-needed",
    ]


def build_library(dest_dir: os.PathLike, timeout: float = 600.0) -> Path:
    """Build ``LIB_NAME`` and its stamp into ``dest_dir``; :class:`BuildError` with the reason when it cannot.

    The compiler's output goes to ``dest_dir/build.log`` (kept on failure, named in the error)."""
    dest = Path(dest_dir)
    cxx = find_compiler()
    if cxx is None:
        hint = f"CXX={os.environ['CXX']!r} was not found" if os.environ.get("CXX") else "no c++/g++ on PATH"
        raise BuildError(f"no C++ compiler ({hint}); install g++ (>= 9) or set CXX, then retry")
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=dest)
    os.close(fd)
    tmp = Path(tmp_name)
    log = dest / "build.log"
    try:
        try:
            proc = subprocess.run(_command(cxx, tmp), capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"the C++ compiler {cxx} could not run: {exc}") from exc
        if proc.returncode != 0:
            log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:200])
            raise BuildError(f"compiling the sparse operator failed ({first.strip()}); full log: {log}")
        stamp_tmp = dest / f".{LIB_NAME}.json.tmp"
        stamp_tmp.write_text(json.dumps(paddle_stamp()), encoding="utf-8")
        os.replace(tmp, dest / LIB_NAME)
        os.replace(stamp_tmp, dest / f"{LIB_NAME}.json")
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest / LIB_NAME
