"""paddleslim-export command line: the three inputs, exit codes, one-line errors, no partial output, no installs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import paddle
import pytest

from nets import NETS, dygraph_model
from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.export import export_layer, main
from paddleslim_tools.export.p2o_convert import ConversionError


class SvdNet(paddle.nn.Layer):
    """A network paddle2onnx cannot convert (no ONNX mapping for svd)."""

    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(4, 4)

    def forward(self, x):
        return paddle.linalg.svd(self.fc(x).reshape([-1, 2, 2]))[1]


def leftovers(parent):
    return [n for n in os.listdir(parent) if ".tmp-" in n]


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    model = dygraph_model(NETS["lenet"], 0)
    UnstructuredPruner(model, "ratio", ratio=0.9).step()
    path = d / "lenet.pdparams"
    paddle.save(model.state_dict(), str(path))  # carries the pruner's *_mask buffers
    return str(path)


def test_cli_checkpoint_subprocess_without_network(tmp_path):
    """(a) checkpoint + module:callable + kwargs, in a child with pip pointed nowhere and autoinstall asked for."""
    from paddle.vision.models import mobilenet_v1

    paddle.seed(0)
    model = mobilenet_v1(scale=0.25, num_classes=10)
    UnstructuredPruner(model, "ratio", ratio=0.9).step()
    ckpt = tmp_path / "mnv1.pdparams"
    paddle.save(model.state_dict(), str(ckpt))
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_FIND_LINKS="",
               POLYGRAPHY_AUTOINSTALL_DEPS="1", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "paddleslim_tools.export", "--checkpoint", str(ckpt),
         "--model", "paddle.vision.models:mobilenet_v1", "--kwargs", '{"scale": 0.25, "num_classes": 10}',
         "--input", "x:1x3x32x32:float32", "--out", str(out), "--max-rows", "5"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verification: passed" in proc.stdout and "compressed ONNX is" in proc.stdout
    assert "pip install" not in proc.stderr and "Collecting" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # the CLI is quiet on success
    files = sorted(os.listdir(out))
    assert files == ["model.json", "model.onnx", "model.pdiparams", "model.sparse.onnx", "model_report.json"]
    rep = json.loads((out / "model_report.json").read_text())
    assert rep["ok"] and rep["compression_ratio"] < 0.5 and not rep["unmatched"]
    assert not [lay for lay in rep["layers"] if lay["name"].endswith("_mask")]


def test_cli_inference_model_and_quiet(tmp_path, lenet_ckpt, capsys):
    """(a) in-process, then (b) the resulting inference model as input."""
    code = main(["--checkpoint", lenet_ckpt, "--model", "nets:LeNet", "--input", "?x1x28x28",
                 "--out", str(tmp_path / "a"), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "onnx_sparse:" in printed and "model.sparse.onnx" in printed
    code = main(["--inference-model", str(tmp_path / "a" / "model.json"), "--out", str(tmp_path / "b"),
                 "--name", "lenet", "--opset", "11", "--no-compress"])
    assert code == 0
    assert sorted(os.listdir(tmp_path / "b")) == ["lenet.json", "lenet.onnx", "lenet.pdiparams", "lenet_report.json"]
    m = onnx.load(str(tmp_path / "b" / "lenet.onnx"))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 11
    assert "verification: passed" in capsys.readouterr().out


@pytest.mark.parametrize("case", [
    "missing_checkpoint", "missing_prefix", "no_module", "no_attr", "bad_kwargs", "keys_mismatch",
    "shape_mismatch", "spec_does_not_fit", "bad_input_syntax", "unsupported_op",
])
def test_cli_errors_exit_2_one_line_no_partial_output(tmp_path, lenet_ckpt, capsys, case):
    out = tmp_path / "sub" / "out"
    base = ["--out", str(out)]
    lenet = ["--checkpoint", lenet_ckpt, "--model", "nets:LeNet", "--input", "x:1x1x28x28"]
    args = {
        "missing_checkpoint": ["--checkpoint", str(tmp_path / "nope.pdparams"), "--model", "nets:LeNet",
                               "--input", "1x1x28x28"],
        "missing_prefix": ["--inference-model", str(tmp_path / "nope" / "model")],
        "no_module": lenet[:3] + ["no_such_module_xyz:build"] + lenet[4:],
        "no_attr": lenet[:3] + ["paddle.vision.models:no_such_net"] + lenet[4:],
        "bad_kwargs": lenet + ["--kwargs", "{num_classes: 10"],
        "keys_mismatch": lenet[:3] + ["nets:MLP"] + ["--input", "x:1x16"],
        "shape_mismatch": lenet + ["--kwargs", '{"num_classes": 7}'],
        "spec_does_not_fit": lenet[:5] + ["x:1x3x28x28"],
        "bad_input_syntax": lenet[:5] + ["x:1xAx28:float32"],
        "unsupported_op": None,
    }[case]
    if case == "unsupported_op":
        ckpt = tmp_path / "svd.pdparams"
        paddle.save(SvdNet().state_dict(), str(ckpt))
        args = ["--checkpoint", str(ckpt), "--model", "test_export_cli:SvdNet", "--input", "x:2x4"]
    code = main(args + base)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("paddleslim-export: error:") and "\n" not in err, err
    expected = {
        "missing_checkpoint": "not found", "missing_prefix": "neither", "no_module": "cannot import",
        "no_attr": "no attribute", "bad_kwargs": "JSON", "keys_mismatch": "keys do not match",
        "shape_mismatch": "shapes do not match", "spec_does_not_fit": "does not fit",
        "bad_input_syntax": "bad dimension", "unsupported_op": "unsupported operator",
    }[case]
    assert expected in err, err
    assert not out.exists() and not (tmp_path / "sub").exists()  # nothing written, not even the parent
    assert not leftovers(tmp_path)


def test_failure_leaves_existing_out_dir_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="unsupported operator"):
        export_layer(SvdNet(), [paddle.static.InputSpec([2, 4], "float32", "x")], out)
    assert os.listdir(out) == ["keep.txt"] and not leftovers(tmp_path)
    with pytest.raises(TypeError, match="input_spec"):
        export_layer(SvdNet(), [[2, 4]], out)
    with pytest.raises(ValueError, match="opset"):
        export_layer(SvdNet(), [paddle.static.InputSpec([2, 4], "float32", "x")], out, opset=99)
    assert os.listdir(out) == ["keep.txt"]


def test_demo_sized_export(tmp_path):
    """What the demo does at its end: a tiny CNN on 8x8 inputs, table + paths."""
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        net = paddle.nn.Sequential(paddle.nn.Conv2D(1, 8, 3, padding=1), paddle.nn.ReLU(), paddle.nn.Flatten(),
                                   paddle.nn.Linear(8 * 8 * 8, 10))
    UnstructuredPruner(net, "ratio", ratio=0.9).step()
    report = export_layer(net, [paddle.static.InputSpec([None, 1, 8, 8], "float32", "x")], tmp_path / "demo")
    assert report.ok and "verification: passed" in report.format_table()
    rows = {r.name: r for r in report.rows}
    assert rows["linear_0.w_0"].layer == "3.weight"  # structured name from the dygraph model
    assert rows["linear_0.w_0"].stored_sparse and np.isclose(rows["linear_0.w_0"].density, 0.1, atol=0.02)
