"""The export's one error type and the one-line rendering of any exception (Paddle's are pages of C++ context)."""
from __future__ import annotations

import re

__all__ = ["ExportError", "one_line"]


class ExportError(ValueError):
    """The export cannot proceed (bad argument, missing file, mismatching checkpoint...); one-line message."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A short single-line summary of an exception.

    >>> one_line(ValueError("first line\\n  (InvalidArgument) the real reason (at /paddle/x.cc:1)\\n"))
    '(InvalidArgument) the real reason'
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not set(ln) <= set("-=*") and not ln.startswith(("C++ Traceback", "[Hint"))]
    pick = next((ln for ln in lines if re.match(r"^\(\w+\)", ln) or "Error" in ln or "must" in ln), None)
    text = pick or (lines[0] if lines else type(exc).__name__)
    text = re.sub(r"\s*\(at /[^)]*\)\s*$", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
