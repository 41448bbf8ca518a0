"""Dygraph pruner benchmark: step() cost vs PaddleSlim's sort baseline, training overhead, mask memory.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_dygraph.py           # full run, a few minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_dygraph.py --quick   # smaller nets, under a minute

Every number is the median over repetitions; configurations are interleaved (A B C A B C ...) so that
drift on a shared machine hits all of them alike. Output is markdown.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import PaddleSlimBaseline, SortBaseline  # noqa: E402

from paddleslim_dygraph import UnstructuredPruner  # noqa: E402
from paddleslim_static.core import kernels  # noqa: E402

RATIO = 0.7


# -- helpers ---------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> str:
    return (f"- CPU: {_cpu_model()}, {os.cpu_count()} logical cores; OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', '(unset)')}\n"
            f"- Python {platform.python_version()}, Paddle {paddle.__version__} "
            f"({'CUDA' if paddle.is_compiled_with_cuda() else 'CPU'} build), numpy {np.__version__}, "
            f"{platform.system()} {platform.release()}")


def _view(p: paddle.Tensor) -> np.ndarray:
    return np.from_dlpack(p.detach())


def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_mb(b: int) -> str:
    return f"{b / 2**20:.1f} MiB"


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# -- networks --------------------------------------------------------------------------------------
def _linear_stack(n: int) -> paddle.nn.Layer:
    return paddle.nn.Sequential(*[paddle.nn.Linear(2000, 2000) for _ in range(n)])


def _nets(quick: bool) -> List[Tuple[str, Callable[[], paddle.nn.Layer]]]:
    from paddle.vision.models import mobilenet_v1, resnet50
    n = 5 if quick else 25
    nets = [(f"{n} x Linear(2000, 2000)", lambda: _linear_stack(n))]
    if not quick:
        nets.append(("ResNet50", resnet50))
    nets.append(("MobileNetV1", mobilenet_v1))
    return nets


# -- 1. step() cost --------------------------------------------------------------------------------
def bench_step(name: str, build: Callable[[], paddle.nn.Layer], reps: int) -> Dict[str, object]:
    """Ratio step (ours vs sort baseline), threshold step, ratio step on already-pruned weights."""
    paddle.seed(0)
    model = build()
    ratio_p = UnstructuredPruner(model, "ratio", ratio=RATIO)
    names = set(ratio_p.prunable_params)
    params = [p for p in model.parameters() if p.name in names]
    n_weights = sum(int(p.size) for p in params)
    snapshot = {p.name: _view(p).copy() for p in params}

    def restore() -> None:
        for p in params:
            np.copyto(_view(p), snapshot[p.name])

    baseline = SortBaseline(params, RATIO)
    paddleslim = PaddleSlimBaseline(params, RATIO)
    ratio_p.step()  # threshold for the threshold-mode pruner: the same 70%
    thr = ratio_p.threshold
    restore()
    baseline.step()
    same = np.float32(baseline.threshold) == np.float32(thr)
    restore()
    # One pruner per model: the threshold pruner gets a second copy of the network with the same weights.
    model2 = build()
    model2.set_state_dict(model.state_dict())
    thr_p = UnstructuredPruner(model2, "threshold", threshold=thr)
    names2 = set(thr_p.prunable_params)
    params2 = [p for p in model2.parameters() if p.name in names2]
    pairs = [(p.name, _view(p2)) for p, p2 in zip(params, params2)]
    if len(params2) != len(params) or any(v.shape != snapshot[n].shape for n, v in pairs):
        raise RuntimeError(f"{name}: the second copy's prunable parameters do not match the first's")

    def restore_thr() -> None:
        for n, v in pairs:
            np.copyto(v, snapshot[n])

    times: Dict[str, List[float]] = {"ours": [], "baseline": [], "paddleslim": [], "threshold": [],
                                     "ours_pruned": []}
    runs = [("ours", ratio_p.step, True), ("baseline", baseline.step, True), ("paddleslim", paddleslim.step, True),
            ("threshold", thr_p.step, True), ("ours_pruned", ratio_p.step, False)]
    for _ in range(reps):
        for key, fn, fresh in runs:
            if fresh:
                restore_thr() if key == "threshold" else restore()
            else:
                ratio_p.step()  # make sure the weights are the 70%-pruned ones
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    kept = sum(int(np.count_nonzero(_view(p))) for p in params)
    out = {k: _med(v) for k, v in times.items()}
    out.update(name=name, n=n_weights, same_threshold=bool(same), density=kept / n_weights,
               bool_bytes=sum(int(m.size) * m.element_size() for m in ratio_p.masks.values()),
               float_bytes=baseline.mask_bytes())
    ratio_p.finalize()
    thr_p.finalize()
    del model2, params2, pairs
    snapshot.clear()  # free the copies before the next network is built
    return out


def report_step(results: List[Dict[str, object]], reps: int) -> str:
    rows = []
    for r in results:
        rows.append([
            str(r["name"]), f"{r['n'] / 1e6:.1f}M", _fmt_s(r["paddleslim"]), _fmt_s(r["baseline"]),
            _fmt_s(r["ours"]), f"**{r['paddleslim'] / r['ours']:.1f}x** / {r['baseline'] / r['ours']:.1f}x",
            _fmt_s(r["threshold"]), f"{r['ours'] / r['threshold']:.2f}",
            _fmt_s(r["ours_pruned"]), "yes" if r["same_threshold"] else "**NO**",
        ])
    head = (f"### step() at ratio {RATIO} (global), median of {reps}\n\n"
            "Weights are restored to the dense initial values before every timed call, except in the "
            "'ratio, pruned w' column (step() again on the already 70%-pruned weights).\n\n")
    return head + _table(
        ["network", "prunable weights", "PaddleSlim 2.6 step", "lean sort baseline", "ratio step (ours)",
         "speed-up vs PaddleSlim / lean sort", "threshold step",
         "ratio/threshold", "ratio, pruned w", "same threshold"], rows)


def report_memory(results: List[Dict[str, object]]) -> str:
    rows = [[str(r["name"]), f"{r['n'] / 1e6:.1f}M", _fmt_mb(r["bool_bytes"]), _fmt_mb(r["float_bytes"]),
             f"{r['float_bytes'] / r['bool_bytes']:.1f}x"] for r in results]
    return ("### Mask memory (bytes of the actual mask tensors)\n\n"
            + _table(["network", "prunable weights", "bool masks (ours)", "float32 masks (PaddleSlim)",
                      "ratio"], rows))


# -- 2. training-step overhead ---------------------------------------------------------------------
def bench_train(batch: int, rounds: int, warmup: int) -> str:
    from paddle.vision.models import mobilenet_v1
    warnings.filterwarnings("ignore", message="When training, we now always track")
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((batch, 3, 224, 224), dtype=np.float32))
    y = paddle.to_tensor(rng.integers(0, 1000, (batch, 1)))
    loss_fn = paddle.nn.CrossEntropyLoss()

    configs = {}
    for key in ("none", "threshold", "ratio"):
        paddle.seed(0)
        model = mobilenet_v1()
        opt = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=model.parameters())
        configs[key] = [model, opt, None]
    ratio_p = UnstructuredPruner(configs["ratio"][0], "ratio", ratio=RATIO)
    ratio_p.step()
    configs["ratio"][2] = ratio_p
    configs["threshold"][2] = UnstructuredPruner(configs["threshold"][0], "threshold", threshold=ratio_p.threshold)
    configs["threshold"][2].step()

    total: Dict[str, List[float]] = {k: [] for k in configs}
    stepped: Dict[str, List[float]] = {k: [] for k in configs}

    def one(key: str) -> Tuple[float, float]:
        model, opt, pruner = configs[key]
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        t1 = time.perf_counter()
        if pruner is not None:
            pruner.step()
        t2 = time.perf_counter()
        return t2 - t0, t2 - t1

    for _ in range(warmup):
        for key in configs:
            one(key)
    for _ in range(rounds):
        for key in configs:
            t, s = one(key)
            total[key].append(t)
            stepped[key].append(s)
    base = _med(total["none"])
    rows = []
    for key, label in (("none", "no pruner"), ("threshold", "threshold-mode step() every iteration"),
                       ("ratio", "ratio-mode step() every iteration")):
        m = _med(total[key])
        rows.append([label, _fmt_s(m), "-" if key == "none" else f"{(m / base - 1) * 100:+.1f}%",
                     "-" if key == "none" else f"{_med(stepped[key]) * 1e3:.1f} ms "
                     f"({_med(stepped[key]) / base * 100:.1f}%)"])
    dens = {k: 1 - UnstructuredPruner.total_sparse(configs[k][0]) for k in ("threshold", "ratio")}
    head = (f"### MobileNetV1 training iteration (batch {batch}, 3x224x224, Momentum; forward, backward, "
            f"optimizer.step, clear_grad [+ pruner.step()])\n\n"
            f"{warmup} warm-up rounds, then median of {rounds} interleaved rounds (none, threshold, ratio). "
            "Masks are also re-applied in a forward pre-hook (included in the iteration time). "
            f"Final sparsity of all parameters: threshold {dens['threshold']:.3f}, ratio {dens['ratio']:.3f}.\n\n")
    return head + _table(["configuration", "median iteration", "overhead (end to end)",
                          "median pruner.step() (share of no-pruner iteration)"], rows)


# -- 3. forward overhead of a live pruner ----------------------------------------------------------
def bench_forward(batches: Sequence[int], rounds: int) -> str:
    """Eval forward, MobileNetV1 on 32x32 inputs: a plain model vs the same weights under a live dygraph
    ``UnstructuredPruner(model, 'ratio', ratio=0.5)`` after one ``step()`` (weights unchanged since)."""
    from paddle.vision.models import mobilenet_v1
    paddle.seed(0)
    pruned = mobilenet_v1()
    pruner = UnstructuredPruner(pruned, "ratio", ratio=0.5)
    pruner.step()
    plain = mobilenet_v1()
    own = plain.state_dict()
    plain.set_state_dict({k: v for k, v in pruned.state_dict().items() if k in own})
    plain.eval()
    pruned.eval()
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        x = paddle.to_tensor(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32))
        with paddle.no_grad():
            same = bool(np.array_equal(plain(x).numpy(), pruned(x).numpy()))
            per_round = max(1, 64 // batch)  # forwards per timed sample: a few ms each
            for _ in range(3):
                plain(x), pruned(x)
            t_plain: List[float] = []
            t_pruned: List[float] = []
            for _ in range(rounds):
                for model, out in ((plain, t_plain), (pruned, t_pruned)):
                    t0 = time.perf_counter()
                    for _ in range(per_round):
                        model(x)
                    out.append((time.perf_counter() - t0) / per_round)
        ratios = [b / a - 1 for a, b in zip(t_plain, t_pruned)]
        rows.append([str(batch), f"{_med(t_plain) * 1e3:.2f} ms", f"{_med(t_pruned) * 1e3:.2f} ms",
                     f"**{_med(ratios) * 100:+.1f}%** [{min(ratios) * 100:+.1f}% to {max(ratios) * 100:+.1f}%]",
                     "yes" if same else "**NO**"])
    pruner.finalize()
    head = (f"### Forward overhead of a live pruner (MobileNetV1, 3x32x32, eval, no_grad)\n\n"
            "Plain model vs the same (pruned) weights under `UnstructuredPruner(model, 'ratio', ratio=0.5)` after "
            f"one `step()`; {rounds} interleaved rounds, overhead paired per round: median [min to max].\n\n")
    return head + _table(["batch", "plain forward", "with live pruner", "overhead", "same outputs"], rows)


# -- main ------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller nets and fewer rounds (under a minute)")
    ap.add_argument("--reps", type=int, default=None, help="step() repetitions (default 7; quick 5)")
    ap.add_argument("--rounds", type=int, default=None, help="training rounds (default 20; quick 5)")
    ap.add_argument("--skip-step", action="store_true", help="skip the step()/memory benchmark")
    ap.add_argument("--skip-train", action="store_true", help="skip the training-overhead benchmark")
    ap.add_argument("--skip-forward", action="store_true", help="skip the forward-overhead benchmark")
    args = ap.parse_args(argv)
    reps = args.reps or (5 if args.quick else 7)
    rounds = args.rounds or (5 if args.quick else 20)
    if reps < 5 or rounds < 5:
        ap.error(f"--reps and --rounds must be >= 5; got {reps}, {rounds}")
    paddle.set_device("cpu")
    print(kernels.not_in_use() or "C kernels: in use")  # the core's speed depends on them
    t0 = time.perf_counter()
    print(f"## Dygraph benchmark{' (--quick)' if args.quick else ''}\n\n{machine_facts()}\n", flush=True)
    if not args.skip_step:
        results = [bench_step(name, build, reps) for name, build in _nets(args.quick)]
        print(report_step(results, reps) + "\n", flush=True)
        print(report_memory(results) + "\n", flush=True)
    if not args.skip_train:
        print(bench_train(4 if args.quick else 8, rounds, 1 if args.quick else 2) + "\n", flush=True)
    if not args.skip_forward:
        print(bench_forward((1, 32), max(rounds, 5) * (1 if args.quick else 2)) + "\n", flush=True)
    print(f"_total benchmark time {time.perf_counter() - t0:.0f} s_")
    return 0


if __name__ == "__main__":
    sys.exit(main())
