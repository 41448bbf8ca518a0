"""Global selection across ranks: every rank gets, bit for bit, the threshold one process picks over all weights.

Fast checks simulate the ranks with threads and a barrier-based collectives object; the last test runs two real
processes under ``paddle.distributed.launch`` (gloo on CPU) with ``paddleslim_static.collectives``.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import reference as ref
from paddleslim_static.core import NonFiniteScoreError, ScoreSource, engine, ratio_threshold, score_source
from paddleslim_static.core.distributed import Group
from paths import TESTS


class ThreadWorld:
    """n ranks as threads; collectives through shared slots and a barrier."""

    def __init__(self, n):
        self.n, self.barrier, self.slots, self.calls = n, threading.Barrier(n, timeout=60), [None] * n, [0] * n

    def rank(self, r):
        world = self

        class Member:
            def allgather(self, x):
                world.calls[r] += 1
                world.barrier.wait()
                world.slots[r] = np.array(x, copy=True)
                world.barrier.wait()
                out = list(world.slots)
                world.barrier.wait()
                return out

            def allreduce_sum(self, x):
                return np.sum(self.allgather(x), axis=0)
        return Member()

    def run(self, fn):
        """fn(rank, collectives) on every rank; returns the results (or raised exceptions) in rank order."""
        out = [None] * self.n

        def one(r):
            try:
                out[r] = fn(r, self.rank(r))
            except Exception as e:  # noqa: BLE001 - compared by the test
                out[r] = e
        ts = [threading.Thread(target=one, args=(r,)) for r in range(self.n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        return out


@st.composite
def sharded(draw):
    arrays = []
    for _ in range(draw(st.integers(1, 5))):
        shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
        rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
        w = rng.standard_normal(shape).astype(np.float32)
        style = draw(st.sampled_from(["normal", "ties", "zeros"]))
        if style == "ties":
            w = (np.round(w * 2) / 2).astype(np.float32)
        elif style == "zeros":
            w[rng.random(shape) < 0.5] = 0.0
        arrays.append(w)
    n = draw(st.integers(2, 3))
    owner = [draw(st.integers(0, n - 1)) for _ in arrays]  # a rank may own nothing
    return arrays, n, owner


@settings(max_examples=40, deadline=None)
@given(sharded(), st.floats(0, 0.999), st.sampled_from([(1, 1), (2, 2), (3, 1)]),
       st.sampled_from([dict(), dict(chunk=7, direct_max=0), dict(chunk=64, direct_max=10)]))
def test_threshold_over_ranks_equals_one_process(case, ratio, block, kw):
    arrays, n, owner = case
    want = ratio_threshold([score_source(w, block) for w in arrays], ratio, **kw)
    assert want.tobytes() == ref.ratio_threshold(arrays, ratio, block).tobytes()
    got = ThreadWorld(n).run(lambda r, c: ratio_threshold(
        [score_source(w, block) for w, o in zip(arrays, owner) if o == r], ratio, comm=Group(c), **kw))
    assert [g.tobytes() for g in got] == [want.tobytes()] * n


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
def test_engine_masks_over_ranks_equal_one_process(local, block):
    rng = np.random.default_rng(11)
    ws = {f"l{i}": rng.standard_normal(s).astype(np.float32)
          for i, s in enumerate([(300, 200), (64, 32, 3, 3), (257, 129), (128, 512)])}
    ws["l2"][:, :60] = 0.0
    g1, per1 = engine.ratio_thresholds(ws, 0.6, local, block)
    masks1 = {n: np.empty(w.shape, bool) for n, w in ws.items()}
    engine.fill_masks(ws, masks1, g1, per1, block)

    def rank(r, c, hint):
        mine = {n: w for i, (n, w) in enumerate(ws.items()) if i % 2 == r}
        g, per = engine.ratio_thresholds(mine, 0.6, local, block, collectives=c, hint=hint)
        masks = {n: np.empty(w.shape, bool) for n, w in mine.items()}
        engine.fill_masks(mine, masks, g, per, block)
        return g, per, masks
    for hint in (None, per1 if local else float(g1)):  # cold, then warm (the previous threshold as the hint)
        for g, per, masks in ThreadWorld(2).run(lambda r, c: rank(r, c, hint)):
            assert (g is None and g1 is None) or g.tobytes() == g1.tobytes()
            assert {n: t.tobytes() for n, t in per.items()} == {n: per1[n].tobytes() for n in per}
            for n, m in masks.items():
                np.testing.assert_array_equal(m, masks1[n])


def test_non_finite_on_one_rank_raises_on_every_rank():
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal(100_000).astype(np.float32) for _ in range(2)]
    ws[1][777] = np.nan
    out = ThreadWorld(2).run(lambda r, c: ratio_threshold([ScoreSource(ws[r], name=f"p{r}")], 0.5, comm=Group(c)))
    assert all(isinstance(e, NonFiniteScoreError) for e in out)
    assert "'p1'" in str(out[1]) and "another rank" in str(out[0])


def test_bad_collectives_rejected():
    with pytest.raises(TypeError, match="collectives must have a callable"):
        engine.ratio_thresholds({"w": np.ones((2, 2), np.float32)}, 0.5, False, (1, 1), collectives=object())


def test_two_processes_with_paddle_distributed(tmp_path):
    """Each of 2 ranks owns half the layers: thresholds and masks equal the single-process run, bit for bit."""
    script = os.path.join(TESTS, "dist_select.py")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "log"), script, str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in (tmp_path / "log").glob("*"))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    sys.path.insert(0, TESTS)  # dist_select lives in tests/
    from dist_select import CASES, layers
    ws = layers()
    ranks = [np.load(tmp_path / f"out.rank{r}.npz") for r in range(2)]
    for case, (ratio, local, block) in CASES.items():
        g, per = engine.ratio_thresholds(ws, ratio, local, block)
        masks = {n: np.empty(w.shape, bool) for n, w in ws.items()}
        engine.fill_masks(ws, masks, g, per, block)
        for r, got in enumerate(ranks):
            if g is not None:
                assert got[f"{case}/threshold"].tobytes() == g.tobytes(), (case, r)
            for i, n in enumerate(ws):
                if i % 2 == r:
                    np.testing.assert_array_equal(got[f"{case}/mask/{n}"], masks[n], err_msg=f"{case} {n}")
                    if local:
                        assert got[f"{case}/t/{n}"].tobytes() == per[n].tobytes()
        assert "another rank" in str(ranks[0]["nan/error"]) and "contain NaN" in str(ranks[1]["nan/error"])
    # the dygraph pruner with collectives= over both ranks' Linear layers: the single-process threshold and masks
    flat = {n: w for n, w in ws.items() if w.ndim == 2}
    g, _ = engine.ratio_thresholds(flat, 0.65, False, (1, 1))
    for r, got in enumerate(ranks):
        assert got["pruner/threshold"].tobytes() == g.tobytes(), r
        for i, (n, w) in enumerate(ws.items()):
            if i % 2 == r and w.ndim == 2:
                np.testing.assert_array_equal(got[f"pruner/mask/{n}"], np.abs(w) >= g, err_msg=n)
