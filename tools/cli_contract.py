"""What the command-line tools share to keep the CLI contract: SIGTERM behaves like Ctrl-C (exit 130, staged output
removed), and an output location is probed by writing, not by ``os.access`` (which says yes to root on /proc).

>>> import os, tempfile
>>> probe_writable("--out", "x", tempfile.gettempdir())
>>> with sigterm_as_interrupt():
...     pass
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["sigterm_as_interrupt", "probe_writable", "check_output_dir", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def sigterm_as_interrupt(load_paddle: bool = False) -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs (the old handler is back after).

    Importing Paddle installs glog's C handler for SIGTERM (a fatal abort: exit -15, no cleanup), replacing any
    handler set before: a block that imports Paddle passes ``load_paddle=True`` so that the import comes first.
    """
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if load_paddle:
        import paddle  # noqa: F401
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def probe_writable(flag: str, given: str, directory: Union[str, "os.PathLike[str]"]) -> None:
    """ValueError naming ``flag`` unless a directory can be created (and is removed again) in ``directory``."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".paddleslim-probe-", dir=os.fspath(directory)))
    except OSError as e:
        raise ValueError(f"{flag} {given!r}: cannot write in {os.fspath(directory)!r} ({e.strerror or e})") from None


def check_output_dir(flag: str, given: str) -> None:
    """ValueError naming ``flag`` unless ``given`` is a directory or can be made one, writable: probed by writing
    in it or its nearest existing ancestor (before any work, so a bad location costs nothing)."""
    out = Path(given)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {given!r} exists and is not a directory")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {given!r}: {str(probe)!r} is not a directory")
    probe_writable(flag, given, probe)
