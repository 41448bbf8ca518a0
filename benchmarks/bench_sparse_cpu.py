"""Sparse CPU inference benchmark: the ``sparse-cpu`` export against the best dense Paddle Inference, same run.

Run from the repository root (one thread, as the machine sets it)::

    python benchmarks/bench_sparse_cpu.py                 # MLP 80-98%, batches 1-64, Transformer, MobileNetV1,
                                                          # thread scaling
    python benchmarks/bench_sparse_cpu.py --quick         # a smaller MLP, two batches (CI smoke run)
    python benchmarks/bench_sparse_cpu.py --json out.json # also write the raw numbers

Every case saves a dense and a sparse Paddle inference model of the same pruned network and times them through
``paddle.inference`` predictors in paired rounds: each round runs dense with oneDNN on, dense with oneDNN off and
sparse (``paddleslim_tools.runtime.create_predictor``, oneDNN on for the dense ops left), in that order, and takes
the median of several calls of each; "dense" is the faster of the two dense configurations in that round. The
speed-up is the median over rounds of dense / sparse, with the range over rounds. Outputs are checked against the
dense model in every case (max relative error printed).

"stream" rows: bytes of nonzero values + indices the sparse kernel reads per call at batch 1 divided by its time,
against the dense rate (dense weight bytes / best dense time) of the same MLP in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore", message=".*ccache.*")
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from paddleslim_tools.runtime import create_predictor, load_library  # noqa: E402
from paddleslim_tools.runtime.convert import convert_layers, layer_candidates  # noqa: E402
from paddleslim_tools.runtime.predictor import predictor_runner  # noqa: E402
from paddleslim_tools.runtime.timing import median_seconds  # noqa: E402


def prune_(model: paddle.nn.Layer, ratio: float, kinds=("linear",), seed: int = 0) -> None:
    """Zero the smallest |w| of each candidate layer's weight (uniform per layer; values do not matter for speed)."""
    rng = np.random.default_rng(seed)
    with paddle.no_grad():
        for c in layer_candidates(model):
            if c.kind not in kinds:
                continue
            w = c.layer.weight.numpy()
            k = int(round(ratio * w.size))
            flat = np.abs(w).ravel() + rng.random(w.size).astype(np.float32) * 1e-12
            cut = np.partition(flat, k - 1)[k - 1] if k else -1.0
            c.layer.weight.set_value(np.where(flat.reshape(w.shape) <= cut, 0.0, w).astype(np.float32))


def save_pair(model, spec, names, d):
    model.eval()
    dense = os.path.join(d, "dense")
    paddle.jit.save(model, dense, spec)
    sparse = os.path.join(d, "sparse")
    with convert_layers(model, names):
        paddle.jit.save(model, sparse, spec)
    return dense, sparse


def _pred(prefix, mkldnn, sparse):
    if sparse:
        return create_predictor(prefix + ".json", prefix + ".pdiparams", threads=1)
    import paddle.inference as pi

    cfg = pi.Config(prefix + ".json", prefix + ".pdiparams")
    cfg.disable_gpu()
    cfg.set_cpu_math_library_num_threads(1)
    cfg.enable_mkldnn() if mkldnn else cfg.disable_mkldnn()
    cfg.disable_glog_info()
    return pi.create_predictor(cfg)


def _runner(pred, x):
    run = predictor_runner(pred, {"x": x})
    return lambda: run()[0]


def _time(fn):
    return median_seconds(fn, min_seconds=0.05, max_calls=200)


def compare(dense, sparse, x, rounds):
    runs = {"on": _runner(_pred(dense, True, False), x), "off": _runner(_pred(dense, False, False), x),
            "sparse": _runner(_pred(sparse, True, True), x)}
    ref = runs["on"]()
    err = float(np.abs(runs["sparse"]() - ref).max() / max(np.abs(ref).max(), 1e-30))
    ratios, times = [], {k: [] for k in runs}
    for _ in range(rounds):
        t = {k: _time(f) for k, f in runs.items()}
        for k, v in t.items():
            times[k].append(v)
        ratios.append(min(t["on"], t["off"]) / t["sparse"])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"speedup": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios), "dense_ms":
            min(med["on"], med["off"]) * 1e3, "dense_on_ms": med["on"] * 1e3, "dense_off_ms": med["off"] * 1e3,
            "sparse_ms": med["sparse"] * 1e3, "max_rel_err": err}


