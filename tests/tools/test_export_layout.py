"""Every model an export writes loads with the loader its users reach for, whatever else is in the directory:
``paddle.jit.load`` and ``paddle.inference`` (the Paddle model), onnxruntime (both ONNX files), the legacy-IR
loader Paddle Lite's ``opt`` reads (``lite/NAME``) - for every target, over earlier exports, next to a
``sparse-cpu/`` model."""
from __future__ import annotations

import os
import shutil

import numpy as np
import paddle
import pytest

from paddleslim_dygraph import UnstructuredPruner
from paddleslim_static.programs import static_mode
from paddleslim_tools.export import export_layer, export_program, verify_export
from paddleslim_tools.export.layout import misread_by_jit_load, relpaths

X = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype("float32")


def _net():
    paddle.seed(3)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(1, 4, 3), paddle.nn.ReLU(), paddle.nn.Conv2D(4, 6, 1),
                               paddle.nn.Flatten(), paddle.nn.Linear(6 * 6 * 6, 3))
    UnstructuredPruner(net, "ratio", ratio=0.7).step()
    net.eval()
    return net


SPEC = [paddle.static.InputSpec([None, 1, 8, 8], "float32", "x")]


@pytest.fixture(scope="module")
def net():
    return _net()


@pytest.fixture(scope="module")
def ref(net):
    with paddle.no_grad():
        return net(paddle.to_tensor(X)).numpy()


def _files(d):
    out = []
    for root, _, files in os.walk(d):
        rel = os.path.relpath(root, d)
        out += [f if rel == "." else f"{rel}/{f}" for f in files]
    return sorted(out)


def jit_load_output(prefix):
    layer = paddle.jit.load(prefix)
    layer.eval()
    return layer(paddle.to_tensor(X)).numpy()


def inference_output(model_file, params_file):
    cfg = paddle.inference.Config(model_file, params_file)
    cfg.disable_gpu()
    cfg.disable_glog_info()
    pred = paddle.inference.create_predictor(cfg)
    h = pred.get_input_handle(pred.get_input_names()[0])
    h.reshape(X.shape)
    h.copy_from_cpu(X)
    pred.run()
    return pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()


def onnx_output(path):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: X})[0]


def legacy_output(prefix):
    """The legacy-IR program Lite's opt reads, loaded and run by Paddle's legacy executor."""
    scope = paddle.static.Scope()
    with static_mode(pir=False), paddle.static.scope_guard(scope):
        exe = paddle.static.Executor(paddle.CPUPlace())
        prog, feeds, fetch = paddle.static.load_inference_model(prefix, exe)
        return exe.run(prog, feed={feeds[0]: X}, fetch_list=fetch)[0]


def check_loads(out, name, target, ref):
    """Each model of the export directory ``out`` through its loaders."""
    top = os.listdir(out)
    assert misread_by_jit_load(top, name) == []
    np.testing.assert_allclose(jit_load_output(os.path.join(out, name)), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inference_output(os.path.join(out, name + ".json"),
                                                os.path.join(out, name + ".pdiparams")), ref, rtol=1e-5, atol=1e-6)
    if target in ("onnx", "all"):
        for f in (name + ".onnx", name + ".sparse.onnx"):
            np.testing.assert_allclose(onnx_output(os.path.join(out, f)), ref, rtol=1e-5, atol=1e-6)
    if target in ("lite", "all"):
        lite = os.path.join(out, "lite", name)
        np.testing.assert_allclose(legacy_output(lite), ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(inference_output(lite + ".pdmodel", lite + ".pdiparams"), ref, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("target", ["onnx", "lite", "all"])
def test_every_target_loads_with_its_loaders(tmp_path, net, ref, target):
    out = tmp_path / "o"
    rep = export_layer(net, SPEC, str(out), target=target, name="net")
    assert rep.ok, rep.failures
    expected = {"onnx": ["net.json", "net.onnx", "net.pdiparams", "net.sparse.onnx", "net_report.json"],
                "lite": ["lite/net.pdiparams", "lite/net.pdmodel", "net.json", "net.pdiparams", "net_report.json"]}
    expected["all"] = sorted(set(expected["onnx"]) | set(expected["lite"]))
    assert not [d for d, sub, f in os.walk(out) if not sub and not f]  # no empty directory left behind
    files = _files(out)  # target "all" also writes sparse-cpu/ when that measured faster here
    assert [f for f in files if not f.startswith("sparse-cpu/")] == expected[target]
    assert sorted(os.path.relpath(p, out) for p in rep.files.values()) == files
    check_loads(str(out), "net", target, ref)
    if "sparse-cpu/net.json" in files:
        np.testing.assert_allclose(jit_load_output(str(out / "sparse-cpu" / "net")), ref, rtol=1e-4, atol=1e-5)
    if target != "onnx":
        assert f"--model_file={out}/lite/net.pdmodel" in rep.lite_command
        assert f"--optimize_out={out}/lite/net_sparse " in rep.lite_command


def test_reexport_over_an_old_layout_and_a_sparse_cpu_model(tmp_path, net, ref):
    """Files earlier versions wrote next to the model (which jit.load misread) are removed; a re-export with
    another target removes the files it no longer writes; a sparse-cpu/ model beside the dense one changes
    nothing for the loaders."""
    out = tmp_path / "o"
    export_layer(net, SPEC, str(out), target="lite", verify=False)
    for f in ("model.report.json", "model.lite.pdmodel", "model.lite.pdiparams"):  # the old layout
        shutil.copy(out / "model.json", out / f)
    with pytest.raises(Exception):
        paddle.jit.load(str(out / "model"))  # what every export directory did before
    rep = export_layer(net, SPEC, str(out), target="onnx")
    assert rep.ok, rep.failures
    assert _files(out) == ["model.json", "model.onnx", "model.pdiparams", "model.sparse.onnx", "model_report.json"]
    (out / "sparse-cpu").mkdir()
    for f in ("model.json", "model.pdiparams"):
        shutil.copy(out / f, out / "sparse-cpu" / f)
    check_loads(str(out), "model", "onnx", ref)
    np.testing.assert_allclose(jit_load_output(str(out / "sparse-cpu" / "model")), ref, rtol=1e-5, atol=1e-6)
    assert verify_export(str(out)).ok


def test_export_program_directory_loads(tmp_path, net, ref):
    paddle.jit.save(net, str(tmp_path / "infer" / "m"), input_spec=SPEC)
    out = tmp_path / "o"
    rep = export_program(str(tmp_path / "infer" / "m"), str(out), name="m")
    assert rep.ok, rep.failures
    assert _files(out) == ["m.json", "m.onnx", "m.pdiparams", "m.sparse.onnx", "m_report.json"]
    check_loads(str(out), "m", "onnx", ref)


def test_layout_rule_matches_what_jit_load_reads(tmp_path, net):
    """misread_by_jit_load agrees with Paddle: every file it flags breaks jit.load, every file it passes doesn't."""
    paddle.jit.save(net, str(tmp_path / "model"), input_spec=SPEC)
    flagged = misread_by_jit_load(relpaths("model", "all") + ["model.report.json", "model.x.pdiparams"], "model")
    assert flagged == ["model.report.json", "model.x.pdiparams"]
    for f in ["model_report.json", "model.onnx", "model.sparse.onnx"] + flagged:
        (tmp_path / f).write_text('{"ok": true}')  # a report, say
        if f in flagged:
            with pytest.raises(Exception):
                paddle.jit.load(str(tmp_path / "model"))
        else:
            paddle.jit.load(str(tmp_path / "model"))
        os.remove(tmp_path / f)
