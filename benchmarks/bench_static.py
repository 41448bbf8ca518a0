"""Static-graph benchmarks: the cost of the mask pass in training, and static vs dygraph step().

    python benchmarks/bench_static.py            # full run (a few minutes on 1 thread)
    python benchmarks/bench_static.py --quick    # smoke run

(a) per-iteration time of a MobileNetV1 static training step (batch 8, Momentum) with the mask pass vs
    the same program without it (target: overhead <= 2%). Both programs run in the same process, one
    iteration each in turn, so drift hits both; reported as median(with) / median(without) and as the
    median of the ratios of adjacent (with, without) pairs.
(b) ratio-mode ``step()`` on 25 x Linear(2000, 2000) (100M weights) in static mode vs the dygraph
    pruner's ``step()`` on the same network (target: within 1.5x).
Prints a markdown table; medians over ``--reps`` repetitions.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np
import paddle

import paddleslim_dygraph as dy
import paddleslim_static as st
from paddleslim_static.core import kernels


@contextlib.contextmanager
def _static():
    paddle.enable_static()
    try:
        yield
    finally:
        paddle.disable_static()


def _mobilenet_program(size: int, seed: int):
    main, startup = paddle.static.Program(), paddle.static.Program()
    main.random_seed = startup.random_seed = seed
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        x = paddle.static.data("x", [None, 3, size, size], "float32")
        y = paddle.static.data("y", [None, 1], "int64")
        out = paddle.vision.models.mobilenet_v1(num_classes=100)(x)
        loss = paddle.nn.functional.cross_entropy(out, y)
        paddle.optimizer.Momentum(0.01, momentum=0.9).minimize(loss)
    return main, startup, loss


def bench_pass(size: int, reps: int, iters: int, batch: int = 8):
    """(median s/iter without pass, with pass, number of masked parameters)."""
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((batch, 3, size, size)).astype(np.float32),
            "y": rng.integers(0, 100, (batch, 1)).astype(np.int64)}
    with _static():
        exe = paddle.static.Executor(paddle.CPUPlace())
        runs = {}
        for name in ("pass", "baseline"):
            main, startup, loss = _mobilenet_program(size, 1)
            scope = paddle.static.Scope()
            with paddle.static.scope_guard(scope):
                exe.run(startup)
                if name == "pass":
                    pruner = st.UnstructuredPruner(main, "ratio", ratio=0.5, scope=scope, startup_program=startup)
                    pruner.step()
                else:  # same (sparse) starting weights, so only the mask ops differ
                    for p in main.global_block().all_parameters():
                        scope.find_var(p.name).get_tensor().set(
                            np.array(runs["pass"][1].find_var(p.name).get_tensor()), paddle.CPUPlace())
                for _ in range(2):  # warm-up: build the interpreter
                    exe.run(main, feed=feed, fetch_list=[loss])
            runs[name] = (main, scope, loss)
        times = {n: [] for n in runs}
        pair_ratios = []
        for rep in range(reps * iters):  # one iteration of each, adjacent in time, alternating who goes first
            order = list(runs.items()) if rep % 2 else list(runs.items())[::-1]
            this = {}
            for name, (main, scope, loss) in order:
                with paddle.static.scope_guard(scope):
                    t = time.perf_counter()
                    exe.run(main, feed=feed, fetch_list=[loss])
                    this[name] = time.perf_counter() - t
                    times[name].append(this[name])
            pair_ratios.append(this["pass"] / this["baseline"])
        main = runs["pass"][0]
        masked = st.masked_params(main)
        ops_only = _mask_ops_program(main, masked)
        with paddle.static.scope_guard(runs["pass"][1]):
            exe.run(ops_only)
            ops_times = []
            for _ in range(reps):
                t = time.perf_counter()
                for _ in range(iters):
                    exe.run(ops_only)
                ops_times.append((time.perf_counter() - t) / iters)
    return (statistics.median(times["baseline"]), statistics.median(times["pass"]), len(masked),
            statistics.median(ops_times), statistics.median(pair_ratios), len(pair_ratios))


def _mask_ops_program(main, masked):
    """A program holding only the pass's mask ops (same variables), to time them without noise."""
    shapes = {p.name: list(p.shape) for p in main.global_block().all_parameters()}
    prog, throwaway = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(prog, throwaway):
        init = paddle.nn.initializer.Constant(0.0)
        for n in sorted(masked):
            p = paddle.pir.core.create_persistable_value("float32", shapes[n], name=n, initializer=init)
            m = paddle.pir.core.create_persistable_value("bool", shapes[n], name=st.mask_var_name(n),
                                                         initializer=init)
            paddle._C_ops.multiply_(p, paddle.cast(m, p.dtype))
    return prog


