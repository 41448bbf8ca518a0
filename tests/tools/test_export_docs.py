"""docs/export.md: its Python example and its command lines run as written (in a fresh directory, in order)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from paths import ROOT

DOC = os.path.join(ROOT, "docs", "export.md")


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", open(DOC, encoding="utf-8").read(), flags=re.S)


def test_docs_export_code_blocks_run_as_written(tmp_path):
    py, sh = blocks("python"), blocks("bash")
    assert len(py) == 1 and len(sh) == 1
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([sys.executable, "-c", py[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "paddle_lite_opt --model_file=" in proc.stdout and "verification: passed" in proc.stdout
    proc = subprocess.run(["bash", "-e", "-c", sh[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "exported_static")) == [
        "lenet.json", "lenet.onnx", "lenet.pdiparams", "lenet.sparse.onnx", "lenet_report.json"]
    assert os.path.isfile(tmp_path / "exported_lite" / "lite" / "model.pdmodel")
    assert "--sparse_model=true --sparse_threshold=0.6" in proc.stdout
