"""``--model mymodule:MyNet`` imports ``mymodule.py`` from the current directory, as ``python -m`` does, in both
commands (the installed console scripts, whose sys.path starts with their bin directory), and a module that is
nowhere says where it was looked for."""
from __future__ import annotations

import os
import subprocess
import sys

import paddle
import pytest

from paddleslim_tools.export import ExportError
from paddleslim_tools.loading import resolve_callable

BIN = os.path.dirname(sys.executable)
MODULE = '''
import paddle


class MyNet(paddle.nn.Layer):
    def __init__(self, width=4):
        super().__init__()
        self.features = paddle.nn.Sequential(paddle.nn.Conv2D(1, width, 3), paddle.nn.ReLU())
        self.head = paddle.nn.Linear(width * 6 * 6, 3)

    def forward(self, x):
        return self.head(paddle.flatten(self.features(x), 1))
'''


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "mymodule_h17.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("mymodule_h17", None)


def test_resolve_callable_imports_from_the_current_directory(workdir):
    path_before = list(sys.path)
    cls = resolve_callable("mymodule_h17:MyNet")
    assert cls.__name__ == "MyNet" and isinstance(cls(), paddle.nn.Layer)
    assert sys.path == path_before  # searched, not left behind


def test_a_module_that_is_nowhere_says_where_it_looked(workdir):
    with pytest.raises(ExportError, match=r"no nomod_h17\.py or nomod_h17/ package in the current directory "
                                          rf"\({str(workdir)}\) nor on sys.path"):
        resolve_callable("nomod_h17:Net")


def _run(cmd, cwd):
    env = dict(os.environ, GLOG_minloglevel="3")
    env.pop("PYTHONPATH", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_both_commands_build_mymodule_from_the_current_directory(workdir):
    sys.path.insert(0, str(workdir))
    try:
        from mymodule_h17 import MyNet  # noqa: E402
    finally:
        sys.path.remove(str(workdir))
    paddle.save(MyNet().state_dict(), str(workdir / "ck.pdparams"))
    proc = _run([os.path.join(BIN, "paddleslim-report"), "ck.pdparams", "--model", "mymodule_h17:MyNet",
                 "--input-shape", "1x1x8x8"], workdir)
    assert proc.returncode == 0, proc.stderr
    assert "features.0.weight" in proc.stdout
    proc = _run([os.path.join(BIN, "paddleslim-export"), "--checkpoint", "ck.pdparams", "--model",
                 "mymodule_h17:MyNet", "--input", "x:?x1x8x8", "--out", "exp", "--target", "lite", "-q"], workdir)
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "exp" / "model.json").is_file()
