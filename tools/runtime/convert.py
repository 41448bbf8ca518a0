"""Which layers of a pruned model run faster sparse, decided by measuring them, and the swap itself.

:func:`plan_conversion` times every candidate layer (``Linear``, and 1x1 ``Conv2D`` with stride 1, no padding,
groups 1) dense and sparse on the input it actually receives for the given model input, in paired rounds, and marks
it for conversion only when the sparse operator was faster by ``min_speedup`` (median over rounds). Layers denser
than ``max_density`` are not timed: on this machine no layer above 70% density was faster sparse (the measured
break-even is 55-70% zeros). :func:`convert_layers` swaps the chosen layers for their sparse versions for the time of
a ``with`` block (e.g. around ``paddle.jit.save``) and puts the dense ones back after.
"""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from .layers import SparseConv1x1, SparseLinear, conv1x1_unsupported
from .timing import median_seconds

__all__ = ["Candidate", "LayerPlan", "layer_candidates", "plan_conversion", "convert_layers", "measure_into"]


@dataclass
class Candidate:
    name: str  # structured name, as named_sublayers() gives it ("features.3")
    layer: paddle.nn.Layer
    kind: str  # "linear" or "conv1x1"


@dataclass
class LayerPlan:
    """The x86 verdict of one layer: converted or not, and why (with the measurement when there is one)."""

    name: str
    kind: str
    weight: str  # Paddle's parameter name (linear_0.w_0)
    shape: Tuple[int, ...]
    nnz: int
    density: float
    input_shape: Optional[Tuple[int, ...]] = None
    dense_ms: Optional[float] = None
    sparse_ms: Optional[float] = None
    converted: bool = False
    reason: str = ""
    rounds: List[float] = field(default_factory=list)  # dense / sparse per round

    @property
    def speedup(self) -> Optional[float]:
        return None if not self.dense_ms or not self.sparse_ms else self.dense_ms / self.sparse_ms

    def to_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "rounds"}
        d["shape"], d["speedup"] = list(self.shape), self.speedup
        d["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        return d


def layer_candidates(model: paddle.nn.Layer) -> List[Candidate]:
    """The layers the sparse operators can run, in model order.

    >>> net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 1), paddle.nn.Conv2D(8, 8, 3), paddle.nn.Linear(8, 2))
    >>> [(c.name, c.kind) for c in layer_candidates(net)]
    [('0', 'conv1x1'), ('2', 'linear')]
    """
    out = []
    for name, layer in model.named_sublayers():
        if type(layer) is paddle.nn.Linear and layer.weight.dtype == paddle.float32:
            out.append(Candidate(name, layer, "linear"))
        elif type(layer) is paddle.nn.Conv2D and conv1x1_unsupported(layer) is None:
            out.append(Candidate(name, layer, "conv1x1"))
    return out


def _sparse_of(c: Candidate) -> paddle.nn.Layer:
    return (SparseLinear if c.kind == "linear" else SparseConv1x1).from_dense(c.layer)


def _parent(model: paddle.nn.Layer, name: str) -> Tuple[paddle.nn.Layer, str]:
    *path, leaf = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, leaf


@contextlib.contextmanager
def convert_layers(model: paddle.nn.Layer, names: Sequence[str]) -> Iterator[paddle.nn.Layer]:
    """``model`` with the named candidate layers swapped for sparse ones inside the block; restored after, also
    when the block raises. Unknown or ineligible names raise ValueError before anything is swapped."""
    by_name = {c.name: c for c in layer_candidates(model)}
    bad = [n for n in names if n not in by_name]
    if bad:
        raise ValueError(f"not convertible layers (not a float32 Linear or 1x1 Conv2D of this model): {bad[:5]}")
    swaps = [(by_name[n], _sparse_of(by_name[n])) for n in names]
    done = []
    try:
        for c, sparse in swaps:
            parent, leaf = _parent(model, c.name)
            setattr(parent, leaf, sparse)
            done.append((parent, leaf, c.layer))
        yield model
    finally:
        for parent, leaf, dense in reversed(done):
            setattr(parent, leaf, dense)


def _inputs_of(model: paddle.nn.Layer, cands: Sequence[Candidate], inputs: Sequence[paddle.Tensor]
               ) -> Dict[str, paddle.Tensor]:
    """The first input each candidate receives when ``model(*inputs)`` runs."""
    seen: Dict[str, paddle.Tensor] = {}
    hooks = []
    for c in cands:
        def grab(layer, args, _name=c.name):
            if _name not in seen and args:
                seen[_name] = args[0].detach().clone()
        hooks.append(c.layer.register_forward_pre_hook(grab))
    try:
        with paddle.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def plan_conversion(model: paddle.nn.Layer, inputs: Sequence[paddle.Tensor], *, min_speedup: float = 1.1,
                    max_density: float = 0.7, rounds: int = 5, min_seconds: float = 0.01) -> List[LayerPlan]:
    """Measure each candidate layer dense and sparse on its real input (paired rounds, medians); a layer is
    converted when its median speed-up is at least ``min_speedup``. ``model`` must be in eval mode."""
    plans: List[LayerPlan] = []
    cands = layer_candidates(model)
    feeds = _inputs_of(model, cands, inputs)
    for c in cands:
        w = c.layer.weight.numpy()
        x = feeds.get(c.name)
        plan = LayerPlan(c.name, c.kind, c.layer.weight.name, tuple(w.shape), 0, 0.0,
                         input_shape=None if x is None else tuple(x.shape))
        plans.append(plan)
        if x is None:
            _count(plan, w)
            plan.reason = "not reached by the model's forward on the export input"
            continue
        measure_into(plan, w, lambda: c.layer(x), lambda: _sparse_of(c), x, min_speedup=min_speedup,
                     max_density=max_density, rounds=rounds, min_seconds=min_seconds)
    return plans


def _count(plan: LayerPlan, w: np.ndarray) -> None:
    plan.nnz = int(np.count_nonzero(w))
    plan.density = plan.nnz / max(w.size, 1)


def measure_into(plan: LayerPlan, weight: np.ndarray, dense: Callable[[], Any], make_sparse: Callable[[], Any],
                 x: paddle.Tensor, *, min_speedup: float = 1.1, max_density: float = 0.7, rounds: int = 5,
                 min_seconds: float = 0.01) -> None:
    """Fill ``plan``: nonzeros, and unless the weight is too dense (or not finite), the dense call ``dense()`` and the
    sparse layer ``make_sparse()`` timed on ``x`` in ``rounds`` paired rounds; converted when the median speed-up
    reaches ``min_speedup``."""
    _count(plan, weight)
    if not np.isfinite(weight).all():
        plan.reason = "weight has NaN/Inf"
        return
    if plan.density > max_density:
        plan.reason = f"density {plan.density:.0%} > {max_density:.0%}: dense is faster above ~70%"
        return
    sparse = make_sparse()
    with paddle.no_grad():
        dense_t, sparse_t = [], []
        for _ in range(rounds):
            dense_t.append(median_seconds(dense, min_seconds))
            sparse_t.append(median_seconds(lambda: sparse(x), min_seconds))
    plan.rounds = [d / s for d, s in zip(dense_t, sparse_t)]
    plan.dense_ms, plan.sparse_ms = statistics.median(dense_t) * 1e3, statistics.median(sparse_t) * 1e3
    ratio = statistics.median(plan.rounds)
    plan.converted = ratio >= min_speedup
    plan.reason = (f"measured {ratio:.2f}x" if plan.converted
                   else f"measured {ratio:.2f}x < {min_speedup:.2f}x: not worth it at this input shape")
