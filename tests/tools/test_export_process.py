"""paddleslim-export as a process: missing extra, argparse errors, kill -9 and Ctrl-C leave nothing behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import paddle
import pytest

from nets import NETS, dygraph_model
from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.export import export_layer
from paddleslim_tools.staging import MARKER
from paths import TESTS

SCRIPT = os.path.join(os.path.dirname(sys.executable), "paddleslim-export")


def env(**extra):
    path = os.pathsep.join([p for p in (extra.pop("PYTHONPATH", None), TESTS) if p])
    return dict(os.environ, PYTHONPATH=path, **extra)


def run(args, timeout=300, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


def staging_dirs(parent):
    return sorted(n for n in os.listdir(parent) if ".tmp-" in n)


@pytest.fixture(scope="module")
def lenet_ckpt(tmp_path_factory):
    model = dygraph_model(NETS["lenet"], 0)
    UnstructuredPruner(model, "ratio", ratio=0.9).step()
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pdparams"
    paddle.save(model.state_dict(), str(path))
    return str(path)


@pytest.fixture
def no_extra(tmp_path):
    """A PYTHONPATH entry whose sitecustomize makes onnx, onnxruntime and paddle2onnx unimportable."""
    d = tmp_path / "block"
    d.mkdir()
    (d / "sitecustomize.py").write_text(
        "import sys\nfor m in ('onnx', 'onnxruntime', 'paddle2onnx'):\n    sys.modules[m] = None\n")
    return str(d)


def test_console_script_without_the_export_extra(tmp_path, lenet_ckpt, no_extra):
    assert os.path.isfile(SCRIPT), "the paddleslim-export console script is not installed"
    proc = run([SCRIPT, "--help"], env=env(PYTHONPATH=no_extra))
    assert proc.returncode == 0 and "--target" in proc.stdout and proc.stderr.count("Traceback") == 0
    out = tmp_path / "out"
    args = ["--checkpoint", lenet_ckpt, "--model", "nets:LeNet", "--input", "x:1x1x28x28", "--out", str(out)]
    proc = run([SCRIPT] + args, env=env(PYTHONPATH=no_extra))
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert 'pip install "paddleslim-sparsity[export]"' in err and "onnx" in err
    assert not out.exists()
    # the Lite target needs no ONNX: it runs without the extra
    proc = run([SCRIPT] + args + ["--target", "lite", "-q"], env=env(PYTHONPATH=no_extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--sparse_model=true --sparse_threshold=0.6" in proc.stdout
    assert sorted(os.listdir(out)) == ["lite", "model.json", "model.pdiparams", "model_report.json"]
    assert sorted(os.listdir(out / "lite")) == ["model.pdiparams", "model.pdmodel"]


@pytest.mark.parametrize("args,needle", [
    (["--opset", "abc"], "invalid int value: 'abc'"),
    (["--target", "tflite"], "invalid choice: 'tflite'"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--checkpoint"], "expected one argument"),
])
def test_argparse_errors_are_one_line_exit_2(tmp_path, args, needle):
    proc = run([sys.executable, "-m", "paddleslim_tools.export"] + args + ["--out", str(tmp_path / "o")], env=env())
    err = proc.stderr.strip()
    assert proc.returncode == 2
    assert err.startswith("paddleslim-export: error:") and "\n" not in err and needle in err, err
    assert not (tmp_path / "o").exists()


def _start_and_wait_for_staging(parent, lenet_ckpt):
    """Start an export into parent/out; return the process once its staging dir holds the saved Paddle model."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "paddleslim_tools.export", "--checkpoint", lenet_ckpt, "--model", "nets:LeNet",
         "--input", "x:1x1x28x28", "--out", str(parent / "out")],
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = staging_dirs(parent)
        if found and os.path.isfile(parent / found[0] / "model.json"):
            return proc, found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the export never staged its Paddle model")


def test_kill_9_leaves_staging_that_the_next_export_removes(tmp_path, lenet_ckpt):
    parent = tmp_path / "exports"
    parent.mkdir()
    proc, stage = _start_and_wait_for_staging(parent, lenet_ckpt)
    os.killpg(proc.pid, signal.SIGKILL)  # the export and its paddle2onnx child: no cleanup runs
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert staging_dirs(parent) == [stage] and not (parent / "out").exists()  # what a crash leaves
    # directories that are not stale: a live process's staging, and a look-alike without the marker
    live = parent / f".other.tmp-{os.getppid()}-abc"
    live.mkdir()
    (live / MARKER).write_text("")
    foreign = parent / f".mine.tmp-{proc.pid}-xyz"
    foreign.mkdir()
    net = paddle.nn.Linear(4, 2)
    report = export_layer(net, [paddle.static.InputSpec([1, 4], "float32", "x")], parent / "next", compress=False)
    assert report.ok
    left = staging_dirs(parent)
    assert stage not in left, left  # the dead process's staging is gone
    assert sorted(left) == sorted([live.name, foreign.name])


def test_ctrl_c_exits_130_one_line_nothing_written(tmp_path, lenet_ckpt):
    parent = tmp_path / "exports"
    parent.mkdir()
    proc, _ = _start_and_wait_for_staging(parent, lenet_ckpt)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    err = err.strip()
    assert err == "paddleslim-export: interrupted; nothing written", err
    assert os.listdir(parent) == []
