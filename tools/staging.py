"""Atomic output: everything is written into a staging directory next to ``out_dir`` and moved into place at the end.

A staging directory is named ``.<out basename>.tmp-<pid>-<random>`` and holds a marker file, so a later export into
the same parent can recognise one left behind by a process that was killed (``kill -9`` runs no cleanup) and remove
it: stale means "ours (marker present) and its pid is no longer running".

A full disk is reported as the OS error ``[Errno 28] No space left on device``, whatever the writer said: Paddle's
``jit.save`` does not check its writes, so a truncated file is only noticed when read back ("Cannot read tensor desc
size"). When the block fails with the file system (nearly) full, or succeeds with it completely full, the staging
directory is removed and ``OSError(ENOSPC)`` raised.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from typing import Iterator, List, Sequence, Set, Tuple, Union

from .errors import ExportError

__all__ = ["staging", "remove_stale_staging", "check_out_dir", "MARKER"]

_log = logging.getLogger(__name__)
MARKER = ".paddleslim-export-staging"
_STAGING_RE = re.compile(r"^\..+\.tmp-(\d+)-[A-Za-z0-9_]+$")


def check_out_dir(out_dir: object) -> str:
    """``out_dir`` as an absolute path; TypeError unless it is a str or os.PathLike."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a str or os.PathLike directory path; got {out_dir!r}")
    path = os.fspath(out_dir)
    if not isinstance(path, str) or not path:
        raise TypeError(f"out_dir must be a non-empty text path; got {out_dir!r}")
    return os.path.abspath(path)


def _umask() -> int:
    """The process umask (``os`` has no getter: set it and put it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by someone else
    return True


def remove_stale_staging(parent: str) -> List[str]:
    """Remove staging directories in ``parent`` left by export processes that died; returns their paths."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for n in names:
        m = _STAGING_RE.match(n)
        path = os.path.join(parent, n)
        if m is None or not os.path.isfile(os.path.join(path, MARKER)):
            continue
        if int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            _log.info("export: removed stale staging directory %s", path)
    return removed


def _files_under(root: str) -> Set[str]:
    """Every file below ``root``, relative and ``/``-separated."""
    out = set()
    for d, _, files in os.walk(root):
        rel = os.path.relpath(d, root)
        out.update(f if rel == "." else "/".join(rel.split(os.sep) + [f]) for f in files)
    return out


def _remove_empty_dirs(root: str) -> None:
    """Remove the empty directories below ``root`` (bottom-up; ``root`` itself stays)."""
    for d, _, _ in sorted(os.walk(root), key=lambda t: -t[0].count(os.sep)):
        if d != root:
            with contextlib.suppress(OSError):  # only when empty
                os.rmdir(d)


@contextlib.contextmanager
def staging(out_dir: Union[str, "os.PathLike[str]"], outputs: Sequence[str]) -> Iterator[Tuple[str, str]]:
    """Yield (staging dir, final out_dir); move the staging dir's files (subdirectories included) into place on
    success.

    ``outputs``: every file (relative, ``/``-separated) an export of this name may write. In an existing out_dir,
    those this export did not write (e.g. ``NAME.sparse.onnx`` after ``compress=False``, ``lite/NAME.pdmodel``
    after a ``target="onnx"`` export) are removed so the set stays consistent, and a subdirectory left empty by
    that too; other files are kept.
    On any exception (KeyboardInterrupt included) the staging directory and any parent directories created for
    it are removed.
    """
    final = check_out_dir(out_dir)
    if os.path.exists(final) and not os.path.isdir(final):
        raise ExportError(f"out_dir {os.fspath(out_dir)!r} exists and is not a directory")
    parent = os.path.dirname(final)
    created = []
    probe = parent
    while probe and not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_staging(parent)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-{os.getpid()}-", dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would become out_dir's mode: the usual mode instead
        open(os.path.join(tmp, MARKER), "w").close()
        yield tmp, final
        if _disk_full(tmp, 0):  # a writer that does not check its writes (paddle.jit.save) may have truncated a file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), final)
        os.remove(os.path.join(tmp, MARKER))
        _remove_empty_dirs(tmp)  # a target that wrote nothing in the end leaves no empty directory behind
        if not os.path.exists(final):
            os.rename(tmp, final)
        else:
            produced = _files_under(tmp)
            for rel in outputs:
                stale = os.path.join(final, *rel.split("/"))
                if rel not in produced and os.path.isfile(stale):
                    os.remove(stale)
                    if os.path.dirname(stale) != final:
                        with contextlib.suppress(OSError):  # only when empty
                            os.rmdir(os.path.dirname(stale))
            for rel in sorted(produced):
                dest = os.path.join(final, *rel.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(os.path.join(tmp, *rel.split("/")), dest)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as exc:
        # a full disk shows up as whatever reading a truncated file says ("Cannot read tensor desc size"): name it
        full = (isinstance(exc, Exception) and getattr(exc, "errno", None) != errno.ENOSPC
                and _disk_full(tmp or parent, _NEARLY_FULL))
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                os.rmdir(d)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), final) from exc
        raise


_NEARLY_FULL = 64 * 1024  # after a failed write: less than this left means the write failed for want of space


def _disk_full(path: str, below: int) -> bool:
    """Whether the file system holding ``path`` has at most ``below`` bytes left for this process (root may use the
    reserved blocks)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize <= below
