"""The command lines of README's export, deploying and report sections and of docs/report.md run as written, after
``paddleslim-demo`` (README's first command) - they need no file that no doc creates - and what they write loads."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import paddle
import pytest
import paths

ROOT = pathlib.Path(paths.ROOT)
ENV = dict(os.environ, GLOG_minloglevel="3",
           PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def _section(text, heading):
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else None]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """A directory where the demo ran, as after README's first command (fewer epochs: the files are the same)."""
    d = tmp_path_factory.mktemp("walk")
    proc = subprocess.run(["paddleslim-demo", "--epochs", "1", "-q"], cwd=d, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d


def _run(block, cwd):
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{block}\n--- stderr ---\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_readme_export_and_deploying_commands_run_as_written(walk):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for h in ("## Export: `paddleslim-export`", "## Deploying a sparse model")
              for b in _bash_blocks(_section(readme, h))]
    assert len(blocks) == 2
    out = "".join(_run(b, walk) for b in blocks)
    assert "verification: passed" in out and "paddle_lite_opt --model_file=" in out and "About ARM CPUs" in out
    for prefix in ("exported/digits", "exported_static/model"):
        layer = paddle.jit.load(str(walk / prefix))
        assert layer(paddle.zeros([3, 1, 8, 8])).shape == [3, 10]  # dynamic batch, as the demo exported it
    assert (walk / "deploy" / "lite" / "model.pdmodel").is_file()


def test_report_doc_commands_run_as_written(walk):
    blocks = _bash_blocks((ROOT / "docs" / "report.md").read_text(encoding="utf-8"))
    assert len(blocks) == 1
    out = _run(blocks[0], walk)
    assert "op      weight" in out and "About ARM CPUs" in out
    assert (walk / "rep3" / "sparsity_schedule.png").is_file()  # --history out/sparsity.json gives the schedule
