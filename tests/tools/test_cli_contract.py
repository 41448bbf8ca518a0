"""paddleslim-report and paddleslim-demo keep the CLI contract paddleslim-export keeps: bad input (truncated,
corrupt or empty checkpoints and models, an --input-shape that does not fit, an unwritable output location, an
undecodable file) is one line on stderr naming it and exit 2, with nothing written; Ctrl-C / SIGTERM exit 130 and
leave nothing partial."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import paddle
import pytest

from paddleslim_tools import demo
from paddleslim_tools.report import cli as report_cli

MODEL = "paddleslim_tools.demo:digits_cnn"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    net = demo.digits_cnn()
    good = d / "good.pdparams"
    paddle.save(net.state_dict(), str(good))
    raw = good.read_bytes()
    (d / "truncated.pdparams").write_bytes(raw[: len(raw) // 2])
    (d / "empty.pdparams").write_bytes(b"")
    (d / "garbage.pdparams").write_bytes(bytes(range(256)) * 8)
    paddle.save([1, 2, 3], str(d / "list.pdparams"))
    paddle.save({"step": 3, "name": "x"}, str(d / "notensor.pdparams"))
    net.eval()
    paddle.jit.save(net, str(d / "inf" / "m"), input_spec=[paddle.static.InputSpec([None, 1, 8, 8], "float32", "x")])
    for part in ("json", "pdiparams"):
        damaged = d / f"inf_{part}"
        damaged.mkdir()
        for f in (d / "inf").iterdir():
            data = f.read_bytes()
            (damaged / f.name).write_bytes(data[: len(data) // 2] if f.name.endswith("." + part) else data)
    return d


def _report(capsys, *argv):
    rc = report_cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines(), captured.out


@pytest.mark.parametrize("name, needle", [
    ("empty.pdparams", "empty"), ("truncated.pdparams", "truncated or corrupt"),
    ("garbage.pdparams", "truncated or corrupt"), ("list.pdparams", "not a state dict"),
    ("notensor.pdparams", "no float tensor"),
])
def test_report_refuses_a_bad_checkpoint_in_one_line(files, capsys, tmp_path, name, needle):
    out = tmp_path / "rep"
    for extra in ([], ["--model", MODEL, "--input-shape", "1x1x8x8"]):
        rc, err, _ = _report(capsys, files / name, "--out", out, "--no-plots", *extra)
        assert rc == 2 and len(err) == 1, err
        assert needle in err[0] and name in err[0]
        assert not out.exists()


@pytest.mark.parametrize("part", ["json", "pdiparams"])
def test_report_refuses_a_damaged_inference_model_naming_it(files, capsys, part):
    rc, err, _ = _report(capsys, files / f"inf_{part}" / "m", "--no-plots")
    assert rc == 2 and len(err) == 1, err
    assert f"inf_{part}" in err[0] and "truncated or corrupt" in err[0]


@pytest.mark.parametrize("source, shape, needle", [
    ("good.pdparams", "1x1x8", "does not fit the network"),
    ("good.pdparams", "1x3x8x8", "does not fit the network"),
    ("inf/m", "1x1x8", "does not fit the model's input ?x1x8x8"),
    ("inf/m", "4x1x8x9", "does not fit the model's input ?x1x8x8"),
])
def test_report_names_an_input_shape_that_does_not_fit(files, capsys, tmp_path, source, shape, needle):
    model = ["--model", MODEL] if source.endswith(".pdparams") else []
    rc, err, _ = _report(capsys, files / source, *model, "--input-shape", shape, "--out", tmp_path / "r", "--no-plots")
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"paddleslim-report: error: --input-shape {shape}") and needle in err[0]
    assert not (tmp_path / "r").exists()
    rc, _, _ = _report(capsys, files / source, *model, "--input-shape", "2x1x8x8", "--no-plots")
    assert rc == 0


def test_report_output_problems_are_one_line_and_leave_nothing(files, capsys, tmp_path):
    rc, err, out = _report(capsys, files / "good.pdparams", "--out", "/proc/no/such", "--no-plots")
    assert rc == 2 and len(err) == 1 and "--out" in err[0] and "/proc" in err[0], err
    # a failure while writing (a file name the file system refuses): nothing partial, no staging left behind
    rc, err, _ = _report(capsys, files / "good.pdparams", "--out", tmp_path / "new" / "rep", "--name", "x" * 300,
                         "--no-plots")
    assert rc == 2 and len(err) == 1 and "--out" in err[0], err
    assert os.listdir(tmp_path) == []
    rc, err, _ = _report(capsys, files / "good.pdparams", "--history", files / "good.pdparams")
    assert rc == 2 and len(err) == 1 and err[0].startswith("paddleslim-report: error: --history"), err
    # and a good run into a new directory gets the usual mode, not the staging directory's 0700
    rc, _, out = _report(capsys, files / "good.pdparams", "--out", tmp_path / "ok", "--no-plots", "-q")
    assert rc == 0 and "wrote table: " + str(tmp_path / "ok" / "sparsity.txt") in out
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "ok").stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["ok"]


def _demo_cmd(*argv):
    return [sys.executable, "-c", "import sys; from paddleslim_tools.demo import main; sys.exit(main(sys.argv[1:]))",
            *[str(a) for a in argv]]


def test_demo_refuses_bad_output_and_epochs_before_training(tmp_path):
    for argv, needle in ((["--out-dir", "/proc/no/such"], "--out-dir '/proc/no/such': cannot write"),
                         (["--epochs", "100000000"], "--epochs must be <= 1000")):
        proc = subprocess.run(_demo_cmd(*argv, "--no-export", "--no-plots"), capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and needle in err[0], proc.stderr
        assert proc.stdout == ""  # refused before training
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_demo_interrupted_exits_130_and_leaves_nothing(tmp_path, sig):
    out_dir = tmp_path / "out"
    proc = subprocess.Popen(_demo_cmd("--epochs", "40", "--no-export", "--no-plots", "--out-dir", out_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    line = proc.stdout.readline()  # the dataset line: training is under way
    assert line.startswith("dataset:"), line
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "paddleslim-demo: interrupted"
    assert os.listdir(tmp_path) == []  # no out dir, no staging directory
