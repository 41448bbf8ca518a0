"""The deployment verdict says what it is about wherever it is shown - the table, the report JSON, the export's
table and JSON, paddleslim-report, the demo: ARM runtimes, a FLOP share is not a speed-up, small cores may be
slower, what runs dense."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import paddle

from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.report import SCOPE, SCOPE_NOTE, deployment_report
from paddleslim_tools.export import export_layer


def _net():
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.ReLU(), paddle.nn.Conv2D(8, 16, 1))
    UnstructuredPruner(net, "ratio", ratio=0.9).step()
    return net


def test_the_scope_is_stated():
    for needle in ("ARM", "not a speed-up", "slower", "onnxruntime", "dense Paddle model"):
        assert needle in SCOPE_NOTE
    assert "ARM" in SCOPE["runtimes"] and "not a speed-up" in SCOPE["flop_share"]
    assert "Cortex-A53" in SCOPE["small_cores"] and "onnxruntime" in SCOPE["dense"]


def test_table_and_json_carry_it(tmp_path):
    rep = deployment_report(_net(), [1, 3, 8, 8])
    assert rep.format_table().splitlines()[-1] == SCOPE_NOTE
    assert json.loads(json.dumps(rep.to_dict()))["scope"] == SCOPE
    out = export_layer(_net(), [paddle.static.InputSpec([None, 3, 8, 8], "float32", "x")], str(tmp_path / "o"),
                       target="lite")
    assert out.deployment["scope"] == SCOPE
    assert json.loads(open(out.files["report"]).read())["deployment"]["scope"] == SCOPE
    line = next(ln for ln in out.format_table().splitlines() if ln.startswith("deployment:"))
    assert line.endswith(SCOPE_NOTE)


def test_report_command_prints_it(tmp_path):
    net = _net()
    paddle.jit.save(net, str(tmp_path / "m"), input_spec=[paddle.static.InputSpec([1, 3, 8, 8], "float32", "x")])
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "paddleslim-report"), str(tmp_path / "m"),
                           "--input-shape", "1x3x8x8"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, GLOG_minloglevel="3"))
    assert proc.returncode == 0, proc.stderr
    assert SCOPE_NOTE in proc.stdout
