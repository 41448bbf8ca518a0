"""Export benchmark: compressed-ONNX size vs sparsity, export time, verification overhead. Prints markdown.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_export.py           # ResNet50 (224x224) and MobileNetV1
    OMP_NUM_THREADS=1 python benchmarks/bench_export.py --quick   # MobileNetV1 x0.25 at 32x32, one run

Models are randomly initialised and pruned globally with ``paddleslim_dygraph.UnstructuredPruner`` (ratio
mode, default parameter selection: BatchNorm and biases are not pruned). File sizes do not depend on the
weights' values, only on the zero pattern; the input size only matters for the timing rows.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message=".*ccache.*")
os.environ.setdefault("GLOG_minloglevel", "2")

import logging  # noqa: E402

import paddle  # noqa: E402

from paddleslim_dygraph import UnstructuredPruner  # noqa: E402
from paddleslim_tools.export import export_layer  # noqa: E402

for _name in ("paddleslim_static", "paddleslim_dygraph", "paddleslim_tools"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def build(name: str):
    from paddle.vision.models import mobilenet_v1, resnet50

    if name == "resnet50":
        return resnet50(num_classes=1000), 224
    if name == "mobilenet_v1":
        return mobilenet_v1(num_classes=1000), 224
    if name == "mobilenet_v1_x0.25":
        return mobilenet_v1(scale=0.25, num_classes=10), 32
    raise ValueError(name)


def spec(size: int):
    return [paddle.static.InputSpec([1, 3, size, size], "float32", "x")]


def size_rows(model_name: str, ratios, verify: bool):
    rows = []
    for ratio in ratios:
        paddle.seed(0)
        model, size = build(model_name)
        UnstructuredPruner(model, "ratio", ratio=ratio).step()
        with tempfile.TemporaryDirectory() as d:
            rep = export_layer(model, spec(size), os.path.join(d, "out"), verify=verify)
            if verify and not rep.ok:
                raise SystemExit(f"verification failed: {rep.failures[:3]}")
            fs = rep.file_sizes
            stored = sum(r.stored_sparse for r in rep.rows)
            rows.append((model_name, ratio, rep.total_density, fs["onnx"], fs["onnx_sparse"],
                         fs["onnx_sparse"] / fs["onnx"], f"{stored}/{len(rep.rows)}"))
        del model
    return rows


def timing_rows(model_name: str, ratio: float, runs: int):
    paddle.seed(0)
    model, size = build(model_name)
    UnstructuredPruner(model, "ratio", ratio=ratio).step()
    totals, verify_t, convert_t, compress_t = [], [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            rep = export_layer(model, spec(size), os.path.join(d, "out"), verify=True)
            totals.append(time.perf_counter() - t)
            assert rep.ok, rep.failures
            verify_t.append(rep.timings["verify"])
            convert_t.append(rep.timings["onnx_convert"])
            compress_t.append(rep.timings["compress"])
    med = statistics.median
    return [(model_name, size, ratio, runs, med(totals), med(totals) - med(verify_t), med(convert_t),
             med(compress_t), med(verify_t), med(verify_t) / (med(totals) - med(verify_t)))]


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MobileNetV1 x0.25 at 32x32, one run")
    p.add_argument("--runs", type=int, default=3, help="timing runs (median)")
    args = p.parse_args(argv)
    ratios = (0.5, 0.75, 0.9, 0.95)
    size_models = ["mobilenet_v1_x0.25"] if args.quick else ["resnet50", "mobilenet_v1"]
    time_model = "mobilenet_v1_x0.25" if args.quick else "resnet50"
    runs = 1 if args.quick else args.runs

    print(f"paddle {paddle.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"python {sys.version.split()[0]}\n")
    print("### Compressed ONNX size (sparse weights as `sparse_initializer`, INT64 indices)\n")
    print("| model | global ratio | total density | plain ONNX | compressed ONNX | compressed / plain "
          "| weights stored sparse |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in size_models:
        for row in size_rows(m, ratios, verify=False):
            name, ratio, dens, a, b, r, stored = row
            print(f"| {name} | {ratio:.2f} | {dens:.3f} | {mib(a)} | {mib(b)} | **{r:.3f}x** | {stored} |")
    print("\n### Export time and verification overhead (median of runs)\n")
    print("| model | input | ratio | runs | total export | without verification | paddle2onnx | compress "
          "| verification | verification / rest |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in timing_rows(time_model, 0.9, runs):
        name, size, ratio, n, tot, rest, conv, comp, ver, frac = row
        print(f"| {name} | {size}x{size} | {ratio:.2f} | {n} | {tot:.2f} s | {rest:.2f} s | {conv:.2f} s "
              f"| {comp:.2f} s | {ver:.2f} s | {frac:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
