"""Where a ratio step's time goes, next to the floors (100M float32 weights in numpy, one thread).

Prints, per component, the median and range of CPU time (``time.process_time``, steadier than wall time on
a shared machine) over ``--reps`` interleaved rounds::

    python benchmarks/profile_ratio_step.py [--n-layers 25] [--reps 7]

Components: a pure read of the weights (``max`` over the uint32 view), memcpy, the threshold step (mask +
apply in one pass), the selection's read-only pass without and with the band, the sample and bracket, the band
selection, and the whole cold and warm ratio steps. The ratio step must read every weight before writing any
(a NaN anywhere must raise with nothing changed), so its floor is one read plus one threshold step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from paddleslim_static.core import engine, kernels, selection, threads
from paddleslim_static.core.selection import ScoreSource


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-layers", type=int, default=25, help="Linear(2000, 2000) weights (default 25: 100M)")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    if args.n_layers < 1 or args.reps < 3:
        ap.error(f"--n-layers must be >= 1 and --reps >= 3; got {args.n_layers}, {args.reps}")
    threads.set_num_threads(1)
    print(kernels.not_in_use() or "C kernels: in use")  # the core's speed depends on them
    rng = np.random.default_rng(0)
    orig = {f"w{i}": (rng.standard_normal((2000, 2000), dtype=np.float32) * 0.02) for i in range(args.n_layers)}
    ws = {n: a.copy() for n, a in orig.items()}
    masks = {n: np.empty(a.shape, bool) for n, a in ws.items()}
    keys = [a.reshape(-1).view(np.uint32) for a in ws.values()]
    srcs = [ScoreSource(a) for a in ws.values()]
    k = selection.prune_count(sum(a.size for a in ws.values()), 0.7)
    t = float(engine.ratio_thresholds(ws, 0.7, False, (1, 1))[0])
    warm = {"hint": t, "hint_width": None}  # what a pruner passes on its next step
    sample = selection._sample(keys, np.random.default_rng(0))
    lo, hi = selection._bracket(sample, k / sum(a.size for a in keys))
    wlo, whi = selection._hint_bracket(t)
    _, _, band, _ = selection._stream(srcs, keys, lo, hi)

    def restore() -> None:
        for n in ws:
            np.copyto(ws[n], orig[n])

    def ratio(cold: bool) -> None:
        stats = selection.SelectionStats()
        g, per = engine.ratio_thresholds(ws, 0.7, False, (1, 1), stats=stats,
                                         **({} if cold else warm))
        warm.update(hint=float(g), hint_width=stats.next_width)
        engine.fill_masks(ws, masks, g, per, (1, 1), apply=True)

    parts: Dict[str, Callable[[], object]] = {
        "read (uint32 max)": lambda: [a.max() for a in keys],
        "memcpy": restore,
        "threshold step (mask + apply)": lambda: engine.fill_masks(ws, masks, t, {}, (1, 1), apply=True),
        "read-only pass, no band": lambda: selection._stream(srcs, keys, lo, lo),
        f"read-only pass, warm band (+-0.4%: {selection._stream(srcs, keys, wlo, whi)[1] / 1e6:.2f}M keys)":
            lambda: selection._stream(srcs, keys, wlo, whi),
        f"read-only pass, sampled band ({band.size / 1e6:.2f}M keys)": lambda: selection._stream(srcs, keys, lo, hi),
        "sample + bracket": lambda: selection._bracket(selection._sample(keys, np.random.default_rng(0)), 0.7),
        "band selection (partition)": lambda: selection._select_in(band, None, band.size // 2),
        "ratio step, cold (no hint)": lambda: ratio(True),
        "ratio step, warm (previous threshold, default +-0.4% band)": lambda: ratio(False),
        "ratio step, warm again (band narrowed to the drift seen)": lambda: ratio(False),
    }
    times: Dict[str, List[float]] = {name: [] for name in parts}
    for _ in range(args.reps):
        for name, fn in parts.items():
            restore()
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    thr = statistics.median(times["threshold step (mask + apply)"])
    print(f"### Ratio-step profile: {args.n_layers} x (2000, 2000) float32, CPU ms, median [min-max] of "
          f"{args.reps}\n\n| component | CPU ms | / threshold step |\n|---|---|---|")
    for name, xs in times.items():
        m = statistics.median(xs)
        print(f"| {name} | {m * 1e3:.1f} [{min(xs) * 1e3:.1f}-{max(xs) * 1e3:.1f}] | {m / thr:.2f} |")
    floor = statistics.median(times["read (uint32 max)"]) + thr
    print(f"\nfloor for a ratio step that reads before it writes (read + threshold step): {floor * 1e3:.1f} ms "
          f"= {floor / thr:.2f}x the threshold step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
