"""Data-parallel dygraph training (2 processes, gloo on CPU): every rank holds the same masks and weights."""
import os
import subprocess
import sys

import numpy as np
from paths import TESTS


def test_data_parallel_ranks_agree(tmp_path):
    script = os.path.join(TESTS, "dist_train.py")
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "log"), script, str(tmp_path / "state")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in (tmp_path / "log").glob("*"))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    r0 = np.load(tmp_path / "state.rank0.npz")
    r1 = np.load(tmp_path / "state.rank1.npz")
    assert float(r0["__threshold__"]) == float(r1["__threshold__"])
    mask_keys = [k for k in r0.files if k.endswith("_mask")]
    assert len(mask_keys) == 5
    for k in r0.files:  # weights and masks bitwise identical across ranks
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
    weights = [r0[k[: -len("_mask")]] for k in mask_keys]
    n = sum(w.size for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) >= round(0.7 * n)
