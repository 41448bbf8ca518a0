"""Export verification of N:M patterns: a 2:4-pruned model passes --nm 2:4, a magnitude-pruned one fails it."""
import subprocess
import sys

import paddle
import pytest

from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.export import export_layer

SPEC = [paddle.static.InputSpec([None, 16], "float32", "x")]


def net():
    paddle.seed(0)
    return paddle.nn.Sequential(paddle.nn.Linear(16, 32), paddle.nn.ReLU(), paddle.nn.Linear(32, 8))


@pytest.mark.parametrize("pattern, ok", [("2:4", True), (None, False)])
def test_nm_verification(tmp_path, pattern, ok):
    model = net()
    if pattern:
        UnstructuredPruner(model, "threshold", threshold=0.0, sparse_pattern=pattern).step()
    else:
        UnstructuredPruner(model, "ratio", ratio=0.5).step()
    report = export_layer(model, SPEC, str(tmp_path / "out"), name="m", target="lite", nm_pattern="2:4")
    assert report.nm["pattern"] == "2:4" and len(report.nm["checked"]) == 2
    assert report.ok is ok
    assert all(report.nm["checked"].values()) is ok
    if not ok:
        assert any("not 2:4 sparse" in f for f in report.failures)


def test_bad_nm_pattern_is_one_line_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "paddleslim_tools.export", "--inference-model", "x", "--out",
                          str(tmp_path / "o"), "--nm", "4:2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "nm_pattern" in out.stderr
    assert not (tmp_path / "o").exists()
