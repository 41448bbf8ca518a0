"""Streaming block scores, block masks and threads: same bits on C and numpy, any thread count, bounded memory."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st

import reference as ref
from paddleslim_static.core import engine, kernels, ratio_threshold, threads
from paddleslim_static.core.scores import block_scores, mask_from_threshold

needs_c = pytest.mark.skipif(not kernels.available(), reason="C kernels not built")


@st.composite
def block_case(draw):
    shape = tuple(draw(st.lists(st.integers(1, 11), min_size=2, max_size=4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    w = rng.standard_normal(shape).astype(np.float32)
    if draw(st.booleans()):  # wide dynamic range: float64 sums are inexact, so the summation order shows
        w *= np.float32(10.0) ** rng.integers(-30, 30, shape).astype(np.float32)
    block = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return w, block


@needs_c
@given(block_case())
def test_block_scores_same_bits_on_c_and_numpy(case):
    w, block = case
    c, py = ref.on_c_and_numpy(lambda: block_scores(w, block)[0].tobytes())
    assert c == py


@needs_c
@given(block_case(), st.floats(0, 0.999), st.booleans())
def test_block_masks_same_bits_on_c_and_numpy(case, ratio, apply):
    w, block = case
    def run():
        ww, m = w.copy(), np.empty(w.shape, bool)
        src = engine.score_sources({"w": ww}, block)
        g, _ = engine.ratio_thresholds({"w": ww}, ratio, False, block, src)
        engine.fill_masks({"w": ww}, {"w": m}, g, {}, block, apply=apply, sources=src)
        return g.tobytes(), m.tobytes(), ww.tobytes()
    c, py = ref.on_c_and_numpy(run)
    assert c == py


@given(block_case())
def test_block_scores_match_reference_on_ordinary_weights(case):
    w, block = case
    block = (2, 1) if block == (1, 1) else block  # 1 x 1 means plain |w|, not blocks
    w = np.random.default_rng(w.size).standard_normal(w.shape).astype(np.float32)
    scores, counts = block_scores(w, block)
    m, n = block
    full = ref.element_scores(w, block)
    np.testing.assert_array_equal(scores, full[::m, ::n].reshape(scores.shape[0], scores.shape[1], -1)[..., 0])
    assert counts.sum() == w.size


def test_noncontiguous_block_masks():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((10, 14, 3)).astype(np.float32)
    w = base[:, ::2]  # not contiguous: numpy path
    out = np.empty(w.shape, bool)
    t = np.float32(0.7)
    mask_from_threshold(w, t, (3, 2), out)
    np.testing.assert_array_equal(out, ref.element_scores(np.ascontiguousarray(w), (3, 2)) >= t)


@needs_c
@pytest.mark.parametrize("block", [(1, 1), (4, 4), (3, 5)])
@pytest.mark.parametrize("n_threads", [2, 3])
def test_threads_give_identical_results(monkeypatch, block, n_threads):
    monkeypatch.setattr(kernels, "_MIN_PART", 1000)  # split even these small arrays
    rng = np.random.default_rng(7)
    orig = {f"w{i}": rng.standard_normal(s).astype(np.float32)
            for i, s in enumerate([(301, 77), (64, 32, 3, 3), (5000,), (129, 255)])}
    orig["w1"][:, :, 0] = 0.0  # a tie mass

    def run(nt):
        previous = threads.set_num_threads(nt)
        try:
            ws = {n: w.copy() for n, w in orig.items()}
            masks = {n: np.empty(w.shape, bool) for n, w in ws.items()}
            src = engine.score_sources(ws, block)
            g, _ = engine.ratio_thresholds(ws, 0.6, False, block, src)
            t = ratio_threshold(list(src.values()), 0.6, chunk=999, direct_max=0)
            engine.fill_masks(ws, masks, g, {}, block, apply=True, sources=src)
            engine.apply_masks(ws, masks)
            return [g.tobytes(), t.tobytes()] + [ws[n].tobytes() + masks[n].tobytes() for n in ws]
        finally:
            threads.set_num_threads(previous)
    assert run(1) == run(n_threads)


def test_thread_knob_validated_and_read_from_env(monkeypatch):
    with pytest.raises(ValueError, match="n must be"):
        threads.set_num_threads(0)
    with pytest.raises(ValueError, match="n must be"):
        threads.set_num_threads(True)
    previous = threads.set_num_threads(None)
    try:
        monkeypatch.setenv("PADDLESLIM_NUM_THREADS", "3")
        assert threads.num_threads() == 3
        monkeypatch.delenv("PADDLESLIM_NUM_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "junk")
        assert threads.num_threads() == 1
    finally:
        threads.set_num_threads(previous)


@pytest.mark.parametrize("c_kernels", [True, False])
def test_block_ratio_step_extra_memory_is_one_sixteenth(c_kernels):
    if c_kernels and not kernels.available():
        pytest.skip("C kernels not built")
    rng = np.random.default_rng(0)
    ws = {f"w{i}": rng.standard_normal((512, 512)).astype(np.float32) for i in range(4)}
    masks = {n: np.empty(w.shape, bool) for n, w in ws.items()}
    weight_bytes = sum(w.nbytes for w in ws.values())
    previous = kernels.use_c(c_kernels)
    tracemalloc.start()
    try:
        src = engine.score_sources(ws, (4, 4))
        g, _ = engine.ratio_thresholds(ws, 0.7, False, (4, 4), src)
        engine.fill_masks(ws, masks, g, {}, (4, 4), apply=True, sources=src)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        kernels.use_c(previous)
    # the block scores are weight_bytes / 16; the rest (band, sample, per-row scratch) must stay small
    assert peak <= weight_bytes / 16 + 3 * 2**20, (peak, weight_bytes)
    for n, w in ws.items():
        assert not w[~masks[n]].any()


# -- warm start ---------------------------------------------------------------------------------------------
from paddleslim_static.core import ScoreSource, selection  # noqa: E402


@given(st.integers(0, 2**31 - 1), st.floats(0, 0.999),
       st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
       st.sampled_from(["normal", "ties", "zeros"]))
def test_any_hint_gives_the_exact_threshold(seed, ratio, hint, style):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(3000).astype(np.float32)
    if style == "ties":
        w = (np.round(w * 3) / 3).astype(np.float32)
    elif style == "zeros":
        w[rng.random(w.size) < 0.6] = 0.0
    want = ref.ratio_threshold([w], ratio)
    got = ratio_threshold([ScoreSource(w)], ratio, hint=hint, chunk=256, direct_max=0)
    assert got.tobytes() == want.tobytes()
    near = ratio_threshold([ScoreSource(w)], ratio, hint=float(want) * 1.001, chunk=256, direct_max=0)
    assert near.tobytes() == want.tobytes()


def test_a_pruner_warm_starts_from_its_own_last_threshold():
    """The pruner passes its previous threshold as the hint (the engine keeps no cache): the second step of a
    slowly moving model is one pass and no sample, observable in ``pruner.selection_stats``."""
    from paddleslim_static.core.pruner import ArrayBackend, Pruner

    rng = np.random.default_rng(6)
    ws = {f"w{i}": rng.standard_normal((300, 400)).astype(np.float32) for i in range(2)}
    pruner = Pruner(ArrayBackend(ws), mode="ratio", ratio=0.7)
    pruner.step()
    first = pruner.selection_stats
    assert first.samples == 1 and not first.warm_hit
    for w in ws.values():
        w *= np.float32(1.0005)
    pruner.step()
    second = pruner.selection_stats
    assert (second.passes, second.samples, second.warm_hit) == (1, 0, True)
    assert np.float32(pruner.threshold) == ref.ratio_threshold(list(ws.values()), 0.7)


def test_good_hint_takes_one_pass_and_no_sample():
    rng = np.random.default_rng(4)
    ws = {f"w{i}": rng.standard_normal((300, 400)).astype(np.float32) for i in range(3)}
    cold = selection.SelectionStats()
    g, _ = engine.ratio_thresholds(ws, 0.7, False, (1, 1), stats=cold)
    assert cold.samples == 1 and not cold.warm_hit
    for w in ws.values():  # one optimizer-like nudge: the threshold moves a little
        w *= np.float32(1.0005)
    warm = selection.SelectionStats()
    g2, _ = engine.ratio_thresholds(ws, 0.7, False, (1, 1), hint=float(g), hint_width=cold.next_width, stats=warm)
    assert (warm.passes, warm.samples, warm.warm_hit) == (1, 0, True)
    assert g2.tobytes() == ref.ratio_threshold(list(ws.values()), 0.7).tobytes()
    again = selection.SelectionStats()  # the engine keeps nothing between calls: no hint, no warm start
    assert engine.ratio_thresholds(ws, 0.7, False, (1, 1), stats=again)[0] == g2
    assert again.samples == 1 and not again.warm_hit
    per = engine.ratio_thresholds(ws, 0.7, True, (1, 1), hint={n: 1e9 for n in ws})[1]  # useless hints: exact
    assert {n: t.tobytes() for n, t in per.items()} == {
        n: ref.ratio_threshold([w], 0.7).tobytes() for n, w in ws.items()}
