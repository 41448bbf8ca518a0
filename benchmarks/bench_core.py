"""Core benchmark: the ratio step against its floors, measured in the same run.

What a pruner's ``step()`` runs, on the real parameter arrays of Paddle models (zero-copy host views):

* floor 1, **memcpy**: copying every prunable weight once (``np.copyto``; it also restores the weights
  before each timed call);
* floor 2, **threshold step**: ``fill_masks(..., apply=True)`` with a fixed threshold (one fused pass);
* **ratio step**: ``score_sources`` + ``ratio_thresholds`` + ``fill_masks(apply=True)``, warm (the previous
  threshold and bracket width passed as the hint, as a pruner does in repeated steps) and cold (no hint: sample +
  bracket);
* **ratio 4x4 blocks**: the same with ``sparse_block=(4, 4)`` (and its peak extra memory, by tracemalloc);
* **tie mass**: the weights a previous 70% step zeroed all get the same small magnitude (what one optimizer
  update of equal size does), then a ratio step;
* the same steps at several thread counts (``--threads 1,2``; the core's knob ``set_num_threads``).

Every configuration runs once per round, in the same order, for ``--reps`` rounds; ratios are taken within a
round (paired) and reported as median [min-max] over the rounds. Run from the repository root::

    python benchmarks/bench_core.py                 # 100M weights and ResNet50, threads 1 and 2
    python benchmarks/bench_core.py --quick         # 20M weights only
    python benchmarks/bench_core.py --threads 1,2,4 --reps 9
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dygraph import _table, machine_facts  # noqa: E402

from paddleslim_static.core import engine, kernels, threads  # noqa: E402
from paddleslim_static.core.selection import SelectionStats  # noqa: E402

RATIO = 0.7


def _prunable_views(model) -> Dict[str, np.ndarray]:
    """Host views of the parameters the default rule prunes (rank >= 2, not normalization)."""
    import paddle
    out = {}
    norm = (paddle.nn.BatchNorm1D, paddle.nn.BatchNorm2D, paddle.nn.BatchNorm3D, paddle.nn.LayerNorm,
            paddle.nn.GroupNorm, paddle.nn.InstanceNorm2D)
    for _, layer in model.named_sublayers(include_self=True):
        if isinstance(layer, norm):
            continue
        for p in layer.parameters(include_sublayers=False):
            if len(p.shape) >= 2:
                out[p.name] = np.from_dlpack(p.detach())
    return out


def _nets(quick: bool) -> List[Tuple[str, Callable[[], object]]]:
    import paddle
    from paddle.vision.models import resnet50
    n = 5 if quick else 25
    nets = [(f"{n} x Linear(2000, 2000)",
             lambda: paddle.nn.Sequential(*[paddle.nn.Linear(2000, 2000) for _ in range(n)]))]
    if not quick:
        nets.append(("ResNet50", resnet50))
    return nets


def _stats(xs: Sequence[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def _ms(xs: Sequence[float]) -> str:
    return _stats([x * 1e3 for x in xs], "{:.1f}")


class Steps:
    """The timed calls on one set of weight arrays; ``restore()`` is the memcpy floor."""

    def __init__(self, weights: Dict[str, np.ndarray]) -> None:
        self.w = weights
        self.orig = {n: a.copy() for n, a in weights.items()}
        self.masks = {n: np.empty(a.shape, bool) for n, a in weights.items()}
        self.hints: Dict[Tuple[int, int], Tuple[float, Optional[float]]] = {}  # block -> (threshold, width)
        self.t = float(engine.ratio_thresholds(self.w, RATIO, False, (1, 1))[0])
        self.tied = {n: a.copy() for n, a in self.orig.items()}
        for a in self.tied.values():  # the pruned 70% all moved to the same small magnitude, signs kept
            small = np.abs(a) < np.float32(self.t)
            a[small] = np.where(a[small] < 0, np.float32(-1e-4), np.float32(1e-4))

    def restore(self, src: Optional[Dict[str, np.ndarray]] = None) -> None:
        for n, a in self.w.items():
            np.copyto(a, (src or self.orig)[n])

    def threshold(self) -> None:
        engine.fill_masks(self.w, self.masks, self.t, {}, (1, 1), apply=True)

    def ratio(self, block=(1, 1), cold: bool = False) -> None:
        """A ratio step; warm: from the previous call's threshold and width, as a pruner's next step is."""
        hint, width = (None, None) if cold else self.hints.get(tuple(block), (None, None))
        src = engine.score_sources(self.w, block)
        stats = SelectionStats()
        g, per = engine.ratio_thresholds(self.w, RATIO, False, block, src, hint=hint, hint_width=width, stats=stats)
        self.hints[tuple(block)] = (float(g), stats.next_width)
        engine.fill_masks(self.w, self.masks, g, per, block, apply=True, sources=src)

    def peak_extra(self, block) -> int:
        self.restore()
        tracemalloc.start()
        try:
            self.ratio(block)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def bench_net(name: str, build, reps: int, thread_counts: Sequence[int]) -> str:
    import paddle
    paddle.seed(0)
    model = build()
    steps = Steps(_prunable_views(model))
    n = sum(a.size for a in steps.w.values())
    nbytes = sum(a.nbytes for a in steps.w.values())
    configs = [("memcpy", lambda: None), ("threshold", steps.threshold), ("ratio", steps.ratio),
               ("ratio cold", lambda: steps.ratio(cold=True)), ("ratio 4x4", lambda: steps.ratio((4, 4))),
               ("tie mass", steps.ratio)]
    rows = []
    base: Dict[str, List[float]] = {}
    for nt in thread_counts:
        previous = threads.set_num_threads(nt)
        try:
            times: Dict[str, List[float]] = {k: [] for k, _ in configs}
            for _ in range(reps):
                for key, fn in configs:
                    if key == "memcpy":
                        t0 = time.perf_counter()
                        steps.restore()
                    else:
                        steps.restore(steps.tied if key == "tie mass" else None)
                        t0 = time.perf_counter()
                        fn()
                    times[key].append(time.perf_counter() - t0)
        finally:
            threads.set_num_threads(previous)
        if nt == thread_counts[0]:
            base = times

        def ratio(a: str, b: str) -> str:
            return _stats([x / y for x, y in zip(times[a], times[b])])
        rows.append([str(nt), _ms(times["memcpy"]), _ms(times["threshold"]),
                     f"{_ms(times['ratio'])} / **{ratio('ratio', 'threshold')}x**",
                     f"{_ms(times['ratio cold'])} / {ratio('ratio cold', 'threshold')}x",
                     f"{_ms(times['ratio 4x4'])} / **{ratio('ratio 4x4', 'threshold')}x**",
                     f"{_ms(times['tie mass'])} / **{ratio('tie mass', 'ratio')}x**",
                     f"{ratio('threshold', 'memcpy')}x",
                     _stats([statistics.median(base[k]) / statistics.median(times[k])
                             for k in ("threshold", "ratio", "ratio 4x4")])])
    extra = steps.peak_extra((4, 4))
    head = (f"### {name}: {n / 1e6:.1f}M prunable weights ({nbytes / 2**20:.0f} MiB), ratio {RATIO}, "
            f"{reps} rounds\n\nms: median [min-max]; x: paired ratio per round, median [min-max]. "
            f"4x4 ratio step peak extra memory (tracemalloc): {extra / 2**20:.1f} MiB = "
            f"1/{nbytes / max(extra, 1):.1f} of the weights' bytes.\n\n")
    return head + _table(["threads", "memcpy (floor)", "threshold step", "ratio step (warm) / vs threshold",
                          "ratio step (cold) / vs threshold", "ratio 4x4 / vs threshold",
                          "tie mass / vs tie-free ratio", "threshold / memcpy",
                          f"speed-up vs {thread_counts[0]} thread(s) (threshold, ratio, 4x4)"], rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 x Linear(2000, 2000) only")
    ap.add_argument("--reps", type=int, default=7, help="rounds (default 7, at least 3)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    args = ap.parse_args(argv)
    try:
        counts = [int(x) for x in args.threads.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--threads must be comma-separated integers; got {args.threads!r}")
    if not counts or min(counts) < 1 or args.reps < 3:
        ap.error(f"--threads must be >= 1 and --reps >= 3; got {args.threads!r}, {args.reps}")
    import paddle
    paddle.set_device("cpu")
    t0 = time.perf_counter()
    print(f"## Core benchmark{' (--quick)' if args.quick else ''}\n\n{machine_facts()}\n"
          f"- {kernels.not_in_use() or 'C kernels: in use'}\n", flush=True)
    for name, build in _nets(args.quick):
        print(bench_net(name, build, args.reps, counts) + "\n", flush=True)
    print(f"_total benchmark time {time.perf_counter() - t0:.0f} s_")
    return 0


if __name__ == "__main__":
    sys.exit(main())
