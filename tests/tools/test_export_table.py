"""The export table informs: structured names beside Paddle's, the Lite check column filled from the Lite weight
checks, columns that do not apply left out, rows in model order (also for a saved model, which has no structured
names)."""
from __future__ import annotations

import re

import numpy as np
import paddle
import pytest

from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.export import export_layer, export_program, verify_export
from paddleslim_tools.report import sparsity_report

SPEC = [paddle.static.InputSpec([None, 3, 8, 8], "float32", "x")]


class Net(paddle.nn.Layer):
    """Parameters created in an order unlike the forward order, with enough layers that natural name order
    (batch_norm before conv2d, conv2d_10 after conv2d_9) differs from model order."""

    def __init__(self):
        super().__init__()
        self.head = paddle.nn.Linear(8, 3)
        self.features = paddle.nn.Sequential(*[m for i in range(11) for m in (
            paddle.nn.Conv2D(3 if i == 0 else 8, 8, 1), paddle.nn.BatchNorm2D(8))])

    def forward(self, x):
        return self.head(paddle.mean(self.features(x), axis=[2, 3]))


@pytest.fixture(scope="module")
def net():
    paddle.seed(1)
    with paddle.utils.unique_name.guard():
        n = Net()
    UnstructuredPruner(n, "ratio", ratio=0.9).step()  # sparse enough that the compressed ONNX is smaller
    n.eval()
    return n


def _table(report):
    lines = report.format_table().splitlines()
    head = re.split(r"\s{2,}", lines[0].strip())
    rows = []
    for ln in lines[2:]:
        if ln.startswith("total:"):
            break
        rows.append(re.split(r"\s{2,}", ln.strip()))
    return head, rows


def _forward_order(net):
    """Brute force: the layers (structured prefixes) in the order the forward pass runs them."""
    order = []
    names = {id(m): k for k, m in net.named_sublayers()}
    hooks = [layer.register_forward_pre_hook(lambda layer, inp: order.append(names[id(layer)]))
             for layer in net.sublayers() if not layer.sublayers()]
    with paddle.no_grad():
        net(paddle.ones([1, 3, 8, 8]))
    for h in hooks:
        h.remove()
    return [k for k in order if dict(net.named_sublayers())[k].parameters(include_sublayers=False)]


def _layers_of(paddle_names, net):
    """The layer of each weight, in row order, without repeats."""
    layer = {p.name: k.rsplit(".", 1)[0] for k, p in net.named_parameters()}
    out = []
    for n in paddle_names:
        if not out or out[-1] != layer[n]:
            out.append(layer[n])
    return out


def test_lite_target_fills_the_lite_check_and_leaves_out_onnx_columns(tmp_path, net):
    rep = export_layer(net, SPEC, str(tmp_path / "o"), target="lite")
    assert rep.ok, rep.failures
    head, rows = _table(rep)
    assert head == ["weight", "layer", "shape", "density", "zeros", "dense", "lite check"]
    assert len(rows) == len(rep.rows) == len(list(net.parameters()))
    assert all(r[-1] == "ok" for r in rows), rows
    assert "MISSING" not in rep.format_table()
    names = {p.name: k for k, p in net.named_parameters()}
    assert [r[1] for r in rows] == [names[r[0]] for r in rows]
    assert _layers_of([r[0] for r in rows], net) == _forward_order(net)


def test_all_target_has_both_check_columns_and_no_verify_has_none(tmp_path, net):
    rep = export_layer(net, SPEC, str(tmp_path / "o"), target="all")
    assert rep.ok, rep.failures
    head, rows = _table(rep)
    assert head == ["weight", "layer", "shape", "density", "zeros", "dense", "sparse", "onnx", "onnx check",
                    "lite check"]
    assert all(r[-1] == "ok" for r in rows)
    assert {r[1] for r in rows} == {k for k, _ in net.named_parameters()}
    rep = export_layer(net, SPEC, str(tmp_path / "n"), verify=False, compress=False)
    head, _ = _table(rep)
    assert head == ["weight", "layer", "shape", "density", "zeros", "dense"]
    # re-verification finds the structured names in the export's report
    head, rows2 = _table(verify_export(str(tmp_path / "o")))
    assert head[:2] == ["weight", "layer"] and [r[:2] for r in rows2] == [r[:2] for r in rows]


def test_saved_model_rows_in_model_order(tmp_path, net):
    paddle.jit.save(net, str(tmp_path / "infer" / "m"), input_spec=SPEC)
    rep = export_program(str(tmp_path / "infer" / "m"), str(tmp_path / "o"), target="onnx")
    assert rep.ok, rep.failures
    head, rows = _table(rep)
    assert "layer" not in head  # a saved model has no structured names
    expected = _forward_order(net)
    assert _layers_of([r[0] for r in rows], net) == expected
    assert [r.name for r in sparsity_report(str(tmp_path / "infer" / "m")).layers] == [r[0] for r in rows]
    assert expected[:3] == ["features.0", "features.1", "features.2"] and expected[-1] == "head"
    np.testing.assert_equal(len(rows), len(list(net.parameters())))
