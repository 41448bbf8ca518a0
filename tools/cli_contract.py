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
from typing import Any, Iterator, List, Union

__all__ = ["sigterm_as_interrupt", "interrupted", "probe_writable", "check_output_dir", "EXIT_BAD_INPUT",
           "EXIT_INTERRUPTED"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def sigterm_as_interrupt(load_paddle: bool = False) -> Iterator[None]:
    """SIGTERM (and SIGINT) raise KeyboardInterrupt in the main thread while the block runs (the old handlers are back
    after), and :func:`interrupted` says one arrived: an extension that catches the KeyboardInterrupt and raises its
    own error instead (seen: "initialization failed") is still an interruption for the CLI.

    Importing Paddle installs glog's C handler for SIGTERM (a fatal abort: exit -15, no cleanup), replacing any
    handler set before: a block that imports Paddle passes ``load_paddle=True`` so that the import comes first.
    """
    def handler(signum: int, frame: Any) -> None:
        _received.append(signum)
        raise KeyboardInterrupt

    if load_paddle:
        import paddle  # noqa: F401
    del _received[:]
    try:
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


_received: List[int] = []


def interrupted() -> bool:
    """Whether SIGTERM or SIGINT arrived in the last :func:`sigterm_as_interrupt` block."""
    return bool(_received)


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
