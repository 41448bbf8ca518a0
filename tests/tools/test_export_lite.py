"""Export: the Paddle Lite target, naming the op when ONNX and Paddle disagree, argument checks, the docs' calls."""
from __future__ import annotations

import doctest
import importlib
import json
import os

import numpy as np
import paddle
import pytest

from nets import NETS, dygraph_model, static_mode, static_net
from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.export import ExportError, export_checkpoint, export_layer, export_program, verify_export
from paddleslim_tools.export.checks import verify_lite
from paddleslim_tools.export.export_report import ExportReport
from paddleslim_tools.loading import SavedModel


def spec(*shape, name="x"):
    return [paddle.static.InputSpec([None, *shape], "float32", name)]


def legacy_model(prefix):
    """(program, feed names, fetch vars, {weight: array}) of a legacy-IR inference model."""
    with paddle.pir_utils.OldIrGuard():
        return SavedModel(prefix, legacy=True)


def test_lite_target_from_a_live_pruned_layer(tmp_path):
    paddle.seed(2)
    model = dygraph_model(NETS["mobilenet"], 2)
    pruner = UnstructuredPruner(model, "ratio", ratio=0.8)
    pruner.step()
    report = export_layer(model, [paddle.static.InputSpec([1, 3, 16, 16], "float32", "x")], tmp_path / "o",
                          target="all")
    assert report.ok, report.failures
    files = sorted(os.listdir(tmp_path / "o"))
    # "all" includes the sparse x86 model, written only when it measured faster than the dense one
    assert ("sparse-cpu" in files) == report.sparse_cpu["written"]
    files = [f for f in files if f != "sparse-cpu"]
    assert files == ["lite", "model.json", "model.onnx", "model.pdiparams", "model.sparse.onnx", "model_report.json"]
    assert sorted(os.listdir(tmp_path / "o" / "lite")) == ["model.pdiparams", "model.pdmodel"]
    # the Lite model is legacy IR (protobuf, loads under OldIrGuard) with exactly the Paddle 3 model's weights
    lite = legacy_model(str(tmp_path / "o" / "lite" / "model"))
    assert "conv2d" in lite.op_names and not any(n.endswith("_mask") for n in lite.var_names)
    pir = {p.name: p.numpy() for p in model.parameters()}
    pruned = [n for n, w in pir.items() if w.ndim == 4 and (w == 0).any()]
    assert len(pruned) >= 5
    for n in pruned:
        np.testing.assert_array_equal(lite.weights[n], pir[n])
    assert len(report.lite_weight_checks) == len(lite.weights) and all(c.ok for c in report.lite_weight_checks)
    assert [c.what for c in report.output_checks].count("lite vs paddle") == 1
    # the opt command: exact flags, absolute paths of the written files
    o = str(tmp_path / "o")
    assert report.lite_command == (
        f"paddle_lite_opt --model_file={o}/lite/model.pdmodel --param_file={o}/lite/model.pdiparams "
        f"--optimize_out={o}/lite/model_sparse --valid_targets=arm --sparse_model=true --sparse_threshold=0.6")
    data = json.loads(open(report.files["report"]).read())
    assert data["lite_command"] == report.lite_command and data["target"] == "all"
    assert report.lite_command in report.format_table()
    # the deployment report rides along: one verdict per conv/matmul of the model
    convs = [r for r in report.rows if len(r.shape) == 4]
    assert data["deployment"]["ops"] and len(data["deployment"]["ops"]) >= len(convs)
    # the pruner is still live and the model still in training mode
    assert model.training and pruner.masks
    # re-verification reads the Lite model too
    again = verify_export(tmp_path / "o")
    assert again.ok and again.lite_weight_checks and again.target == "all"


def test_lite_verification_catches_a_changed_zero(tmp_path):
    model = dygraph_model(NETS["mlp"], 0)
    UnstructuredPruner(model, "ratio", ratio=0.9).step()
    report = export_layer(model, spec(16), tmp_path / "o", target="lite")
    assert report.ok and "onnx" not in report.files
    ref = SavedModel(str(tmp_path / "o" / "model"), legacy=False)
    lite = legacy_model(str(tmp_path / "o" / "lite" / "model"))
    w = lite.weights["linear_0.w_0"]
    w.reshape(-1)[np.flatnonzero(w.reshape(-1) == 0)[0]] = 0.25
    bad = ExportReport(name="model", out_dir=str(tmp_path))
    verify_lite(bad, ref, lite, seed=0, rtol=1e-5)
    assert not bad.ok and any("linear_0.w_0" in f and "zero pattern" in f for f in bad.failures)


def test_lite_target_from_checkpoint_and_programs(tmp_path):
    model = dygraph_model(NETS["lenet"], 1)
    UnstructuredPruner(model, "ratio", ratio=0.7).step()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    rep = export_checkpoint(state, NETS["lenet"].build, spec(1, 28, 28), tmp_path / "ck", target="lite")
    assert rep.ok and os.path.isfile(rep.files["lite_model"]) and rep.lite_command
    # a legacy-IR inference model is already what Lite reads: it is the Lite model itself
    with static_mode(), paddle.pir_utils.OldIrGuard():
        leg = static_net(NETS["mlp"], legacy=True)
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(leg.startup)
            paddle.static.save_inference_model(str(tmp_path / "leg" / "model"), [leg.x_test], [leg.out_test], exe,
                                               program=leg.test)
    rep = export_program(str(tmp_path / "leg" / "model"), tmp_path / "legout", target="lite")
    assert rep.ok and rep.files["lite_model"].endswith("legout/model.pdmodel")
    assert "--model_file=" + str(tmp_path / "legout" / "model.pdmodel") in rep.lite_command
    # a PIR program cannot become legacy IR in Paddle 3.3.1: a clear error, nothing written
    with static_mode():
        net = static_net(NETS["mlp"])
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            paddle.static.Executor(paddle.CPUPlace()).run(net.startup)
        with pytest.raises(ExportError, match="legacy"):
            export_program(net.test, tmp_path / "pir", scope=scope, fetch_vars=[net.out_test], target="lite")
    assert not (tmp_path / "pir").exists()


