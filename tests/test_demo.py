"""The paddleslim-demo command: trains, prunes to 90% with GMP, reports, exports; digits and MNIST IDX input."""
import gzip
import re
import struct

import numpy as np
import pytest

from paddleslim_tools import demo



def _has_export():
    try:
        from paddleslim_tools.export import export_layer  # noqa: F401
    except ImportError:
        return False
    return True


HAS_EXPORT = _has_export()


def _parse(text):
    m = re.search(r"prunable weights: (\d+) parameters, density ([0-9.]+), sparsity ([0-9.]+)", text)
    assert m, text
    acc = re.search(r"sparse test accuracy: ([0-9.]+)", text)
    dense = re.search(r"dense test accuracy:\s+([0-9.]+)", text)
    assert acc and dense, text
    return int(m.group(1)), float(m.group(2)), float(m.group(3)), float(dense.group(1)), float(acc.group(1))


def test_digits_run_prunes_to_90_percent_and_keeps_accuracy(capsys):
    rc = demo.main(["--epochs", "3", "--no-export", "--seed", "1"])
    text = capsys.readouterr().out
    assert rc == 0
    n_params, dens, spars, dense_acc, sparse_acc = _parse(text)
    assert n_params == 4  # 2 conv + 2 linear weights; biases and BatchNorm skipped
    assert dens == pytest.approx(0.10, abs=0.005)
    assert spars == pytest.approx(0.90, abs=0.005)
    assert dense_acc > 0.85
    assert sparse_acc > 0.90
    # per-epoch progress shows the schedule reaching the target ratio
    ratios = [float(r) for r in re.findall(r"ratio ([0-9.]+)", text)]
    assert ratios[0] < 0.9 and ratios[-1] == pytest.approx(0.9)
    # the per-layer table marks the skipped parameters dense
    assert re.search(r"batch_norm2d_\d+\.w_0\s+16\s+1\.0000\s+no", text)
    assert re.search(r"linear_\d+\.w_0\s+512x64\s+0\.\d+\s+yes", text)


def test_same_seed_same_result(capsys):
    args = ["--epochs", "1", "--no-export", "-q", "--seed", "7"]
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


def _toy_mnist(n, rng):
    """12x12 images: class c lights a 3x3 patch at a class-specific spot, plus noise."""
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 40, (n, 12, 12)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 4)
        x[i, 1 + 3 * r:4 + 3 * r, 1 + 3 * col % 12:4 + 3 * col % 12] = 255
    return x, y


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
    rng = np.random.default_rng(0)
    xtr, ytr = _toy_mnist(192, rng)
    xte, yte = _toy_mnist(64, rng)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", ytr)
    _write_idx(tmp_path / "t10k-images.idx3-ubyte", xte)  # the dotted spelling some mirrors use
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", yte, compress=True)
    data = demo.load_mnist(tmp_path)
    assert data.x_train.shape == (192, 1, 12, 12) and data.x_train.dtype == np.float32
    assert data.x_train.max() == pytest.approx(1.0) and data.y_test.dtype == np.int64
    rc = demo.main(["--mnist-dir", str(tmp_path), "--epochs", "3", "--no-export", "--batch-size", "16"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "dataset: mnist  train 192  test 64  image 12x12" in text
    _, dens, _, _, sparse_acc = _parse(text)
    assert dens == pytest.approx(0.10, abs=0.005)
    assert sparse_acc > 0.5  # trivially separable toy data


def test_missing_mnist_files_is_an_error(tmp_path, capsys):
    assert demo.main(["--mnist-dir", str(tmp_path), "--no-export", "-q"]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


def test_bad_flags_exit_with_usage_error():
    with pytest.raises(SystemExit) as e:
        demo.main(["--epochs", "0"])
    assert e.value.code == 2


@pytest.mark.skipif(not HAS_EXPORT, reason="paddleslim_tools.export.export_layer not available yet")
def test_export_writes_files(tmp_path, capsys):
    rc = demo.main(["--epochs", "1", "-q", "--out-dir", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert rc == 0, text
    m = re.search(r"exported (\d+) files to (\S+): (.*)", text)
    assert m, text
    out_dir = tmp_path / "out"
    assert m.group(2) == str(out_dir.resolve())
    names = m.group(3).split(", ")
    assert len(names) == int(m.group(1)) and "digits_cnn.onnx" in names
    for name in names:
        assert (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0
