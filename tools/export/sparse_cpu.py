"""The ``sparse-cpu`` target: a second Paddle inference model, ``sparse-cpu/NAME.json``, whose pruned layers run
through the sparse CPU operators of :mod:`paddleslim_tools.runtime`, written only when it is faster.

1. :func:`save_sparse_layer` measures every candidate layer dense and sparse on the input it receives at the export
   shape (dynamic dimensions: 1) and converts those at least ``MIN_LAYER_SPEEDUP`` faster; nothing converted, no file.
2. :func:`check_sparse_model` (in :func:`.pipeline.finish`) compares the sparse predictor with the dense one: outputs
   on random inputs (when verifying), and speed end to end in paired rounds against the faster dense configuration
   (oneDNN on or off). A sparse model that is not faster is removed again, and the report says so in one sentence.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import paddle

from .errors import ExportError
from .layout import sparse_cpu_prefix

__all__ = ["MIN_LAYER_SPEEDUP", "SparseCpuResult", "require_kernels", "skipped", "kernels_or_skip", "save_sparse_layer",
           "check_sparse_model"]

MIN_LAYER_SPEEDUP = 1.1  # a layer is converted when sparse is at least this much faster (median of paired rounds)
_ROUNDS = 5


@dataclasses.dataclass
class SparseCpuResult:
    """What the target did: per-layer verdicts, and the written model (None when nothing was worth converting)."""

    layers: List[Any]  # paddleslim_tools.runtime.convert.LayerPlan
    input_shapes: List[List[int]]
    isa: str
    model_file: Optional[str] = None
    params_file: Optional[str] = None
    verdict: str = ""
    speedup: Optional[float] = None  # end to end, dense / sparse
    dense_ms: Optional[float] = None
    sparse_ms: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"isa": self.isa, "input_shapes": self.input_shapes, "verdict": self.verdict,
                "speedup": self.speedup, "dense_ms": self.dense_ms, "sparse_ms": self.sparse_ms,
                "written": self.model_file is not None, "layers": [p.to_dict() for p in self.layers],
                "scope": "x86 CPU of the export machine, Paddle Inference, one thread, the export's input shape"}


def require_kernels() -> str:
    """The instruction set of the loaded kernels; ExportError saying why when they are unavailable."""
    from paddleslim_tools.runtime import KernelsUnavailable, load_library

    try:
        return load_library().isa
    except KernelsUnavailable as exc:
        raise ExportError(f"--target sparse-cpu: {exc}") from None


def skipped(target: str, why: str) -> Optional[SparseCpuResult]:
    """With ``target='sparse-cpu'`` the export cannot proceed (ExportError); with ``'all'`` the sparse model is
    skipped and the report says why."""
    if target == "sparse-cpu":
        raise ExportError(why)
    return SparseCpuResult([], [], "", verdict=f"sparse-cpu skipped: {why}")


def kernels_or_skip(target: str) -> Optional[SparseCpuResult]:
    """None when the kernels are loaded, else what :func:`skipped` gives."""
    try:
        require_kernels()
    except ExportError as exc:
        return skipped(target, str(exc).replace("--target sparse-cpu: ", ""))
    return None


def save_sparse_layer(layer: paddle.nn.Layer, specs: Sequence[paddle.static.InputSpec],
                      feeds: Dict[str, np.ndarray], tmp: str, name: str) -> SparseCpuResult:
    """Measure, convert the layers that gain, and save ``tmp/sparse-cpu/NAME`` (``layer`` in eval mode, folded)."""
    from paddleslim_tools.runtime.convert import convert_layers, plan_conversion

    isa = require_kernels()
    inputs = [paddle.to_tensor(v) for v in feeds.values()]
    plans = plan_conversion(layer, inputs, min_speedup=MIN_LAYER_SPEEDUP)
    result = SparseCpuResult(plans, [list(v.shape) for v in feeds.values()], isa)
    chosen = [p.name for p in plans if p.converted]
    if not plans:
        result.verdict = "no sparse-cpu model: the network has no Linear or 1x1 Conv2D layer the sparse kernels run"
        return result
    if not chosen:
        best = max((p.speedup or 0.0 for p in plans), default=0.0)
        result.verdict = ("no sparse-cpu model: no layer runs faster sparse at this input shape "
                          f"(best measured {best:.2f}x; layers are converted from {MIN_LAYER_SPEEDUP:.2f}x)")
        return result
    prefix = sparse_cpu_prefix(tmp, name)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    try:
        with convert_layers(layer, chosen):
            paddle.jit.save(layer, prefix, input_spec=list(specs))
    except Exception as e:
        from .errors import one_line

        raise ExportError(f"saving the sparse-cpu model failed: {one_line(e)}") from None
    result.model_file, result.params_file = prefix + ".json", prefix + ".pdiparams"
    return result


def _runner(predictor: Any, feeds: Dict[str, np.ndarray]) -> Callable[[], List[np.ndarray]]:
    names = predictor.get_input_names()
    handles = [predictor.get_input_handle(n) for n in names]
    outs = [predictor.get_output_handle(n) for n in predictor.get_output_names()]
    values = list(feeds.values())

    def run() -> List[np.ndarray]:
        for h, v in zip(handles, values):
            h.reshape(list(v.shape))
            h.copy_from_cpu(v)
        predictor.run()
        return [o.copy_to_cpu() for o in outs]
    return run


def _median_seconds(fn: Callable[[], Any], min_s: float = 0.03) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    n = int(min(200, max(3, min_s / max(time.perf_counter() - t0, 1e-7))))
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def check_sparse_model(result: SparseCpuResult, dense_model: str, dense_params: str, feeds: Dict[str, np.ndarray],
                       verify: bool, rtol: float) -> List[Any]:
    """Output checks (when ``verify``) and the end-to-end timing; removes the sparse model when it is not faster.
    Returns the output checks."""
    from paddleslim_tools.runtime import create_predictor

    from ..verify import compare_outputs

    dense_on = _runner(create_predictor(dense_model, dense_params, mkldnn=True), feeds)
    dense_off = _runner(create_predictor(dense_model, dense_params, mkldnn=False), feeds)
    sparse_pred = create_predictor(result.model_file, result.params_file)
    sparse = _runner(sparse_pred, feeds)
    checks = []
    if verify:
        checks = compare_outputs(sparse_pred.get_output_names(), dense_on(), sparse(), rtol=rtol,
                                 what="sparse-cpu vs paddle")
    ratios, dense_t, sparse_t = [], [], []
    for _ in range(_ROUNDS):
        d = min(_median_seconds(dense_on), _median_seconds(dense_off))
        s = _median_seconds(sparse)
        dense_t.append(d)
        sparse_t.append(s)
        ratios.append(d / s)
    result.speedup = statistics.median(ratios)
    result.dense_ms, result.sparse_ms = statistics.median(dense_t) * 1e3, statistics.median(sparse_t) * 1e3
    n = sum(p.converted for p in result.layers)
    if result.speedup < 1.0:
        shutil.rmtree(os.path.dirname(result.model_file), ignore_errors=True)
        result.model_file = result.params_file = None
        result.verdict = (f"no sparse-cpu model: with {n} layers converted the whole model measured "
                          f"{result.speedup:.2f}x the dense one, so only the dense model was kept")
    else:
        result.verdict = (f"sparse-cpu model {result.speedup:.2f}x faster than the best dense Paddle Inference "
                          f"({result.dense_ms:.3f} -> {result.sparse_ms:.3f} ms, {n} layers converted, "
                          f"{result.isa} kernels, one thread, input {result.input_shapes})")
    return checks
