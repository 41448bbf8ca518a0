"""The numerical core and the mode-neutral pruner import and run with Paddle absent."""
import subprocess
import sys
import textwrap


def test_core_imports_and_prunes_without_paddle():
    code = textwrap.dedent("""
        import sys

        class NoPaddle:
            def find_spec(self, name, path=None, target=None):
                if name == "paddle" or name.startswith("paddle."):
                    raise ImportError("paddle is blocked in this test")

        sys.meta_path.insert(0, NoPaddle())
        import numpy as np
        import paddleslim_static.core as core
        from paddleslim_static.core.pruner import ArrayBackend, Pruner

        w = {"w": np.arange(1, 17, dtype=np.float32).reshape(4, 4)}
        pruner = Pruner(ArrayBackend(w), mode="ratio", ratio=0.25)
        pruner.step()
        assert int((w["w"] == 0).sum()) == 4 and pruner.threshold == 5.0
        assert "paddle" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
