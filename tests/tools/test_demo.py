"""The paddleslim-demo command: trains, prunes to 90% with GMP, reports, saves, exports; digits and MNIST IDX input."""
import gzip
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from paddleslim_tools import demo


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _has_export():
    try:
        from paddleslim_tools.export import export_checkpoint, export_layer  # noqa: F401
    except ImportError:
        return False
    return True


HAS_EXPORT = _has_export()
HAS_MPL = _has("matplotlib")


def _parse(text):
    m = re.search(r"prunable weights: (\d+) parameters, density ([0-9.]+), sparsity ([0-9.]+)", text)
    assert m, text
    acc = re.search(r"sparse test accuracy: ([0-9.]+)", text)
    dense = re.search(r"dense test accuracy:\s+([0-9.]+)", text)
    assert acc and dense, text
    return int(m.group(1)), float(m.group(2)), float(m.group(3)), float(dense.group(1)), float(acc.group(1))


def test_digits_run_prunes_to_90_percent_and_writes_its_files(tmp_path, capsys):
    out_dir = tmp_path / "out"
    rc = demo.main(["--epochs", "3", "--no-export", "--no-plots", "--seed", "1", "--out-dir", str(out_dir)])
    text = capsys.readouterr().out
    assert rc == 0
    n_params, dens, spars, dense_acc, sparse_acc = _parse(text)
    assert n_params == 4  # 2 conv + 2 linear weights; biases and BatchNorm skipped
    assert dens == pytest.approx(0.10, abs=0.005) and spars == pytest.approx(0.90, abs=0.005)
    assert dense_acc > 0.85 and sparse_acc > 0.90
    # per-epoch progress shows the schedule reaching the target ratio
    ratios = [float(r) for r in re.findall(r"ratio ([0-9.]+)", text)]
    assert ratios[0] < 0.9 and ratios[-1] == pytest.approx(0.9)
    # the per-layer table marks the skipped parameters dense, the pruned ones with the threshold
    assert re.search(r"batch_norm2d_\d+\.w_0\s+1\.weight\s+16\s+1\.0000\s+-\s+no", text)
    assert re.search(r"linear_\d+\.w_0\s+7\.weight\s+512x64\s+0\.\d+\s+0\.\d+\s+yes", text)
    assert sorted(os.listdir(out_dir)) == ["digits_cnn.pdparams", "results.json", "sparsity.json", "sparsity.txt"]
    res = json.loads((out_dir / "results.json").read_text())
    assert res["sparse_accuracy"] == pytest.approx(sparse_acc, abs=1e-4) and res["export_ok"] is None
    assert res["dataset"] == "digits" and "paddleslim_tools.demo:digits_cnn" in res["export_command"]
    rep = json.loads((out_dir / "sparsity.json").read_text())
    assert rep["prunable_density"] == pytest.approx(dens, abs=1e-4)
    assert rep["accuracy"]["dense"] == pytest.approx(dense_acc, abs=1e-4)
    assert rep["history"]["schedule"][-1][1] == pytest.approx(0.9) and len(rep["history"]["measured"]) >= 6
    assert rep["deployment"]["summary"].startswith("Nothing in this model")
    assert "not a speed-up" in rep["deployment"]["scope"]["flop_share"]
    assert re.search(r"deployment: Nothing in this model.*About ARM CPUs.*not a speed-up", text)
    for path in re.findall(r"wrote \w+: (\S+)", text):
        assert os.path.isfile(path)
    # the checkpoint is plain (finalized: no mask entries) and has the pruned zeros
    import paddle
    state = paddle.load(str(out_dir / "digits_cnn.pdparams"), return_numpy=True)
    assert not [k for k in state if k.endswith("_mask")]
    assert np.count_nonzero(state["7.weight"]) / state["7.weight"].size < 0.2


def test_same_seed_same_result(tmp_path, capsys):
    args = ["--epochs", "1", "--no-export", "--no-plots", "-q", "--seed", "7", "--out-dir", str(tmp_path)]
    assert demo.main(args) == 0
    first = capsys.readouterr().out
    assert demo.main(args) == 0
    second = capsys.readouterr().out
    strip = lambda s: re.sub(r"done in .*", "", s)  # noqa: E731
    assert strip(first) == strip(second)
    assert "dense  epoch" not in first  # -q hides progress


