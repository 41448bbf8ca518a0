"""The ``sparse-cpu`` target: a second Paddle inference model, ``sparse-cpu/NAME.json``, whose pruned layers run
through the sparse CPU operators of :mod:`paddleslim_tools.runtime`, written only when it is faster.

1. :func:`save_sparse_layer` measures every candidate layer dense and sparse (eager) on the input it receives at
   the export shape (dynamic dimensions: 1) and picks those at least ``MIN_LAYER_SPEEDUP`` faster. Eager timing is
   only a first filter (eager runs dense convolutions much slower than Paddle Inference with oneDNN), so the model
   with those layers converted is then timed end to end against the dense model through Paddle Inference, in paired
   rounds against the faster dense configuration (oneDNN on or off). When it is not faster, the same is tried with
   only the converted ``Linear`` layers, then only the 1x1 convolutions; when nothing is faster, no file is written
   and the report says why in one sentence.
2. :func:`check_sparse_model` (in :func:`.pipeline.finish`, when verifying) compares the sparse predictor's outputs
   with the dense one's on random inputs.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import paddle

from paddleslim_tools.runtime.timing import median_seconds

from ..errors import ExportError
from .layout import sparse_cpu_prefix

__all__ = ["MIN_LAYER_SPEEDUP", "SparseCpuResult", "require_kernels", "skipped", "kernels_or_skip", "save_sparse_layer",
           "save_sparse_program", "check_sparse_model"]

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
    """When sparse-cpu is the only target the export cannot proceed (ExportError); combined with other targets
    (``'onnx,sparse-cpu'``, ``'all'``) the sparse model is skipped and the report says why."""
    from .specs import parse_targets

    if parse_targets(target) == {"sparse-cpu"}:
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
                      feeds: Dict[str, np.ndarray], tmp: str, name: str, dense_prefix: str) -> SparseCpuResult:
    """Measure, convert the layers that gain, check the whole model is faster than ``dense_prefix`` (the saved dense
    model) and keep ``tmp/sparse-cpu/NAME`` only then. ``layer`` is in eval mode with the masks folded in."""
    from paddleslim_tools.runtime.convert import convert_layers, plan_conversion

    isa = require_kernels()
    plans = plan_conversion(layer, [paddle.to_tensor(v) for v in feeds.values()], min_speedup=MIN_LAYER_SPEEDUP)
    prefix = sparse_cpu_prefix(tmp, name)

    def write(names: List[str]) -> None:
        with convert_layers(layer, names):
            paddle.jit.save(layer, prefix, input_spec=list(specs))
    return _keep_if_faster(SparseCpuResult(plans, [list(v.shape) for v in feeds.values()], isa), write, prefix,
                           dense_prefix, feeds)


def save_sparse_program(tmp: str, name: str, feeds: Dict[str, np.ndarray], dense_prefix: str) -> SparseCpuResult:
    """The same for a saved PIR inference model (``dense_prefix``): its matmuls with weight parameters are the
    candidates (see :mod:`paddleslim_tools.runtime.programs`)."""
    from paddleslim_tools.runtime import programs

    isa = require_kernels()
    plans = programs.plan_program(dense_prefix, min_speedup=MIN_LAYER_SPEEDUP)
    prefix = sparse_cpu_prefix(tmp, name)
    return _keep_if_faster(SparseCpuResult(plans, [list(v.shape) for v in feeds.values()], isa),
                           lambda names: programs.save_sparse_program(dense_prefix, names, prefix), prefix,
                           dense_prefix, feeds)


def _keep_if_faster(result: SparseCpuResult, write: Callable[[List[str]], None], prefix: str, dense_prefix: str,
                    feeds: Dict[str, np.ndarray]) -> SparseCpuResult:
    """Write the model with the layers measured faster converted (then only the Linear ones, then only the
    convolutions) until one is faster end to end than the dense model; the verdict either way."""
    plans = result.layers
    chosen = [p for p in plans if p.converted]
    if not plans:
        result.verdict = "no sparse-cpu model: the network has no Linear or 1x1 Conv2D layer the sparse kernels run"
        return result
    if not chosen:
        best = max((p.speedup or 0.0 for p in plans), default=0.0)
        result.verdict = ("no sparse-cpu model: no layer runs faster sparse at this input shape "
                          f"(best measured {best:.2f}x; layers are converted from {MIN_LAYER_SPEEDUP:.2f}x)")
        return result
    subsets: List[List[Any]] = []
    for subset in (chosen, [p for p in chosen if p.kind == "linear"], [p for p in chosen if p.kind == "conv1x1"]):
        if subset and [p.name for p in subset] not in [[p.name for p in t] for t in subsets]:
            subsets.append(subset)
    tried: List[str] = []
    kept: set = set()
    for subset in subsets:
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        try:
            write([p.name for p in subset])
        except Exception as e:
            from ..errors import one_line

            raise ExportError(f"saving the sparse-cpu model failed: {one_line(e)}") from None
        result.model_file, result.params_file = prefix + ".json", prefix + ".pdiparams"
        _time_end_to_end(result, dense_prefix, feeds)
        if result.speedup >= 1.0:
            kept = {p.name for p in subset}
            break
        tried.append(f"{len(subset)} layers converted: {result.speedup:.2f}x")
        shutil.rmtree(os.path.dirname(result.model_file), ignore_errors=True)
        result.model_file = result.params_file = None
    for p in plans:
        if p.converted and p.name not in kept:
            p.converted = False
            p.reason = f"measured {p.speedup:.2f}x alone, but the model was not faster end to end with it"
    if result.model_file is None:
        small = (f"; the dense model runs in {result.dense_ms:.3f} ms, so the operators' fixed cost outweighs the "
                 "multiply-adds saved: its layers are too small to gain" if result.dense_ms < 1.0 else "")
        result.verdict = ("no sparse-cpu model: the layers that were faster alone did not make the model faster "
                          f"end to end ({'; '.join(tried)} of the dense model{small}), so only the dense model was kept")
    else:
        result.verdict = (f"sparse-cpu model {result.speedup:.2f}x faster than the best dense Paddle Inference "
                          f"({result.dense_ms:.3f} -> {result.sparse_ms:.3f} ms, {len(kept)} layers converted, "
                          f"{result.isa} kernels, one thread, input {result.input_shapes})")
    return result


def _time_end_to_end(result: SparseCpuResult, dense_prefix: str, feeds: Dict[str, np.ndarray]) -> None:
    """Median over paired rounds of (faster dense configuration / sparse), one thread, at the export's inputs."""
    from paddleslim_tools.runtime import create_predictor
    from paddleslim_tools.runtime.predictor import predictor_runner

    from ..loading import model_files

    dense_model, dense_params, _ = model_files(dense_prefix)
    dense_on = predictor_runner(create_predictor(dense_model, dense_params, mkldnn=True), feeds)
    dense_off = predictor_runner(create_predictor(dense_model, dense_params, mkldnn=False), feeds)
    sparse = predictor_runner(create_predictor(result.model_file, result.params_file), feeds)
    ratios, dense_t, sparse_t = [], [], []
    for _ in range(_ROUNDS):
        d = min(median_seconds(dense_on), median_seconds(dense_off))
        t = median_seconds(sparse)
        dense_t.append(d)
        sparse_t.append(t)
        ratios.append(d / t)
    result.speedup = statistics.median(ratios)
    result.dense_ms, result.sparse_ms = statistics.median(dense_t) * 1e3, statistics.median(sparse_t) * 1e3


def check_sparse_model(result: SparseCpuResult, dense_model: str, dense_params: str, feeds: Dict[str, np.ndarray],
                       rtol: float) -> List[Any]:
    """The sparse predictor's outputs against the dense predictor's on ``feeds``."""
    from paddleslim_tools.runtime import create_predictor
    from paddleslim_tools.runtime.predictor import predictor_runner

    from .verify import compare_outputs

    dense = predictor_runner(create_predictor(dense_model, dense_params), feeds)
    sparse_pred = create_predictor(result.model_file, result.params_file)
    return compare_outputs(sparse_pred.get_output_names(), dense(), predictor_runner(sparse_pred, feeds)(),
                           rtol=rtol, what="sparse-cpu vs paddle")
