"""Sparsity report: every source kind, checkpoint masks (bool and bit-packed), plots, the paddleslim-report CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import paddleslim_static
from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner
from paddleslim_tools.loading import checkpoint_mask as unpack_mask
from paddleslim_tools.report import cli as report_cli
from paddleslim_tools.report import schedule_points, sparsity_report

try:
    import matplotlib  # noqa: F401
    HAS_MPL = True
except ImportError:
    HAS_MPL = False
needs_mpl = pytest.mark.skipif(not HAS_MPL, reason="matplotlib (the plot extra) not installed")


def _net():
    return paddle.nn.Sequential(paddle.nn.Conv2D(2, 4, 3), paddle.nn.BatchNorm2D(4), paddle.nn.Flatten(),
                                paddle.nn.Linear(4 * 4 * 4, 3))


def _brute(arrays):
    return {k: np.count_nonzero(v) / v.size for k, v in arrays.items()}


def test_dygraph_model_with_pruner():
    paddle.seed(1)
    net = _net()
    pruner = UnstructuredPruner(net, "ratio", ratio=0.7)
    pruner.step()
    rep = sparsity_report(net, pruner=pruner)
    params = {p.name: p.numpy() for p in net.parameters()}
    assert [r.name for r in rep.layers] == list(params)
    assert {r.name: r.density for r in rep.layers} == pytest.approx(_brute(params))
    assert {r.name for r in rep.layers if r.prunable} == set(pruner.masks) and len(pruner.masks) == 2
    assert all(r.threshold == pytest.approx(pruner.threshold) for r in rep.layers if r.prunable)
    assert all(r.threshold is None for r in rep.layers if not r.prunable)
    assert rep.prunable_density == (264 - 185) / 264  # round(0.7 * 264) of the 72 + 192 prunable weights
    assert rep.layers[0].layer == "0.weight"
    # without the pruner, its mask buffers still mark the prunable weights
    assert [r.prunable for r in sparsity_report(net).layers] == [r.prunable for r in rep.layers]
    text = rep.format_table()
    assert f"prunable weights density {(264 - 185) / 264:.4f}" in text and "yes" in text and "no" in text


def test_checkpoint_masks_bool_and_bitpacked_give_the_same_report(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 7)).astype(np.float32)  # 35 elements: not a multiple of 8
    mask = rng.random((5, 7)) < 0.3
    state = {"fc.weight": w, "fc.bias": np.ones(7, np.float32), "fc.weight_mask": mask,
             "step": np.array(3, np.int64)}
    packed = dict(state, **{"fc.weight_mask": np.packbits(mask.ravel())})
    assert packed["fc.weight_mask"].shape == (5,)
    reports = []
    for i, s in enumerate((state, packed)):
        paddle.save({k: paddle.to_tensor(v) for k, v in s.items()}, str(tmp_path / f"c{i}.pdparams"))
        reports.append(sparsity_report(str(tmp_path / f"c{i}.pdparams")))
    for rep in reports:
        assert rep.kind == "checkpoint"
        assert [r.name for r in rep.layers] == ["fc.weight", "fc.bias"]  # masks and counters are not weights
        assert rep.layers[0].nonzeros == int(mask.sum()) and rep.layers[0].prunable
        assert rep.layers[1].prunable is False
        np.testing.assert_array_equal(rep.weights["fc.weight"], w * mask)
    assert reports[0].to_dict()["layers"] == reports[1].to_dict()["layers"]


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 63, 64, 65, 1000])
def test_unpack_mask_roundtrip(n):
    rng = np.random.default_rng(n)
    m = rng.random(n) < 0.5
    shape = (n,) if n % 5 else (n // 5, 5)
    np.testing.assert_array_equal(unpack_mask(np.packbits(m), shape), m.reshape(shape))
    np.testing.assert_array_equal(unpack_mask(m.reshape(shape), shape), m.reshape(shape))
    np.testing.assert_array_equal(unpack_mask(m.reshape(shape).astype(np.float32), shape), m.reshape(shape))


def test_bad_mask_and_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="fc.weight_mask"):
        sparsity_report({"fc.weight": np.ones((4, 4), np.float32), "fc.weight_mask": np.ones(3, np.uint8)})
    with pytest.raises(TypeError, match="program"):
        sparsity_report(42)
    with pytest.raises(ValueError, match="history"):
        sparsity_report(_net(), history={"measured": [1, 2]})
    with pytest.raises(TypeError, match="pruner"):
        sparsity_report(_net(), pruner=object())
    with pytest.raises(FileNotFoundError, match="nope"):
        sparsity_report("/nonexistent/nope.pdparams")


def _static_net(legacy):
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 2, 6, 6], "float32")
        y = _net()(x)
        loss = paddle.mean(y)
        paddle.optimizer.SGD(0.1).minimize(loss)
    return main, startup, x, y


@pytest.mark.parametrize("legacy", [False, True])
def test_static_program_and_saved_inference_model(tmp_path, legacy):
    paddle.enable_static()
    try:
        with (paddle.pir_utils.OldIrGuard() if legacy else paddle.pir_utils.IrGuard()):
            main, startup, x, y = _static_net(legacy)
            scope = paddle.static.Scope()
            exe = paddle.static.Executor(paddle.CPUPlace())
            with paddle.static.scope_guard(scope):
                exe.run(startup)
                pruner = paddleslim_static.UnstructuredPruner(main, "ratio", ratio=0.6, scope=scope,
                                                             startup_program=startup)
                pruner.step()
                rep = sparsity_report(main, scope=scope, pruner=pruner)
                bare = sparsity_report(main, scope=scope)
                paddle.static.save_inference_model(str(tmp_path / "m"), [x], [y], exe, program=main)
            arrays = {p.name: np.array(scope.find_var(p.name).get_tensor())
                      for p in main.global_block().all_parameters()}
    finally:
        paddle.disable_static()
    assert {r.name: r.density for r in rep.layers} == pytest.approx(_brute(arrays))
    assert {r.name for r in rep.layers if r.prunable} == set(pruner.masks)
    assert [r.prunable for r in bare.layers] == [r.prunable for r in rep.layers]  # from the <param>_mask vars
    assert rep.density == pytest.approx(paddleslim_static.density(main, scope))
    assert os.path.isfile(tmp_path / ("m.pdmodel" if legacy else "m.json"))
    saved = sparsity_report(str(tmp_path / "m"))
    assert saved.kind == ("legacy inference model" if legacy else "inference model")
    want = {k: v for k, v in _brute(arrays).items()}
    got = {r.name: r.density for r in saved.layers}
    assert got == pytest.approx({k: want[k] for k in got}) and len(got) >= 4


@needs_mpl
def test_write_files_and_plots(tmp_path):
    paddle.seed(0)
    net = _net()
    configs = {"stable_iterations": 0, "pruning_iterations": 44, "tunning_iterations": 10, "resume_iteration": 0,
               "pruning_steps": 4, "initial_ratio": 0.2}
    pruner = GMPUnstructuredPruner(net, ratio=0.8, configs=configs)
    measured = []
    for i in range(54):
        pruner.step()
        measured.append([i, 1 - sparsity_report(net, pruner=pruner).prunable_density])
    hist = {"schedule": schedule_points(pruner.schedule, 54), "measured": measured}
    assert hist["schedule"][0] == [0, pytest.approx(0.2)] and hist["schedule"][-1] == [53, pytest.approx(0.8)]
    assert measured[-1][1] == pytest.approx(0.8, abs=0.01)
    rep = sparsity_report(net, pruner=pruner, history=hist)
    files = rep.write(tmp_path / "r", "s")
    assert set(files) == {"table", "json", "density_png", "histogram_png", "schedule_png"}
    for key in ("density_png", "histogram_png", "schedule_png"):
        with open(files[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(files["json"]) as f:
        data = json.load(f)
    assert data["prunable_density"] == pytest.approx(rep.prunable_density) and data["history"]["measured"]
    with open(files["table"]) as f:
        assert f.read().strip() == rep.format_table()
    assert "schedule_png" not in sparsity_report(net).write(tmp_path / "r2")


def _cli(argv, capsys):
    rc = report_cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _demo_checkpoint(tmp_path):
    from paddleslim_tools.demo import digits_cnn
    paddle.seed(0)
    net = digits_cnn()
    pruner = UnstructuredPruner(net, "ratio", ratio=0.8)
    pruner.step()
    path = str(tmp_path / "ck.pdparams")
    state = net.state_dict()
    for key, p in net.named_parameters():  # a checkpoint with bit-packed <key>_mask entries
        if p.name in pruner.masks:
            state[key + "_mask"] = paddle.to_tensor(np.packbits(pruner.masks[p.name].numpy().ravel()))
    paddle.save(state, path)
    return path


def test_cli_checkpoint_table_and_deployment(tmp_path, capsys):
    ck = _demo_checkpoint(tmp_path)
    rc, out, err = _cli([ck], capsys)
    assert rc == 0 and "0.weight" in out and "prunable weights density 0.2000" in out, err
    rc, out, err = _cli([ck, "--model", "paddleslim_tools.demo:digits_cnn", "--input-shape", "1x1x8x8",
                         "--out", str(tmp_path / "o"), "--no-plots"], capsys)
    assert rc == 0, err
    assert "Nothing in this model would run on sparse kernels" in out
    data = json.loads((tmp_path / "o" / "sparsity.json").read_text())
    assert data["deployment"]["flops_total"] > 0 and len(data["deployment"]["ops"]) == 4
    assert sorted(os.listdir(tmp_path / "o")) == ["sparsity.json", "sparsity.txt", "sparsity_deployment.txt"]


@pytest.mark.parametrize("argv, needle", [
    (["{d}/missing.pdparams"], "not found"),
    (["{ck}", "--input-shape", "1x1x8x8"], "needs --model"),
    (["{ck}", "--model", "paddleslim_tools.demo:digits_cnn", "--input-shape", "1xax8"], "--input-shape"),
    (["{ck}", "--model", "paddleslim_tools.demo:nope", "--input-shape", "1x1x8x8"], "nope"),
    (["{ck}", "--model", "paddleslim_tools.demo:mnist_cnn", "--input-shape", "1x1x28x28"], "right network"),
    (["{ck}", "--model", "paddleslim_tools.demo:build_model", "--kwargs", '{{"image_shape": [12, 12]}}',
      "--input-shape", "1x1x12x12"], "has shape [512, 64], network [1152, 64]"),
    (["{ck}", "--out", "{ck}"], "not a directory"),
    (["{ck}", "--kwargs", "{{bad"], "--kwargs"),
    (["{ck}", "--bogus"], "unrecognized arguments"),
    (["{ck}", "--max-rows", "x"], "invalid int"),
    (["{d}/prefix_without_model"], "neither"),
])
def test_cli_errors_are_one_line_exit_2_nothing_written(tmp_path, capsys, argv, needle):
    ck = _demo_checkpoint(tmp_path)
    before = sorted(os.listdir(tmp_path))
    rc, out, err = _cli([a.format(ck=ck, d=tmp_path) for a in argv], capsys)
    assert rc == 2 and needle in err and err.count("\n") == 1 and err.startswith("paddleslim-report: error:"), err
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_without_matplotlib_names_the_extra(tmp_path):
    ck = _demo_checkpoint(tmp_path)
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from paddleslim_tools.report import main\n"
            f"sys.exit(main([{ck!r}, '--out', {str(tmp_path / 'o')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    err = [ln for ln in p.stderr.splitlines() if "paddleslim-report" in ln]
    assert p.returncode == 2 and len(err) == 1 and "[plot]" in err[0] and "--no-plots" in err[0], p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["paddleslim_tools.report.sparsity", "paddleslim_tools.report.deployment",
                                  "paddleslim_tools.demo.models", "paddleslim_tools.demo", "paddleslim_tools.loading"])
def test_docstring_examples(name):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
