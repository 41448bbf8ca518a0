"""Cost of the pass's mask ops, bool vs bit-packed, and the size of paddle.static.save output.

    python bench_mask_ops.py [--quick] [--reps 7] [--iters 5]

(a) MobileNetV1 (paddle.vision, 224x224, batch 8, Momentum) static train step: baseline (no pass), bool masks,
    packed masks; one iteration of each in turn (order rotated), medians and paired median ratios vs baseline;
    plus the mask ops alone (programs holding only them) timed against the same baseline.
(b) paddle.static.save sizes (dense / bool masks / packed masks) for LeNet and MobileNetV1, and the pickle
    overhead per saved mask variable (bytes on disk beyond the mask data).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import paddle

from paddleslim_static.core import kernels
from paddleslim_static.mask_pass import apply_mask_pass, mask_var_name


def _program(kind, size, seed=1):
    main, startup = paddle.static.Program(), paddle.static.Program()
    main.random_seed = startup.random_seed = seed
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        if kind == "mobilenet":
            x = paddle.static.data("x", [None, 3, size, size], "float32")
            out = paddle.vision.models.mobilenet_v1(num_classes=100)(x)
        else:
            x = paddle.static.data("x", [None, 1, 28, 28], "float32")
            out = paddle.vision.models.LeNet()(x)
        y = paddle.static.data("y", [None, 1], "int64")
        loss = paddle.nn.functional.cross_entropy(out, y)
        paddle.optimizer.Momentum(0.01, momentum=0.9).minimize(loss)
    return main, startup, loss


def _prunable(main):
    return [p.name for p in main.global_block().all_parameters() if len(p.shape) >= 2]


def _build(kind, size, variant, ref_scope=None):
    main, startup, loss = _program(kind, size)
    names = _prunable(main)
    if variant != "baseline":
        apply_mask_pass(main, startup, names, packed=(variant == "packed"))
    scope = paddle.static.Scope()
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(scope):
        exe.run(startup)
    rng = np.random.default_rng(0)
    for p in main.global_block().all_parameters():
        if ref_scope is not None:
            scope.find_var(p.name).get_tensor().set(np.array(ref_scope.find_var(p.name).get_tensor()),
                                                    paddle.CPUPlace())
    for n in names:
        w = np.array(scope.find_var(n).get_tensor())
        m = rng.random(w.shape) < 0.5
        w = w * m  # same sparse weights in all variants
        scope.find_var(n).get_tensor().set(w.astype(np.float32), paddle.CPUPlace())
        if variant != "baseline":
            value = np.packbits(m.reshape(-1)) if variant == "packed" else m
            scope.find_var(mask_var_name(n)).get_tensor().set(value, paddle.CPUPlace())
    return main, startup, loss, scope, names


def _ops_only(main, names, variant):
    """Only cheap in-place writers (scale_ by 1) of the same variables, then the pass's mask ops (unless
    variant == 'baseline'): the mask ops' cost is the difference to the writers-only program."""
    shapes = {p.name: list(p.shape) for p in main.global_block().all_parameters()}
    prog, start = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(prog, start):
        for n in names:
            p = paddle.create_parameter(shapes[n], "float32", name=n)
            paddle._C_ops.scale_(p, 1.0, 0.0, True)
    if variant != "baseline":
        assert apply_mask_pass(prog, start, names, packed=(variant == "packed")).masked == tuple(names)
    return prog


def bench_step(size, reps, iters):
    exe = paddle.static.Executor(paddle.CPUPlace())
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((8, 3, size, size)).astype(np.float32),
            "y": rng.integers(0, 100, (8, 1)).astype(np.int64)}
    runs = {}
    base = _build("mobilenet", size, "baseline")
    runs["baseline"] = base
    for v in ("bool", "packed"):
        runs[v] = _build("mobilenet", size, v, ref_scope=base[3])
    for v, (main, _, loss, scope, _) in runs.items():
        with paddle.static.scope_guard(scope):
            for _ in range(2):
                exe.run(main, feed=feed, fetch_list=[loss])
    times = {v: [] for v in runs}
    ratios = {"bool": [], "packed": []}
    order = list(runs)
    for rep in range(reps * iters):
        this = {}
        k = rep % len(order)
        for v in order[k:] + order[:k]:
            main, _, loss, scope, _ = runs[v]
            with paddle.static.scope_guard(scope):
                t = time.perf_counter()
                exe.run(main, feed=feed, fetch_list=[loss])
                this[v] = time.perf_counter() - t
            times[v].append(this[v])
        for v in ratios:
            ratios[v].append(this[v] / this["baseline"])
    names = runs["bool"][4]
    progs = {v: _ops_only(runs[v][0], names, v) for v in runs}
    for v, prog in progs.items():
        with paddle.static.scope_guard(runs[v][3]):
            exe.run(prog)
    samples = {v: [] for v in runs}
    for rep in range(reps * iters * 4):
        for v, prog in progs.items():
            with paddle.static.scope_guard(runs[v][3]):
                t = time.perf_counter()
                exe.run(prog)
                samples[v].append(time.perf_counter() - t)
    base_ops = statistics.median(samples["baseline"])
    ops = {v: statistics.median(samples[v]) - base_ops for v in ("bool", "packed")}
    med = {v: statistics.median(t) for v, t in times.items()}
    return med, {v: statistics.median(r) for v, r in ratios.items()}, ops, len(names), len(times["baseline"])