class AdaptivePoolNet(paddle.nn.Layer):
    """AdaptiveAvgPool2D(4): exact in ONNX only when the input size is a multiple of 4."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(1, 4, 3, padding=1)
        self.pool = paddle.nn.AdaptiveAvgPool2D(4)
        self.fc = paddle.nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(paddle.flatten(self.pool(paddle.nn.functional.relu(self.conv(x))), 1))


def test_output_mismatch_names_the_op(tmp_path):
    paddle.seed(0)
    net = AdaptivePoolNet()
    report = export_layer(net, spec(1, 14, 14), tmp_path / "bad", compress=False)
    assert not report.ok
    d = report.diagnosis
    assert d and "pd_op.pool2d" in d and "AdaptiveAvgPool2D" in d and "AveragePool" in d, d
    assert "14x14 to 4x4" in d and "not divisible" in d
    assert d in report.failures and json.loads(open(report.files["report"]).read())["diagnosis"] == d
    # the same network on a divisible size is exact: no failure, no diagnosis
    good = export_layer(net, spec(1, 16, 16), tmp_path / "good", compress=False)
    assert good.ok and good.diagnosis is None


def test_bad_out_dir_and_module_as_model(tmp_path):
    net = paddle.nn.Linear(4, 2)
    for bad in (None, 3, b"out"):
        with pytest.raises(TypeError, match="out_dir"):
            export_layer(net, [paddle.static.InputSpec([1, 4], "float32", "x")], bad)
        with pytest.raises(TypeError, match="out_dir"):
            export_program("whatever/model", bad)
    with pytest.raises(ExportError, match="not callable .a module"):
        export_checkpoint({}, "paddle.vision.models:lenet", spec(1, 28, 28), tmp_path / "o")
    with pytest.raises(ExportError, match="target"):
        export_layer(net, [paddle.static.InputSpec([1, 4], "float32", "x")], tmp_path / "o", target="tflite")
    assert not (tmp_path / "o").exists()


def test_readme_static_snippet_export_with_the_snippets_own_out(tmp_path):
    """README: ``export_program(test, "out/", scope=scope, feed_names=["x"], fetch_vars=[out])`` where ``out``
    is a value of ``main`` (``test`` was cloned from it before minimize)."""
    with static_mode():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            x = paddle.static.data("x", [None, 1, 28, 28], "float32")
            y = paddle.static.data("y", [None, 1], "int64")
            out = paddle.vision.models.LeNet()(x)
            loss = paddle.nn.functional.cross_entropy(out, y)
            vm = paddle.pir.IrMapping()
            test = main.clone(vm)
            later = paddle.nn.functional.relu(out)  # built after the clone: not in ``test``
            paddle.optimizer.Momentum(0.01, momentum=0.9).minimize(loss)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            paddle.static.Executor(paddle.CPUPlace()).run(startup)
        a = export_program(test, tmp_path / "a", scope=scope, feed_names=["x"], fetch_vars=[out], compress=False)
        b = export_program(test, tmp_path / "b", scope=scope, feed_names=["x"], fetch_vars=[vm.look_up(out)],
                           compress=False)
        with pytest.raises(ExportError, match=r"fetch_vars\[0\] is not a value of the program"):
            export_program(test, tmp_path / "c", scope=scope, feed_names=["x"], fetch_vars=[later])
    assert a.ok and b.ok, (a.failures, b.failures)
    assert [c.shape for c in a.output_checks] == [(2, 10)]
    assert open(a.files["paddle_model"]).read() == open(b.files["paddle_model"]).read()


@pytest.mark.parametrize("name", ["errors", "export.specs", "export.layout", "export.lite", "loading"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(f"paddleslim_tools.{name}"),
                             optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("packed", [True, False])
def test_static_pruner_masks_are_folded_and_the_scope_is_restored(tmp_path, packed):
    from paddleslim_static import UnstructuredPruner as StaticPruner

    with static_mode():
        net = static_net(NETS["mlp"], optimizer=lambda: paddle.optimizer.SGD(0.1))
        scope, exe = paddle.static.Scope(), paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(scope):
            exe.run(net.startup)
            pruner = StaticPruner(net.main, "ratio", ratio=0.8, scope=scope, startup_program=net.startup,
                                  packed_masks=packed)
            pruner.step()
            masks = pruner.mask_arrays()
        for n in masks:  # pruned weights revived, as an update without the mask ops would leave them
            t = scope.find_var(n).get_tensor()
            t.set(np.array(t) + np.float32(0.5), paddle.CPUPlace())
        before = {n: np.array(scope.find_var(n).get_tensor()) for n in masks}
        report = export_program(net.test, tmp_path / "o", scope=scope, feed_names=["x"], fetch_vars=[net.out_test],
                                compress=False)
    assert report.ok, report.failures
    exported = SavedModel(str(tmp_path / "o" / "model"), legacy=False).weights
    assert len(masks) >= 3
    for n, m in masks.items():
        np.testing.assert_array_equal(exported[n], before[n] * m.astype(np.float32))
        assert np.array(scope.find_var(n).get_tensor()).tobytes() == before[n].tobytes()  # scope untouched