def _big_layers(n_layers: int, width: int):
    return paddle.nn.Sequential(*[paddle.nn.Linear(width, width) for _ in range(n_layers)])


def bench_step(n_layers: int, width: int, reps: int):
    """(median dygraph step() s, median static step() s, number of weights)."""
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        model = _big_layers(n_layers, width)
    dpruner = dy.UnstructuredPruner(model, "ratio", ratio=0.5)
    with _static():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            x = paddle.static.data("x", [None, width], "float32")
            _big_layers(n_layers, width)(x)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            paddle.static.Executor(paddle.CPUPlace()).run(startup)
    for p in model.parameters():  # same weights in both modes
        scope.find_var(p.name).get_tensor().set(p.numpy(), paddle.CPUPlace())
    spruner = st.UnstructuredPruner(main, "ratio", ratio=0.5, scope=scope, startup_program=startup)
    n = sum(int(np.prod(p.shape)) for p in model.parameters() if len(p.shape) == 2)
    times = {"dygraph": [], "static": []}
    for _ in range(reps):
        for name, pr in (("dygraph", dpruner), ("static", spruner)):
            t = time.perf_counter()
            pr.step()
            times[name].append(time.perf_counter() - t)
    if np.float32(dpruner.threshold) != np.float32(spruner.threshold):
        raise RuntimeError(f"modes disagree: {dpruner.threshold} != {spruner.threshold}")
    return statistics.median(times["dygraph"]), statistics.median(times["static"]), n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few reps (smoke run)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (>= 5 unless --quick)")
    ap.add_argument("--size", type=int, default=None, help="MobileNetV1 input size (default 224)")
    args = ap.parse_args(argv)
    reps = args.reps or (2 if args.quick else 7)
    size = args.size or (32 if args.quick else 224)
    iters = 2 if args.quick else 5
    layers, width = (3, 500) if args.quick else (25, 2000)

    base, with_pass, n_masked, ops_only, paired, n_pairs = bench_pass(size, reps, iters)
    dyt, stt, n = bench_step(layers, width, reps)
    print(kernels.not_in_use() or "C kernels: in use")  # the core's speed depends on them
    print(f"paddle {paddle.__version__}, numpy {np.__version__}, {reps} reps, medians\n")
    print("| benchmark | baseline | measured | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| (a) MobileNetV1 {size}x{size} batch 8 static train step, {n_masked} masked params: "
          f"without pass vs with pass | {base * 1e3:.1f} ms | {with_pass * 1e3:.1f} ms | "
          f"{with_pass / base:.3f} | <= 1.02 |")
    print(f"| (a, paired) median over {n_pairs} adjacent (with, without) iteration pairs of with / without | "
          f"- | - | {paired:.3f} | <= 1.02 |")
    print(f"| (a') the same {n_masked} mask ops alone (cast + multiply_) vs the baseline step | "
          f"{base * 1e3:.1f} ms | {ops_only * 1e3:.1f} ms | {1 + ops_only / base:.3f} | <= 1.02 |")
    print(f"| (b) ratio step() on {layers} x Linear({width}, {width}) ({n / 1e6:.0f}M weights): "
          f"dygraph vs static | {dyt * 1e3:.0f} ms | {stt * 1e3:.0f} ms | {stt / dyt:.3f} | <= 1.5 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
