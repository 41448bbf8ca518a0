"""Device benchmark: what the dygraph pruner costs per training iteration with each engine, on whatever device Paddle
has (a GPU when there is one; the CPU here), and how many bytes cross between host and device per call.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_device.py            # resnet18-sized convnet, a few minutes on CPU
    OMP_NUM_THREADS=1 python benchmarks/bench_device.py --quick    # a small MLP, seconds (what CI runs)
    python benchmarks/bench_device.py --device gpu:0 --model resnet50   # on a GPU machine

For each engine (``numpy``: the numpy/C core over host arrays, the CPU default; ``paddle``: Paddle operations where
the tensors live, the default off the CPU) it measures, as medians over repetitions interleaved between engines:

* ``ratio step``: ``pruner.step()`` of a ratio pruner after a training iteration (new threshold, masks, zeros);
* ``gmp quiet step``: a GMP step whose ratio did not change (re-applies the masks);
* ``armed forward``: the extra forward time when the masks are re-applied after a backward (the pre-hook), as the
  median armed forward minus the median unarmed one (both with the pruner attached);
* ``train iter``: forward + backward + optimizer step without a pruner, the yardstick for the overheads;
* ``bytes`` per call: host<->device traffic counted by :mod:`paddleslim_static.traffic` (on the CPU, host views
  of the tensors count as their size: that is what a host engine would copy over a bus).

Output is markdown; ``--json PATH`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import numpy as np
import paddle
import paddle.nn.functional as F

from paddleslim_dygraph import GMPUnstructuredPruner, UnstructuredPruner
from paddleslim_static.core import kernels
from paddleslim_static.traffic import host_traffic

ENGINES = ("numpy", "paddle")
GMP_CONFIGS = dict(stable_iterations=0, pruning_iterations=10_000, tunning_iterations=1, pruning_steps=100,
                   initial_ratio=0.5, resume_iteration=-1)  # the ratio changes every 100 iterations


def build(name: str) -> Any:
    paddle.seed(0)
    if name == "mlp":
        return paddle.nn.Sequential(paddle.nn.Linear(256, 1024), paddle.nn.ReLU(), paddle.nn.Linear(1024, 1024),
                                    paddle.nn.ReLU(), paddle.nn.Linear(1024, 10)), [256]
    models = {"resnet18": paddle.vision.models.resnet18, "resnet50": paddle.vision.models.resnet50,
              "mobilenet_v1": paddle.vision.models.mobilenet_v1}
    return models[name](num_classes=10), [3, 32, 32]


def sync() -> None:
    if not paddle.get_device().startswith("cpu"):
        paddle.device.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


class Run:
    """One model, optimizer and pruner per engine; each measurement is one call."""

    def __init__(self, engine: str, model_name: str, batch: int) -> None:
        self.engine = engine
        os.environ["PADDLESLIM_ENGINE"] = engine
        self.model, shape = build(model_name)
        self.opt = paddle.optimizer.Momentum(0.01, parameters=self.model.parameters())
        rng = np.random.default_rng(0)
        self.x = paddle.to_tensor(rng.standard_normal([batch] + shape).astype(np.float32))
        self.y = paddle.to_tensor(rng.integers(0, 10, (batch, 1)).astype(np.int64))
        self.n_weights = 0
        self.pruner: Any = None

    def train(self) -> None:
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()
        self.opt.clear_grad()

    def backward_only(self) -> None:
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.clear_grad()

    def forward(self) -> None:
        with paddle.no_grad():
            self.model(self.x)

    def attach(self, gmp: bool) -> None:
        os.environ["PADDLESLIM_ENGINE"] = self.engine
        if self.pruner is not None:
            self.pruner.finalize()
        self.pruner = (GMPUnstructuredPruner(self.model, ratio=0.9, configs=GMP_CONFIGS) if gmp
                       else UnstructuredPruner(self.model, "ratio", ratio=0.7))
        self.n_weights = sum(int(np.prod(p.shape)) for p in self.model.parameters()
                             if p.name in self.pruner.prunable_params)


def measure(model_name: str, batch: int, reps: int) -> Dict[str, Dict[str, float]]:
    runs = [Run(e, model_name, batch) for e in ENGINES]
    times: Dict[str, Dict[str, List[float]]] = {r.engine: {} for r in runs}
    traffic: Dict[str, Dict[str, int]] = {r.engine: {} for r in runs}

    def add(r: Run, key: str, value: float) -> None:
        times[r.engine].setdefault(key, []).append(value)

    for r in runs:  # warm-up and the yardstick without a pruner
        r.train()
    for _ in range(reps):
        for r in runs:
            add(r, "train iter", timed(r.train))
    for r in runs:
        r.attach(gmp=False)
        r.train()
        r.pruner.step()
    for _ in range(reps):
        for r in runs:
            os.environ["PADDLESLIM_ENGINE"] = r.engine
            r.train()
            with host_traffic() as meter:
                add(r, "ratio step", timed(r.pruner.step))
            traffic[r.engine]["ratio step"] = meter.bytes
            add(r, "forward", timed(r.forward))  # not armed: the pre-hook does nothing
            r.backward_only()  # arms the pre-hook
            with host_traffic() as meter:
                add(r, "armed forward", timed(r.forward))
            traffic[r.engine]["armed forward"] = meter.bytes
    for r in runs:
        r.attach(gmp=True)
        r.pruner.step()
    for _ in range(reps):
        for r in runs:
            os.environ["PADDLESLIM_ENGINE"] = r.engine
            r.train()
            before = r.pruner.ratio
            with host_traffic() as meter:
                t = timed(r.pruner.step)
            if r.pruner.ratio == before:
                add(r, "gmp quiet step", t)
                traffic[r.engine]["gmp quiet step"] = meter.bytes
    out: Dict[str, Dict[str, float]] = {}
    for r in runs:
        med = {k: statistics.median(v) for k, v in times[r.engine].items()}
        med["armed forward"] = med["armed forward"] - med["forward"]
        out[r.engine] = {**{f"{k} ms": 1e3 * v for k, v in med.items()},
                         **{f"{k} bytes": float(v) for k, v in traffic[r.engine].items()},
                         "weights": float(r.n_weights)}
    return out


def report(results: Dict[str, Dict[str, float]], args: argparse.Namespace) -> str:
    lines = [f"- device: {paddle.get_device()}; Paddle {paddle.__version__} "
             f"({'CUDA' if paddle.is_compiled_with_cuda() else 'CPU'} build); {platform.processor() or 'cpu'}; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}",
             f"- model {args.model}, batch {args.batch}, {int(results['numpy']['weights']):,} pruned weights, "
             f"median of {args.reps}", "",
             "| engine | train iter ms | ratio step ms | bytes | gmp quiet step ms | bytes | armed forward ms | "
             "bytes |", "|---|---|---|---|---|---|---|---|"]
    for e, r in results.items():
        lines.append(f"| {e} | {r['train iter ms']:.2f} | {r['ratio step ms']:.2f} | {int(r['ratio step bytes']):,} "
                     f"| {r['gmp quiet step ms']:.2f} | {int(r['gmp quiet step bytes']):,} | "
                     f"{r['armed forward ms']:.2f} | {int(r['armed forward bytes']):,} |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> Dict[str, Dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, choices=["mlp", "resnet18", "resnet50", "mobilenet_v1"])
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--device", default=None, help="paddle.set_device() argument, e.g. gpu:0 (default: Paddle's)")
    ap.add_argument("--quick", action="store_true", help="small MLP, few repetitions (seconds)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    print(kernels.not_in_use() or "C kernels: in use")  # the core's speed depends on them
    args.model = args.model or ("mlp" if args.quick else "resnet18")
    args.batch = args.batch or (8 if args.quick else 16)
    args.reps = args.reps or (5 if args.quick else 15)
    if args.device:
        paddle.set_device(args.device)
    previous = os.environ.get("PADDLESLIM_ENGINE")
    try:
        results = measure(args.model, args.batch, args.reps)
    finally:
        if previous is None:
            os.environ.pop("PADDLESLIM_ENGINE", None)
        else:
            os.environ["PADDLESLIM_ENGINE"] = previous
    print(report(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": paddle.get_device(), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
