"""Deployment report: which convolutions / matmuls a sparse runtime would run on sparse kernels, and the
share of the model's FLOPs that would.

Rules, checked against the runtimes' source (see docs/deployment.md):

* **Paddle Lite** ``sparse_conv_detect_pass`` (ARM, ``opt --sparse_model=true``): op ``conv2d`` (not
  depthwise / transpose / matmul), float32 or int8 weights, kernel 1x1, ``groups == 1``, strides 1,
  ``paddings[0] == paddings[1] == 0``, and zero fraction >= ``sparse_threshold`` (default 0.6). The pass picks
  its 2x1 kernel (two output channels per block) when ``num_block2_nonzeroes * 5 >= num_nonzero_blocks2 * 9``;
  then the zeros inside a nonzero 2x1 block are stored, and the zero fraction it compares is the one after
  that fill.
* **XNNPACK** sparse inference: 1x1 convolutions (stride 1, no padding, groups 1) in an NCHW-compatible
  subgraph, with strictly more than 2/3 zeros across those convolutions (``zeros * 3 > params * 2``). Only
  that necessary condition is checked here; the subgraph rule (a 3x3 stride-2 first convolution with 3
  input channels, NCHW-compatible ops, a global average pool at the end) is not.

>>> import numpy as np
>>> w = np.zeros((8, 16, 1, 1), np.float32); w[:, :4] = 1.0
>>> lite_verdict(w, op_type="conv2d", groups=1, strides=[1, 1], paddings=[0, 0])[:3]
(True, 'ok', '2x1 block')
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from paddleslim_static.programs import static_mode

from ..loading import is_legacy_program, load_inference_model

__all__ = ["OpVerdict", "DeploymentReport", "deployment_report", "lite_verdict", "lite_zero_fraction",
           "DEFAULT_SPARSE_THRESHOLD", "SCOPE", "SCOPE_NOTE"]

DEFAULT_SPARSE_THRESHOLD = 0.6
#: what the verdicts are about, said with them (tables, report JSON) and not only in the docs
SCOPE = {
    "runtimes": "Paddle Lite (opt --sparse_model=true, sparse_conv2d) and XNNPACK sparse inference, on ARM CPUs; "
                "only 1x1 convolutions",
    "flop_share": "the share of the conv/matmul FLOPs those kernels would take: work that could move to sparse "
                  "kernels, not a speed-up",
    "small_cores": "on small cores sparse kernels can be slower than dense: Paddle Lite's published MobileNetV1 "
                   "FP32 times go from 28.4 to 17.0 ms on a Snapdragon 865 but from 143.6 to 173.5 ms on a "
                   "Cortex-A53",
    "dense": "ONNX on onnxruntime and the dense Paddle model (paddle.inference, paddle.jit.load) run every op "
             "dense: zeros cost as much time as any other weight",
}
SCOPE_NOTE = ("About ARM CPUs running Paddle Lite or XNNPACK: a FLOP share is work that could move to sparse kernels, "
              "not a speed-up, and small cores may run it slower; ONNX on onnxruntime and the dense Paddle model "
              "run every op dense.")
_CONV_TYPES = {"conv2d", "depthwise_conv2d", "conv2d_transpose", "conv3d", "conv1d"}


def lite_zero_fraction(weight: np.ndarray) -> Tuple[float, bool]:
    """(zero fraction as Lite's pass computes it, 2x1 block kernel chosen?) for a [Cout, Cin, 1, 1] weight."""
    cout = weight.shape[0]
    nz = (np.asarray(weight).reshape(cout, -1) != 0)
    align2 = cout & ~1
    pairs = nz[0:align2:2] | nz[1:align2:2]
    blocks2 = int(pairs.sum())
    block2_nonzeros = int(nz[:align2].sum())
    total_nz = int(nz.sum())
    semi = block2_nonzeros * 5 >= blocks2 * 9
    stored = blocks2 * 2 + (total_nz - block2_nonzeros) if semi else total_nz
    size = nz.size
    frac = float(np.float32(size - stored) / np.float32(size)) if size else 0.0
    return frac, semi


def lite_verdict(weight: np.ndarray, *, op_type: str, groups: int, strides: Sequence[int], paddings: Sequence[int],
                 sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD) -> Tuple[bool, str, Optional[str], Optional[float]]:
    """(taken?, reason, kernel '2x1 block'/'unstructured', Lite's zero fraction) for one op, in the pass's order."""
    w = np.asarray(weight)
    if op_type != "conv2d":
        return False, f"op {op_type}, not conv2d", None, None
    if w.dtype not in (np.float32, np.int8):
        return False, f"weights {w.dtype}, not float32/int8", None, None
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        return False, f"kernel {'x'.join(map(str, w.shape[2:]))}, not 1x1", None, None
    if groups != 1:
        return False, f"groups {groups}, not 1", None, None
    if list(strides[:2]) != [1, 1]:
        return False, f"strides {list(strides)}, not 1", None, None
    if list(paddings[:2]) != [0, 0]:
        return False, f"paddings {list(paddings)}, not 0", None, None
    if w.shape[0] < 1 or w.shape[1] < 1:
        return False, "no channels", None, None
    frac, semi = lite_zero_fraction(w)
    kernel = "2x1 block" if semi else "unstructured"
    if np.float32(frac) < np.float32(sparse_threshold):
        return False, f"zeros {frac:.3f} < {sparse_threshold:g}", kernel, frac
    return True, "ok", kernel, frac


@dataclasses.dataclass
class OpVerdict:
    """One convolution or matmul with a weight operand."""

    op: str
    weight: str
    weight_shape: List[int]
    dtype: str
    groups: int = 1
    strides: List[int] = dataclasses.field(default_factory=lambda: [1, 1])
    paddings: List[int] = dataclasses.field(default_factory=lambda: [0, 0])
    zeros: int = 0
    zero_fraction: float = 0.0
    flops: Optional[int] = None
    lite: bool = False
    lite_reason: str = ""
    lite_kernel: Optional[str] = None
    lite_zero_fraction: Optional[float] = None
    xnnpack_1x1: bool = False  # a 1x1 stride-1 unpadded groups-1 conv: what XNNPACK's sparse path runs
    xnnpack: bool = False
    layer: Optional[str] = None


@dataclasses.dataclass
class DeploymentReport:
    """Per-op verdicts plus the FLOP shares; ``format_table()`` for stdout, ``to_dict()`` for JSON."""

    ops: List[OpVerdict]
    input_shape: List[int]
    sparse_threshold: float
    xnnpack_zero_fraction: Optional[float]

    @property
    def flops_total(self) -> int:
        return sum(o.flops or 0 for o in self.ops)

    def _share(self, attr: str) -> float:
        total = self.flops_total
        return sum(o.flops or 0 for o in self.ops if getattr(o, attr)) / total if total else 0.0

    @property
    def lite_flops_share(self) -> float:
        """Share of the conv/matmul FLOPs Paddle Lite would run on its sparse conv kernels."""
        return self._share("lite")

    @property
    def xnnpack_flops_share(self) -> float:
        return self._share("xnnpack")

    def summary(self) -> str:
        """One plain sentence (or two)."""
        n_lite = sum(o.lite for o in self.ops)
        n_x = sum(o.xnnpack for o in self.ops)
        if not n_lite and not n_x:
            n1 = sum(o.xnnpack_1x1 for o in self.ops)
            why = ("it has no 1x1 stride-1 unpadded conv2d, the only op either runtime runs sparse" if not n1 else
                   f"its {n1} eligible 1x1 convolution(s) are not sparse enough (Lite needs >= "
                   f"{self.sparse_threshold:g} zeros per layer, XNNPACK more than 2/3 across them)")
            return f"Nothing in this model would run on sparse kernels: {why}."
        return (f"Paddle Lite would run {n_lite} of {len(self.ops)} conv/matmul ops on sparse kernels "
                f"({self.lite_flops_share:.1%} of their FLOPs); XNNPACK {n_x} ({self.xnnpack_flops_share:.1%}).")

    def format_table(self) -> str:
        head = ("op", "weight", "shape", "zeros", "MFLOPs", "lite", "lite kernel / reason", "xnnpack")
        rows = [head]
        for o in self.ops:
            rows.append((o.op, o.layer or o.weight, "x".join(map(str, o.weight_shape)), f"{o.zero_fraction:.3f}",
                         "?" if o.flops is None else f"{o.flops / 1e6:.3f}", "yes" if o.lite else "no",
                         o.lite_kernel if o.lite else o.lite_reason,
                         "yes" if o.xnnpack else ("1x1, too dense" if o.xnnpack_1x1 else "no")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"input {list(self.input_shape)}: {self.flops_total / 1e6:.3f} MFLOPs in conv/matmul; "
                     f"on sparse kernels: Lite {self.lite_flops_share:.1%}, XNNPACK {self.xnnpack_flops_share:.1%}")
        lines.append(self.summary())
        lines.append(SCOPE_NOTE)
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"input_shape": list(self.input_shape), "sparse_threshold": self.sparse_threshold,
                "flops_total": self.flops_total, "lite_flops_share": self.lite_flops_share,
                "xnnpack_flops_share": self.xnnpack_flops_share, "xnnpack_zero_fraction": self.xnnpack_zero_fraction,
                "summary": self.summary(), "scope": dict(SCOPE), "ops": [dataclasses.asdict(o) for o in self.ops]}


def _conv_flops(op: str, w: Sequence[int], groups: int, x: Sequence[int], y: Sequence[int]) -> Optional[int]:
    if any(d is None or d < 0 for d in list(x) + list(y)):
        return None
    if op == "conv2d_transpose":  # every input element meets Cout/groups * k filter taps
        return 2 * int(np.prod(x)) * int(np.prod(w[1:]))
    return 2 * int(np.prod(y)) * int(np.prod(w[1:]))


def _verdict(op: str, name: str, w: np.ndarray, groups: int, strides, paddings, flops, threshold, layer=None):
    ok, reason, kernel, lfrac = lite_verdict(w, op_type=op, groups=groups, strides=strides, paddings=paddings,
                                             sparse_threshold=threshold)
    x1 = (op in ("conv2d", "depthwise_conv2d") and w.ndim == 4 and w.shape[2:] == (1, 1) and groups == 1
          and list(strides[:2]) == [1, 1] and not any(paddings))
    return OpVerdict(op=op, weight=name, weight_shape=[int(d) for d in w.shape], dtype=str(w.dtype), groups=int(groups),
                     strides=[int(s) for s in strides], paddings=[int(p) for p in paddings],
                     zeros=int(w.size - np.count_nonzero(w)),
                     zero_fraction=float(1 - np.count_nonzero(w) / w.size) if w.size else 0.0, flops=flops, lite=ok,
                     lite_reason=reason, lite_kernel=kernel, lite_zero_fraction=lfrac, xnnpack_1x1=x1, layer=layer)


def _dygraph_ops(model: Any, input_shape: Sequence[int], threshold: float) -> List[OpVerdict]:
    import paddle

    found: List[OpVerdict] = []
    names = {id(layer): n for n, layer in model.named_sublayers(include_self=True)}

    def hook(layer, inputs, output):
        w = layer.weight.numpy()
        x, y = list(inputs[0].shape), list(output.shape)
        lname = f"{names.get(id(layer)) or type(layer).__name__}.weight"
        if isinstance(layer, paddle.nn.Linear):
            flops = 2 * int(np.prod(x)) * int(w.shape[1])
            found.append(_verdict("matmul", layer.weight.name, w, 1, [1, 1], [0, 0], flops, threshold, lname))
            return
        # Paddle 3.3.1 has no public accessor for a conv layer's groups, stride or padding (nor a public
        # Conv2D.groups/.stride/.padding): only the constructor's arguments, kept as _groups, _stride,
        # _updated_padding, _padding_algorithm
        groups = int(layer._groups)
        if isinstance(layer, paddle.nn.Conv2DTranspose):
            op = "conv2d_transpose"
        elif isinstance(layer, paddle.nn.Conv2D):
            # depthwise: groups == in channels (weight [Cout, Cin / groups, kh, kw]), Cout a multiple of groups
            op = "depthwise_conv2d" if w.shape[1] == 1 and groups > 1 and w.shape[0] % groups == 0 else "conv2d"
        else:
            op = "conv3d" if w.ndim == 5 else "conv1d"
        pads = list(layer._updated_padding) if isinstance(layer._updated_padding, (list, tuple)) else \
            [int(layer._updated_padding)] * 2
        pads = [int(p) for p in np.asarray(pads, dtype=np.int64).ravel()]
        strides = [int(s) for s in np.ravel(layer._stride)]
        if getattr(layer, "_padding_algorithm", "EXPLICIT") == "SAME" and w.shape[2:] != (1,) * (w.ndim - 2):
            pads = [-1, -1]  # padding decided at run time; Lite's rule never sees "SAME" for a non-1x1 kernel
        found.append(_verdict(op, layer.weight.name, w, groups, strides, pads, _conv_flops(op, w.shape, groups, x, y),
                              threshold, lname))

    kinds = (paddle.nn.Conv1D, paddle.nn.Conv2D, paddle.nn.Conv3D, paddle.nn.Conv2DTranspose, paddle.nn.Linear)
    handles = [layer.register_forward_post_hook(hook) for layer in model.sublayers(include_self=True)
               if isinstance(layer, kinds)]
    training = model.training
    try:
        model.eval()
        with paddle.no_grad():
            model(paddle.zeros(list(input_shape), dtype="float32"))
    finally:
        for h in handles:
            h.remove()
        if training:
            model.train()
    return found


def _static_ops(program: Any, scope: Any, input_shape: Sequence[int], threshold: float) -> List[OpVerdict]:
    import paddle

    legacy = is_legacy_program(program)
    scope = scope if scope is not None else paddle.static.global_scope()
    batch = int(input_shape[0])

    def value(name):
        var = scope.find_var(name)
        return None if var is None else np.array(var.get_tensor())

    def fix(shape):
        s = [int(d) for d in shape]
        return [batch if i == 0 and d < 0 else d for i, d in enumerate(s)]

    out: List[OpVerdict] = []
    block = program.global_block()
    for op in block.ops:
        kind = op.type if legacy else op.name().replace("pd_op.", "")
        if kind not in _CONV_TYPES | {"matmul", "matmul_v2", "mul"}:
            continue
        if legacy:
            is_conv = kind in _CONV_TYPES
            wname = op.input("Filter" if is_conv else "Y")[0]
            xname = op.input("Input" if is_conv else "X")[0]
            yname = op.output("Output" if is_conv else "Out")[0]
            x, y = fix(block.var(xname).shape), fix(block.var(yname).shape)
            attr = op.attr
            has = op.has_attr
        else:
            src = op.operand_source(1).get_defining_op()
            if src is None or src.name() != "builtin.parameter":
                continue
            wname = src.attrs()["parameter_name"]
            x, y = fix(op.operand_source(0).shape), fix(op.result(0).shape)
            attrs = op.attrs()
            attr, has = attrs.get, attrs.__contains__
        w = value(wname)
        if w is None:
            continue  # an activation x activation matmul, or a weight not in this scope
        if kind in _CONV_TYPES:
            groups = int(attr("groups")) if has("groups") else 1
            strides, pads = list(attr("strides")), list(attr("paddings"))
            if has("padding_algorithm") and attr("padding_algorithm") == "SAME" and w.shape[2:] != (1,) * (w.ndim - 2):
                pads = [-1, -1]
            out.append(_verdict(kind, wname, w, groups, strides, pads, _conv_flops(kind, w.shape, groups, x, y),
                                threshold))
        else:
            # K = weight elements / output features, whatever the transpose flags
            flops = None if any(d < 0 for d in y) or not y[-1] else 2 * int(np.prod(y)) * (w.size // y[-1])
            out.append(_verdict("matmul", wname, w, 1, [1, 1], [0, 0], flops, threshold))
    return out


def deployment_report(target: Any, input_shape: Sequence[int], *, scope: Any = None,
                      sparse_threshold: float = DEFAULT_SPARSE_THRESHOLD) -> DeploymentReport:
    """Deployment verdicts for a ``paddle.nn.Layer`` (run once on zeros of ``input_shape``, eval mode, no
    grad, hooks removed after), a static ``Program`` (weights from ``scope``; ``input_shape[0]`` fills the
    batch dimension) or an inference-model prefix (``.json`` / ``.pdmodel``).

    >>> import paddle
    >>> net = paddle.nn.Sequential(paddle.nn.Conv2D(8, 16, 1), paddle.nn.ReLU(), paddle.nn.Conv2D(16, 4, 3))
    >>> rep = deployment_report(net, [1, 8, 6, 6])
    >>> [(o.op, o.lite, o.lite_reason) for o in rep.ops]
    [('conv2d', False, 'zeros 0.000 < 0.6'), ('conv2d', False, 'kernel 3x3, not 1x1')]
    """
    import paddle

    shape = list(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if not shape or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"input_shape must be a list of positive ints (e.g. [1, 3, 224, 224]); got {input_shape!r}")
    if isinstance(sparse_threshold, bool) or not isinstance(sparse_threshold, (int, float)) \
            or not 0.0 <= float(sparse_threshold) <= 1.0:
        raise ValueError(f"sparse_threshold must be a number in [0, 1]; got {sparse_threshold!r}")
    threshold = float(sparse_threshold)
    if isinstance(target, paddle.nn.Layer):
        if not paddle.in_dynamic_mode():
            raise ValueError("deployment_report on a paddle.nn.Layer needs dygraph mode")
        ops = _dygraph_ops(target, shape, threshold)
    elif isinstance(target, str) or hasattr(target, "__fspath__"):
        program, sc, legacy = load_inference_model(target)
        with static_mode(pir=not legacy):
            ops = _static_ops(program, sc, shape, threshold)
    else:
        is_legacy_program(target)  # TypeError for anything else
        ops = _static_ops(target, scope, shape, threshold)
    cand = [o for o in ops if o.xnnpack_1x1 and o.dtype in ("float32", "float16")]
    params = sum(int(np.prod(o.weight_shape)) for o in cand)
    zeros = sum(o.zeros for o in cand)
    xfrac = zeros / params if params else None
    if params and zeros * 3 > params * 2:
        for o in cand:
            o.xnnpack = True
    return DeploymentReport(ops=ops, input_shape=shape, sparse_threshold=threshold, xnnpack_zero_fraction=xfrac)
