"""The CLI contract's remaining promises (issue 16.5): ``paddleslim-export`` treats SIGTERM as Ctrl-C; a
``kill -9``ed ``paddleslim-report`` / ``paddleslim-demo`` leaves only its staging directory, which the next run into
the same parent removes; a full disk (a real tmpfs of a few KiB) is the OS error "No space left on device", never a
Paddle read-back message, with nothing left behind; ``paddleslim-export --check DIR --nm N:M`` checks the pattern."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import paddle
import pytest

from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.export import cli as export_cli
from paddleslim_tools.export import export_layer
from paddleslim_tools.report import cli as report_cli
from paddleslim_tools.staging import MARKER

MODEL = "paddleslim_tools.demo:digits_cnn"


def _staging_dirs(parent):
    return sorted(n for n in os.listdir(parent) if ".tmp-" in n)


def _wait_for_staged(proc, parent, filename, timeout=180):
    """Poll until a staging directory in ``parent`` holds ``filename``; returns its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in _staging_dirs(parent):
            if os.path.isfile(os.path.join(parent, d, filename)):
                return d
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no staging directory with {filename} appeared")


def _cli(module, *argv):
    code = f"import sys; from {module} import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *[str(a) for a in argv]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from paddleslim_tools.demo import digits_cnn

    path = tmp_path_factory.mktemp("ckpt") / "digits.pdparams"
    paddle.save(digits_cnn().state_dict(), str(path))
    return path


# -- SIGTERM: paddleslim-export like Ctrl-C -----------------------------------------------------------------------
def test_export_sigterm_exits_130_and_leaves_nothing(tmp_path, ckpt):
    parent = tmp_path / "exports"
    parent.mkdir()
    proc = subprocess.Popen(_cli("paddleslim_tools.export", "--checkpoint", ckpt, "--model", MODEL, "--input",
                                 "x:?x1x8x8", "--out", parent / "out"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_staged(proc, parent, "model.json")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "paddleslim-export: interrupted; nothing written", err
    assert os.listdir(parent) == []


def test_report_sigterm_exits_130_and_leaves_nothing(tmp_path, ckpt):
    """Paddle's import installs a fatal SIGTERM handler: the CLI's own must come after it."""
    parent = tmp_path / "reports"
    parent.mkdir()
    proc = subprocess.Popen(_cli("paddleslim_tools.report", ckpt, "--out", parent / "rep", "-q"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_staged(proc, parent, "sparsity.txt")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "paddleslim-report: interrupted", err
    assert os.listdir(parent) == []


# -- kill -9: the staging directory is all that is left, and the next run removes it ------------------------------
def test_report_killed_leaves_only_staging_that_the_next_report_removes(tmp_path, ckpt, capsys):
    parent = tmp_path / "reports"
    parent.mkdir()
    proc = subprocess.Popen(_cli("paddleslim_tools.report", ckpt, "--out", parent / "rep", "-q"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    stage = _wait_for_staged(proc, parent, "sparsity.txt")  # the plots come after: still writing
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert os.listdir(parent) == [stage] and os.path.isfile(parent / stage / MARKER)  # no partial --out
    assert report_cli.main([str(ckpt), "--out", str(parent / "rep"), "--no-plots", "-q"]) == 0
    capsys.readouterr()
    assert os.listdir(parent) == ["rep"]  # the dead run's staging directory is gone
    assert sorted(os.listdir(parent / "rep")) == ["sparsity.json", "sparsity.txt"]


def test_demo_killed_leaves_only_staging_that_the_next_demo_removes(tmp_path):
    parent = tmp_path / "demo"
    parent.mkdir()
    argv = ["--epochs", "1", "--no-plots", "--out-dir", parent / "out"]
    proc = subprocess.Popen(_cli("paddleslim_tools.demo", *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=tmp_path)
    stage = _wait_for_staged(proc, parent, "digits_cnn.pdparams")  # the export comes after: still writing
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert os.listdir(parent) == [stage] and os.path.isfile(parent / stage / MARKER)
    done = subprocess.run(_cli("paddleslim_tools.demo", *argv, "--no-export", "-q"), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert os.listdir(parent) == ["out"]
    assert os.path.isfile(parent / "out" / "results.json")


# -- a full disk --------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path):
    """Mount a tmpfs of ``size`` bytes (root with CAP_SYS_ADMIN only); unmounted after the test."""
    mounted = []

    def mount(size):
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], check=True)


def _one_line_enospc(err, prog):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error:") and "No space left on device" in lines[0], lines[0]
    assert "tensor desc" not in lines[0] and "Traceback" not in err


def test_export_onto_a_full_disk_is_the_os_error(tiny_fs, ckpt, capsys):
    for size, extra in (("64k", []), ("64k", ["--no-verify", "--no-compress"]), ("16k", [])):
        fs = tiny_fs(size)  # 64k: paddle.jit.save truncates the parameters silently; 16k: Python writes raise
        rc = export_cli.main(["--checkpoint", str(ckpt), "--model", MODEL, "--input", "x:?x1x8x8", "--out",
                              str(fs / "exp"), "-q", *extra])
        _one_line_enospc(capsys.readouterr().err, "paddleslim-export")
        assert rc == 2 and os.listdir(fs) == []


def test_report_onto_a_full_disk_is_the_os_error(tiny_fs, ckpt, capsys):
    fs = tiny_fs("16k")
    rc = report_cli.main([str(ckpt), "--out", str(fs / "rep"), "-q"])
    _one_line_enospc(capsys.readouterr().err, "paddleslim-report")
    assert rc == 2 and os.listdir(fs) == []


def test_demo_onto_a_full_disk_is_the_os_error(tiny_fs, tmp_path):
    fs = tiny_fs("300k")  # the checkpoint fits, the export does not
    proc = subprocess.run(_cli("paddleslim_tools.demo", "--epochs", "1", "--no-plots", "-q", "--out-dir", fs / "out"),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    _one_line_enospc(proc.stderr, "paddleslim-demo")
    assert proc.returncode == 2 and os.listdir(fs) == []


# -- paddleslim-export --check DIR --nm N:M ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def nm_exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("nm")
    spec = [paddle.static.InputSpec([None, 16], "float32", "x")]
    out = {}
    for kind in ("2:4", "magnitude"):
        paddle.seed(0)
        model = paddle.nn.Sequential(paddle.nn.Linear(16, 32), paddle.nn.ReLU(), paddle.nn.Linear(32, 8))
        if kind == "2:4":
            UnstructuredPruner(model, "threshold", threshold=0.0, sparse_pattern="2:4").step()
        else:
            UnstructuredPruner(model, "ratio", ratio=0.5).step()
        out[kind] = d / kind
        assert export_layer(model, spec, str(out[kind]), name="m", target="lite").ok
    return out


@pytest.mark.parametrize("export, pattern, rc, needle", [
    ("2:4", "2:4", 0, None),
    ("2:4", "1:4", 1, "not 1:4 sparse"),
    ("magnitude", "2:4", 1, "not 2:4 sparse"),
    ("2:4", "4:2", 2, "nm_pattern"),
    ("2:4", "x", 2, "nm_pattern"),
])
def test_check_verifies_the_nm_pattern(nm_exports, capsys, export, pattern, rc, needle):
    before = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(nm_exports[export]) for f in fs}
    got = export_cli.main(["--check", str(nm_exports[export]), "--name", "m", "--nm", pattern, "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert got == rc, err
    if needle is not None:
        assert len(err) == 1 and needle in err[0], err
    after = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(nm_exports[export]) for f in fs}
    assert after == before  # --check writes nothing
