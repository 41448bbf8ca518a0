"""When onnxruntime and Paddle disagree: find the first Paddle op whose output the ONNX model does not reproduce.

Every intermediate value of the Paddle inference model is compared with every intermediate tensor of the ONNX
model (by values, so no naming convention is assumed). The culprit is the first op, in program order, whose inputs
were all reproduced but whose output was not; the ONNX nodes reading the reproduced inputs are named with it. Ops
known to convert unfaithfully get a plain hint (adaptive pooling with non-divisible sizes).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import paddle

from paddleslim_static.programs import static_mode

from ..loading import SavedModel

__all__ = ["Divergence", "find_divergence"]

_SKIP_PIR = {"builtin.parameter", "pd_op.data", "pd_op.fetch", "pd_op.full_int_array", "pd_op.full",
             "builtin.combine", "builtin.split", "builtin.slice", "builtin.shadow_output"}
_SKIP_LEGACY = {"feed", "fetch", "fill_constant"}


@dataclasses.dataclass
class Divergence:
    """The first Paddle op whose output onnxruntime does not reproduce."""

    op: str  # Paddle op name, e.g. "pd_op.pool2d"
    index: int  # position in the program's global block
    layer: Optional[str]  # the dygraph layer it came from, when Paddle recorded it (e.g. "/AdaptiveAvgPool2D/")
    input_shapes: List[List[int]]
    output_shape: List[int]
    onnx_nodes: List[str]  # "AveragePool 'AveragePool.0'"
    hint: Optional[str] = None

    def describe(self) -> str:
        where = f" in layer {self.layer}" if self.layer else ""
        text = (f"first op whose output onnxruntime does not reproduce: {self.op} (op #{self.index}{where}, "
                f"inputs {self.input_shapes} -> output {self.output_shape})")
        if self.onnx_nodes:
            text += f", converted to ONNX {', '.join(self.onnx_nodes)}"
        return text + (f"; {self.hint}" if self.hint else "")


def _close(ref: np.ndarray, got: np.ndarray) -> bool:
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return bool(np.all(np.abs(got.astype(np.float64) - ref) <= 1e-4 * scale + 1e-4 * np.abs(ref)))


def _paddle_values(saved: SavedModel, feeds: Dict[str, np.ndarray]) -> List[Dict[str, Any]]:
    """Per considered op: name, index, layer, output array, producers (indices) of its non-constant inputs.

    The values are fetched from a clone of the program without its fetch ops (fetching more values from a
    loaded inference program next to its own fetch ops fails in Paddle 3.3.1).
    """
    entries: List[Dict[str, Any]] = []
    targets: List[Any] = []
    producer: Dict[Any, int] = {}
    with static_mode(pir=not saved.legacy), paddle.static.scope_guard(saved.scope):
        if saved.legacy:
            program = saved.program.clone()
            block = program.global_block()
            for k in reversed([k for k, op in enumerate(block.ops) if op.type == "fetch"]):
                block._remove_op(k)
        else:
            program = saved.program.clone(paddle.pir.IrMapping())
            block = program.global_block()
            for op in [op for op in block.ops if op.name() == "pd_op.fetch"]:
                op.erase()
        for i, op in enumerate(block.ops):
            if saved.legacy:
                if op.type in _SKIP_LEGACY or not op.output_arg_names:
                    continue
                out = op.output_arg_names[0]
                if "FP" not in str(block.var(out).dtype).upper() and "FLOAT" not in str(block.var(out).dtype).upper():
                    continue
                ins = [producer[n] for n in op.input_arg_names if n in producer]
                producer[out] = len(entries)
                entries.append({"op": op.type, "index": i, "layer": None, "inputs": ins})
                targets.append(out)
            else:
                if op.name() in _SKIP_PIR or op.num_results() == 0:
                    continue
                res = op.results()[0]
                if not res.is_dense_tensor_type() or "float" not in str(res.dtype).lower():
                    continue
                ins = [producer[s.get_defining_op().id()] for s in op.operands_source()
                       if s.get_defining_op() is not None and s.get_defining_op().id() in producer]
                producer[op.id()] = len(entries)
                entries.append({"op": op.name(), "index": i, "layer": op.attrs().get("struct_name") or None,
                                "inputs": ins})
                targets.append(res)
        values = saved.exe.run(program, feed={n: feeds[n] for n in saved.feed_names}, fetch_list=targets) \
            if targets else []
    for e, v in zip(entries, values):
        e["value"] = np.asarray(v)
    return entries


def _onnx_values(model: Any, feeds: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Dict[str, List[str]]]:
    """Every float node output of the ONNX model (name -> array) and, per tensor, the nodes that read it."""
    import onnx
    import onnxruntime as ort

    m = onnx.shape_inference.infer_shapes(copy.deepcopy(model))
    known = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.output)}
    have = {o.name for o in m.graph.output}
    readers: Dict[str, List[str]] = {}
    for node in m.graph.node:
        for t in node.input:
            if node.op_type not in ("Shape",):
                readers.setdefault(t, []).append(f"{node.op_type} {node.name!r}")
        for t in node.output:
            vi = known.get(t)
            if t not in have and vi is not None and vi.type.tensor_type.elem_type in (1, 11):  # FLOAT, DOUBLE
                m.graph.output.append(vi)
                have.add(t)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name: feeds[i.name] for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, inputs))), readers


def _hint(op: str, in_shapes: List[List[int]], out_shape: List[int]) -> Optional[str]:
    if op.split(".")[-1].rstrip("_") == "pool2d" and in_shapes and len(in_shapes[0]) == 4 and len(out_shape) == 4:
        hw, ohw = in_shapes[0][2:], out_shape[2:]
        if any(o and h % o for h, o in zip(hw, ohw)):
            return (f"adaptive pooling from {hw[0]}x{hw[1]} to {ohw[0]}x{ohw[1]}: the sizes are not divisible, "
                    f"and ONNX pooling (one kernel size and stride) cannot express it; make the input size a "
                    f"multiple of the output size or use a fixed pooling")
    return None


def find_divergence(saved: SavedModel, onnx_model: Any, feeds: Dict[str, np.ndarray]) -> Optional[Divergence]:
    """The first op of ``saved`` whose output no ONNX intermediate reproduces although its inputs were; or None."""
    entries = _paddle_values(saved, feeds)
    onnx_vals, readers = _onnx_values(onnx_model, feeds)
    by_size: Dict[int, List[Tuple[str, np.ndarray]]] = {}
    for n, a in onnx_vals.items():
        by_size.setdefault(int(a.size), []).append((n, np.asarray(a)))
    matched: List[Optional[str]] = []
    for e in entries:
        ref = e["value"].astype(np.float64)
        hit = next((n for n, a in by_size.get(int(ref.size), []) if _close(ref, a.reshape(ref.shape))), None)
        matched.append(hit)
        if hit is None and all(matched[j] is not None for j in e["inputs"]):
            in_shapes = [list(entries[j]["value"].shape) for j in e["inputs"]]
            out_shape = list(e["value"].shape)
            nodes: List[str] = []
            for j in e["inputs"]:
                for r in readers.get(matched[j] or "", []):
                    if r not in nodes:
                        nodes.append(r)
            if not e["inputs"]:  # reads only feeds and weights: the nodes reading the feeds
                for f in feeds:
                    nodes.extend(r for r in readers.get(f, []) if r not in nodes)
            return Divergence(e["op"], e["index"], e["layer"], in_shapes, out_shape, nodes,
                              _hint(e["op"], in_shapes, out_shape))
    return None