def mlp(width, depth=4):
    return paddle.nn.Sequential(*[m for _ in range(depth) for m in (paddle.nn.Linear(width, width), paddle.nn.ReLU())])


def bench_mlp(width, sparsities, batches, rounds, rows):
    spec = [paddle.static.InputSpec([None, width], "float32", "x")]
    for s in sparsities:
        paddle.seed(0)
        model = mlp(width)
        prune_(model, s)
        names = [c.name for c in layer_candidates(model)]
        nnz = sum(int(np.count_nonzero(c.layer.weight.numpy())) for c in layer_candidates(model))
        with tempfile.TemporaryDirectory() as d:
            dense, sparse = save_pair(model, spec, names, d)
            for b in batches:
                x = np.random.default_rng(1).standard_normal((b, width)).astype(np.float32)
                r = compare(dense, sparse, x, rounds)
                r.update(case=f"MLP 4x{width}", sparsity=s, batch=b, nnz=nnz, dense_bytes=4 * width * width * 4)
                rows.append(r)
                _progress(r)


def bench_transformer(rounds, rows, sparsity=0.9):
    paddle.seed(0)
    layer = paddle.nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0)
    model = paddle.nn.TransformerEncoder(layer, 4)
    prune_(model, sparsity)
    names = [c.name for c in layer_candidates(model) if c.kind == "linear"]
    spec = [paddle.static.InputSpec([None, 128, 768], "float32", "x")]
    with tempfile.TemporaryDirectory() as d:
        dense, sparse = save_pair(model, spec, names, d)
        x = np.random.default_rng(1).standard_normal((1, 128, 768)).astype(np.float32)
        r = compare(dense, sparse, x, rounds)
        r.update(case="TransformerEncoder 4x(768, ff 3072), seq 128", sparsity=sparsity, batch=1)
        rows.append(r)
        _progress(r)


def bench_mobilenet(rounds, rows, sparsity=0.9):
    from paddle.vision.models import mobilenet_v1

    paddle.seed(0)
    model = mobilenet_v1(num_classes=1000)
    prune_(model, sparsity, kinds=("conv1x1",))
    names = [c.name for c in layer_candidates(model) if c.kind == "conv1x1"]
    spec = [paddle.static.InputSpec([None, 3, 224, 224], "float32", "x")]
    with tempfile.TemporaryDirectory() as d:
        dense, sparse = save_pair(model, spec, names, d)
        x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
        r = compare(dense, sparse, x, rounds)
        r.update(case="MobileNetV1 224, 1x1 convs", sparsity=sparsity, batch=1)
        rows.append(r)
        _progress(r)


def bench_threads(rounds, rows, width=4096, sparsity=0.9):
    """The sparse MLP with create_predictor(threads=1) against threads=2, paired, and against dense at 2 threads."""
    paddle.seed(0)
    model = mlp(width)
    prune_(model, sparsity)
    names = [c.name for c in layer_candidates(model)]
    spec = [paddle.static.InputSpec([None, width], "float32", "x")]
    with tempfile.TemporaryDirectory() as d:
        dense, sparse = save_pair(model, spec, names, d)
        for b in (1, 16, 64):
            x = np.random.default_rng(1).standard_normal((b, width)).astype(np.float32)
            one = _runner(create_predictor(sparse + ".json", sparse + ".pdiparams", threads=1), x)
            two = _runner(create_predictor(sparse + ".json", sparse + ".pdiparams", threads=2), x)
            dense2 = _runner(create_predictor(dense + ".json", dense + ".pdiparams", threads=2), x)
            ratios, t1, t2, td = [], [], [], []
            for _ in range(rounds):
                a, c, e = _time(one), _time(two), _time(dense2)
                t1.append(a)
                t2.append(c)
                td.append(e)
                ratios.append(a / c)
            r = {"case": f"threads MLP 4x{width}", "sparsity": sparsity, "batch": b,
                 "one_ms": statistics.median(t1) * 1e3, "two_ms": statistics.median(t2) * 1e3,
                 "dense_two_ms": statistics.median(td) * 1e3, "speedup": statistics.median(ratios),
                 "lo": min(ratios), "hi": max(ratios)}
            rows.append(r)
            print(f"  threads b={b}: 1 thread {r['one_ms']:.3f} ms, 2 threads {r['two_ms']:.3f} ms "
                  f"({r['speedup']:.2f}x [{r['lo']:.2f}-{r['hi']:.2f}]), dense 2 threads {r['dense_two_ms']:.3f} ms",
                  file=sys.stderr)