def _dir_size(prefix):
    d = os.path.dirname(prefix)
    return {f: os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)}


def bench_save(kind, size):
    out = {}
    for v in ("baseline", "bool", "packed"):
        main, _, _, scope, names = _build(kind, size, v)
        with tempfile.TemporaryDirectory() as d, paddle.static.scope_guard(scope):
            prefix = os.path.join(d, "ckpt")
            paddle.static.save(main, prefix)
            out[v] = _dir_size(prefix)
        weights = {n: np.array(scope.find_var(n).get_tensor()).nbytes for n in names}
    n_weights_bytes = sum(weights.values())
    n_elems = n_weights_bytes // 4
    return out, n_weights_bytes, n_elems, len(names)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    args = ap.parse_args(argv)
    reps = args.reps or (2 if args.quick else 7)
    iters = args.iters or (2 if args.quick else 5)
    size = args.size or (32 if args.quick else 224)
    paddle.enable_static()
    print(f"paddle {paddle.__version__}, numpy {np.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(kernels.not_in_use() or "C kernels: in use")  # the core's speed depends on them
    med, ratios, ops, n_masked, n = bench_step(size, reps, iters)
    print(f"\n(a) MobileNetV1 {size}x{size} batch 8 Momentum train step, {n_masked} masked params, {n} iterations each")
    print("| variant | median step | median / baseline | paired median ratio | mask ops alone | ops alone / baseline |")
    print("|---|---|---|---|---|---|")
    print(f"| no pass | {med['baseline'] * 1e3:.1f} ms | 1 | - | - | - |")
    for v in ("bool", "packed"):
        print(f"| {v} masks | {med[v] * 1e3:.1f} ms | {med[v] / med['baseline']:.4f} | {ratios[v]:.4f} | "
              f"{ops[v] * 1e3:.2f} ms | {ops[v] / med['baseline'] * 100:.2f}% |")
    print("\n(b) paddle.static.save sizes (bytes); state growth = .pdparams + .pdopt over no masks (the quantity "
          "README and docs/static.md report), the .json grows by the mask ops")
    print("| model | prunable weights | variant | .pdparams | .pdopt | .json | state growth | growth / weight bytes | "
          ".json growth |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("lenet", "mobilenet"):
        sizes, wbytes, nel, nvars = bench_save(kind, size if kind == "mobilenet" else 28)
        ext = {v: {e: sum(n for f, n in s.items() if f.endswith(e)) for e in (".pdparams", ".pdopt", ".json")}
               for v, s in sizes.items()}
        state = {v: e[".pdparams"] + e[".pdopt"] for v, e in ext.items()}
        for v in ("baseline", "bool", "packed"):
            e = ext[v]
            grow = state[v] - state["baseline"]
            cells = ("-", "-", "-") if v == "baseline" else (
                f"+{grow}", f"{grow / wbytes:.4f}", f"+{e['.json'] - ext['baseline']['.json']}")
            print(f"| {kind if v == 'baseline' else ''} | {f'{nel} ({wbytes} B)' if v == 'baseline' else ''} | "
                  f"{'no masks' if v == 'baseline' else v} | {e['.pdparams']} | {e['.pdopt']} | {e['.json']} | "
                  + " | ".join(cells) + " |")
        main, _, _ = _program(kind, size if kind == "mobilenet" else 28)
        pdata = sum((int(np.prod(p.shape)) + 7) // 8 for p in main.global_block().all_parameters()
                    if len(p.shape) >= 2)
        grow = state["packed"] - state["baseline"]
        print(f"  {kind}: packed bits {pdata} B = {pdata / wbytes:.5f} of the weight bytes (1/32 = {1 / 32:.5f}); "
              f"pickle framing {(grow - pdata) / nvars:.0f} B per mask variable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
