"""What gets smaller: file sizes of a pruned MobileNetV1 at 50/75/90/95% sparsity, next to the dense model.

    python benchmarks/bench_sizes.py [--model mobilenet_v1|resnet50] [--out sizes.md]

For each sparsity (global ratio pruning of the default prunable weights, one step — the sizes depend on the zero
count, not on training) it writes, in a temporary directory:

* the dygraph checkpoint ``paddle.save(model.state_dict())`` plus ``paddle.save(pruner.state_dict())``;
* the same checkpoint gzip-compressed (what a download costs: zeros compress);
* the export of :mod:`paddleslim_tools.export`: Paddle inference params ``.pdiparams``, ``.onnx``, and the compressed
  ``.sparse.onnx`` (sparse weights as ``sparse_initializer``);

and prints a markdown table of the sizes and their ratio to the dense model's.
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
from typing import Dict

import paddle

from paddleslim_dygraph import UnstructuredPruner
from paddleslim_tools.export import export_layer

SPARSITIES = (0.0, 0.5, 0.75, 0.9, 0.95)


def _gz(path: str) -> int:
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=6))


def measure(build, sparsity: float, work: str) -> Dict[str, int]:
    paddle.seed(0)
    model = build()
    model.eval()
    pruner = UnstructuredPruner(model, "ratio", ratio=sparsity) if sparsity else None
    if pruner is not None:
        pruner.step()
    ckpt = os.path.join(work, "model.pdparams")
    paddle.save(model.state_dict(), ckpt)
    sizes = {"checkpoint": os.path.getsize(ckpt), "checkpoint.gz": _gz(ckpt)}
    if pruner is not None:
        paddle.save(pruner.state_dict(), ckpt + ".pdpruner")
        sizes["checkpoint"] += os.path.getsize(ckpt + ".pdpruner")
    spec = [paddle.static.InputSpec([1, 3, 224, 224], "float32", "image")]
    out = os.path.join(work, f"export_{int(sparsity * 100)}")
    report = export_layer(model, spec, out, name="m", verify=False)
    files = report.files
    sizes.update(pdiparams=os.path.getsize(files["paddle_params"]), onnx=os.path.getsize(files["onnx"]),
                 sparse_onnx=os.path.getsize(files["onnx_sparse"]) if "onnx_sparse" in files else None)
    shutil.rmtree(out)
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("mobilenet_v1", "resnet50"), default="mobilenet_v1")
    args = p.parse_args()
    build = getattr(paddle.vision.models, args.model)
    cols = ("checkpoint", "checkpoint.gz", "pdiparams", "onnx", "sparse_onnx")
    with tempfile.TemporaryDirectory() as work:
        rows = {s: measure(build, s, work) for s in SPARSITIES}
    dense = rows[0.0]
    print(f"{args.model}, 224x224; sizes in MB (ratio to dense)\n")
    print("| sparsity | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for s, r in rows.items():
        cells = ["not written (not smaller)" if r[c] is None else f"{r[c] / 1e6:.2f}"
                 + ("" if s == 0 or dense[c] is None else f" ({r[c] / dense[c]:.2f}x)") for c in cols]
        print(f"| {'dense' if s == 0 else f'{s:.0%}'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
