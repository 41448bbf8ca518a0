"""Every Python code block of README.md and docs/*.md runs as written (each in a fresh interpreter).

A block preceded by the line ``<!-- snippet: continues -->`` continues the file's previous block: it runs after it,
in the same interpreter. The blocks of one file share a working directory, in order (a block may read files an
earlier one wrote, as a second process would). A block preceded by ``<!-- snippet: skip (reason) -->`` is not run; the reason must say
why. Keep those rare: a snippet that cannot run is a snippet that rots.
"""
import pathlib
import re
import subprocess
import sys

import pytest
import paths

ROOT = pathlib.Path(paths.ROOT)
# docs/export.md runs in tests/tools/test_export_docs.py, with its command lines and output checks
DOCS = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "export.md")
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)


def _snippets():
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        previous = ""
        for i, m in enumerate(_BLOCK.finditer("\n" + text)):
            skip = re.search(r"<!-- snippet: skip \((.+)\) -->", m.group("before"))
            code = m.group("code")
            if "<!-- snippet: continues -->" in m.group("before"):
                code = previous + "\n" + code
            previous = code
            yield pytest.param(code, id=f"{path.name}-{i}",
                               marks=[pytest.mark.skip(reason=skip.group(1))] if skip else [])


_DIRS: dict = {}


@pytest.mark.parametrize("code", list(_snippets()))
def test_snippet_runs(code, request, tmp_path_factory):
    doc = request.node.callspec.id.rsplit("-", 1)[0]
    cwd = _DIRS.setdefault(doc, tmp_path_factory.mktemp(doc.replace(".", "_")))
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "GLOG_minloglevel": "2"})
    assert out.returncode == 0, f"snippet failed:\n{code}\n--- stderr ---\n{out.stderr[-3000:]}"
