"""What the tools print and write, beyond their results (issue 17.7/17.8): output directories follow the umask, no
Paddle ccache notice on the demo's or the report's stderr, ``--help`` shows 90% (not 90%%), and a run without the C
kernels says so in one line."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from paddleslim_tools.staging import staging
from paths import TESTS


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_staged_output_directory_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with staging(tmp_path / "new" / "out", []) as (tmp, _):
            open(os.path.join(tmp, "f.txt"), "w").close()
    finally:
        os.umask(old)
    for d in (tmp_path / "new", tmp_path / "new" / "out"):  # the parent made for it too
        assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask, (d, oct(d.stat().st_mode))
    assert os.listdir(tmp_path / "new") == ["out"]


def _run(code, env=None):
    # from tests/, not the repository root: `python -c` puts its directory first on sys.path, and the root's
    # paddleslim_static is the source tree (no built C kernels in a fresh clone), not the installed package
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})), cwd=TESTS)


def test_demo_prints_no_ccache_notice_and_says_when_the_c_kernels_are_off(tmp_path):
    out = tmp_path / "demo"
    code = ("import sys; from paddleslim_tools.demo import main; "
            f"sys.exit(main(['--epochs', '1', '--no-export', '--no-plots', '--out-dir', {str(out)!r}]))")
    p = _run(code, {"PADDLESLIM_NO_C_KERNELS": "1"})
    assert p.returncode == 0, p.stderr
    assert "No ccache" not in p.stderr and "No ccache" not in p.stdout
    notes = [ln for ln in p.stdout.splitlines() if "C kernels" in ln]
    assert len(notes) == 1 and notes[0].startswith("C kernels not in use: turned off"), notes
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()
    p = _run(code.replace("'--epochs', '1', ", "'--epochs', '1', '-q', "))
    assert p.returncode == 0 and not [ln for ln in p.stdout.splitlines() if "C kernels" in ln], p.stdout


def test_report_prints_no_ccache_notice(tmp_path):
    import paddle

    from paddleslim_tools.demo import digits_cnn

    ck = tmp_path / "ck.pdparams"
    paddle.save(digits_cnn().state_dict(), str(ck))
    p = _run("import sys; from paddleslim_tools.report import main; "
             f"sys.exit(main([{str(ck)!r}, '--model', 'paddleslim_tools.demo:digits_cnn', '--input-shape', '1x1x8x8', "
             f"'--no-plots', '--out', {str(tmp_path / 'rep')!r}]))")
    assert p.returncode == 0 and "No ccache" not in p.stderr, p.stderr
    assert stat.S_IMODE((tmp_path / "rep").stat().st_mode) == 0o777 & ~_umask()


def test_help_shows_percent_signs_once(capsys):
    from paddleslim_tools.demo import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "90%" in text and "%%" not in text


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