def _write_idx(path, arr, compress=False):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def _toy_mnist(n, rng, size=12):
    """size x size images: class c lights a 3x3 patch at a class-specific spot, plus noise."""
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
    step = size // 4
    for i, c in enumerate(y):
        r, col = divmod(int(c), 4)
        x[i, 1 + step * r:4 + step * r, 1 + step * col:4 + step * col] = 255
    return x, y


def _mnist_dir(path, size, n_train, n_test):
    rng = np.random.default_rng(0)
    xtr, ytr = _toy_mnist(n_train, rng, size)
    xte, yte = _toy_mnist(n_test, rng, size)
    path.mkdir()
    _write_idx(path / "train-images-idx3-ubyte.gz", xtr, compress=True)
    _write_idx(path / "train-labels-idx1-ubyte", ytr)
    _write_idx(path / "t10k-images.idx3-ubyte", xte)  # the dotted spelling some mirrors use
    _write_idx(path / "t10k-labels-idx1-ubyte.gz", yte, compress=True)
    return path


def test_read_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", a, compress=True)
    np.testing.assert_array_equal(demo.read_idx(tmp_path / "a-idx3-ubyte.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        demo.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="need 10 data bytes"):
        demo.read_idx(tmp_path / "short")


def test_mnist_idx_dir(tmp_path, capsys):
    d = _mnist_dir(tmp_path / "mnist", 12, 192, 64)
    data = demo.load_mnist(d)
    assert data.x_train.shape == (192, 1, 12, 12) and data.x_train.dtype == np.float32
    assert data.x_train.max() == pytest.approx(1.0) and data.y_test.dtype == np.int64
    rc = demo.main(["--mnist-dir", str(d), "--epochs", "3", "--no-export", "--no-plots", "--batch-size", "16",
                    "--out-dir", str(tmp_path / "o")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "dataset: mnist  train 192  test 64  image 12x12" in text
    _, dens, _, _, sparse_acc = _parse(text)
    assert dens == pytest.approx(0.10, abs=0.005)
    assert sparse_acc > 0.5  # trivially separable toy data
    assert "build_model --kwargs '{\"image_shape\": [12, 12]}'" in text  # the re-export command fits 12x12


@pytest.mark.skipif(not HAS_EXPORT, reason="paddleslim_tools.export not available")
def test_mnist_28x28_exports_faithfully_and_checkpoint_reexports(tmp_path, capsys):
    """The MNIST network (28x28 -> 14x14 -> 7x7 maps) passes the export check end to end, and the
    checkpoint the demo writes is accepted by export_checkpoint with the named builder."""
    import paddle

    from paddleslim_tools.export import export_checkpoint

    d = _mnist_dir(tmp_path / "mnist", 28, 64, 32)
    out_dir = tmp_path / "o"
    argv = ["--mnist-dir", str(d), "--epochs", "1", "-q", "--batch-size", "16", "--out-dir", str(out_dir)]
    if not HAS_MPL:
        argv.append("--no-plots")
    rc = demo.main(argv)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "verification: passed" in text and "image:?x1x28x28" in text
    assert "paddleslim_tools.demo:mnist_cnn" in text
    m = re.search(r"exported (\d+) files to (\S+): (.*)", text)
    assert m and m.group(2) == str((out_dir / "export").resolve())
    for name in m.group(3).split(", "):
        assert (out_dir / "export" / name).stat().st_size > 0
    assert json.loads((out_dir / "results.json").read_text())["export_ok"] is True
    rep = export_checkpoint(str(out_dir / "mnist_cnn.pdparams"), "paddleslim_tools.demo:mnist_cnn",
                            [paddle.static.InputSpec([None, 1, 28, 28], "float32", "image")], str(tmp_path / "re"))
    assert rep.ok
    # the printed re-export command, run as printed, reproduces the demo's export: same files, same dynamic-batch
    # input, same weights
    cmd = re.search(r"re-export the checkpoint: (.*)", text).group(1)
    assert cmd == json.loads((out_dir / "results.json").read_text())["export_command"]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, again = out_dir / "export", out_dir / "export2"
    # the sparse x86 model is written only when measured faster, so it may be in one and not the other
    assert sorted(set(os.listdir(again)) - {"sparse-cpu"}) == sorted(set(os.listdir(first)) - {"sparse-cpu"})
    for d in (first, again):
        verdict = json.loads((d / "mnist_cnn_report.json").read_text())["sparse_cpu"]["verdict"]
        assert verdict.startswith("sparse-cpu model") == (d / "sparse-cpu" / "mnist_cnn.json").is_file()
    for d in (first, again):
        layer = paddle.jit.load(str(d / "mnist_cnn"))
        assert layer(paddle.zeros([3, 1, 28, 28])).shape == [3, 10]  # batch 3: the batch is dynamic
    a, b = (json.loads((d / "mnist_cnn_report.json").read_text())["layers"] for d in (first, again))
    assert [(r["name"], r["nonzeros"]) for r in a] == [(r["name"], r["nonzeros"]) for r in b]


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib (the plot extra) not installed")
def test_plots_written(tmp_path, capsys):
    assert demo.main(["--epochs", "1", "-q", "--no-export", "--out-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    for name in ("sparsity_density.png", "sparsity_schedule.png", "sparsity_histogram.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def _fails_fast(argv, capsys, needle, tmp_path):
    before = sorted(os.listdir(tmp_path))
    rc = demo.main(argv)
    cap = capsys.readouterr()
    assert rc == 2, cap
    assert cap.err.count("\n") == 1 and cap.err.startswith("paddleslim-demo: error:") and needle in cap.err, cap.err
    assert cap.out == ""  # nothing trained, nothing printed
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("argv, needle", [
    (["--out-dir", "{f}"], "exists and is not a directory"),
    (["--out-dir", "{f}/sub"], "is not a directory"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--seed", "-1"], "--seed"),
    (["--epochs", "abc"], "invalid int value: 'abc'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--mnist-dir", "{d}/nope"], "is not a directory"),
    (["--mnist-dir", "{d}"], "train-images-idx3-ubyte"),
])
def test_every_argument_checked_before_training(tmp_path, capsys, argv, needle):
    f = tmp_path / "a_file"
    f.write_text("x")
    argv = [a.format(f=f, d=tmp_path) for a in argv]
    if "--out-dir" not in argv:
        argv += ["--out-dir", str(tmp_path / "o")]
    _fails_fast(argv + ["--no-export", "--no-plots"], capsys, needle, tmp_path)


def test_export_dir_clash_checked_before_training(tmp_path, capsys):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "export").write_text("x")
    _fails_fast(["--out-dir", str(out_dir), "--no-plots"], capsys, "export' exists and is not a directory",
                out_dir)


def test_missing_matplotlib_is_one_line_before_training(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from paddleslim_tools.demo import main\n"
            f"sys.exit(main(['--no-export', '--out-dir', {str(tmp_path / 'o')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    err = [ln for ln in p.stderr.splitlines() if "paddleslim-demo" in ln]
    assert p.returncode == 2 and len(err) == 1 and "[plot]" in err[0] and "--no-plots" in err[0], p.stderr
    assert "epoch" not in p.stdout and not (tmp_path / "o").exists()


def test_every_missing_extra_named_in_one_line_before_training(tmp_path):
    """Plots and export both needed, matplotlib and onnx missing: one line names both, with both ways out."""
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['onnx'] = None\n"
            "from paddleslim_tools.demo import main\n"
            f"sys.exit(main(['--out-dir', {str(tmp_path / 'o')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    err = [ln for ln in p.stderr.splitlines() if "paddleslim-demo" in ln]
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert "plot extra: matplotlib" in err[0] and "export extra: onnx" in err[0], err
    assert '"paddleslim-sparsity[plot,export]"' in err[0] and "--no-plots --no-export" in err[0], err
    assert "epoch" not in p.stdout and not (tmp_path / "o").exists()