def _progress(r):
    print(f"  {r['case']} s={r['sparsity']} b={r['batch']}: {r['speedup']:.2f}x "
          f"[{r['lo']:.2f}-{r['hi']:.2f}] dense {r['dense_ms']:.3f} ms sparse {r['sparse_ms']:.3f} ms "
          f"err {r['max_rel_err']:.1e}", file=sys.stderr)


def table(rows):
    threads = [r for r in rows if r["case"].startswith("threads")]
    rows = [r for r in rows if not r["case"].startswith("threads")]
    lines = ["| case | zeros | batch | dense ms (oneDNN on / off) | sparse ms | speed-up (range) | max rel err |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['sparsity']:.0%} | {r['batch']} | {r['dense_on_ms']:.3f} / "
                     f"{r['dense_off_ms']:.3f} | {r['sparse_ms']:.3f} | **{r['speedup']:.2f}x** "
                     f"({r['lo']:.2f}-{r['hi']:.2f}) | {r['max_rel_err']:.1e} |")
    stream = [r for r in rows if r.get("nnz") and r["batch"] == 1]
    if stream:
        lines += ["", "| MLP zeros | dense rate GB/s (weights / best dense time) | sparse kernel GB/s (values + "
                  "indices / time) | share |", "|---|---|---|---|"]
        for r in stream:
            dense_rate = r["dense_bytes"] / (r["dense_ms"] * 1e-3) / 1e9
            sparse_rate = r["nnz"] * 6 / (r["sparse_ms"] * 1e-3) / 1e9
            lines.append(f"| {r['sparsity']:.0%} | {dense_rate:.1f} | {sparse_rate:.1f} | "
                         f"{sparse_rate / dense_rate:.0%} |")
    if threads:
        lines += ["", "| sparse MLP, 90% zeros | batch | 1 thread ms | 2 threads ms | 2 vs 1 (range) | dense, 2 threads ms |",
                  "|---|---|---|---|---|---|"]
        for r in threads:
            lines.append(f"| {r['case'][8:]} | {r['batch']} | {r['one_ms']:.3f} | {r['two_ms']:.3f} | "
                         f"{r['speedup']:.2f}x ({r['lo']:.2f}-{r['hi']:.2f}) | {r['dense_two_ms']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 1024-wide MLP at 90%%, batches 1 and 16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--only", choices=["mlp", "transformer", "mobilenet", "threads"], action="append")
    args = ap.parse_args(argv)
    paddle.set_device("cpu")
    lib = load_library()
    print(f"sparse kernels: {lib.isa} ({lib.origin}); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
          file=sys.stderr)
    rows = []
    if args.quick:
        bench_mlp(1024, [0.9], [1, 16], max(3, args.rounds // 2), rows)
    else:
        only = set(args.only or ["mlp", "transformer", "mobilenet", "threads"])
        if "mlp" in only:
            bench_mlp(4096, [0.8, 0.9, 0.95, 0.98], [1, 4, 16, 64], args.rounds, rows)
        if "transformer" in only:
            bench_transformer(args.rounds, rows)
        if "mobilenet" in only:
            bench_mobilenet(args.rounds, rows)
        if "threads" in only:
            bench_threads(args.rounds, rows)
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"isa": lib.isa, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
