"""How the core pruner reaches a dygraph model: its parameters, zero-copy views of weights and masks, and hooks.

:class:`LayerBackend` implements the core's backend protocol (:mod:`paddleslim_static.core.pruner`):

* :meth:`LayerBackend.work` hands out the parameters and masks with the engine that computes on them: on the CPU,
  zero-copy numpy views and the numpy/C engine; on an accelerator (or with ``PADDLESLIM_ENGINE=paddle``), the
  tensors themselves and the engine of Paddle operations (:mod:`paddleslim_static.device_engine`), so nothing
  crosses the bus but a few scalars per ratio step;

* masks are non-persistable bool buffers ``<attr>_mask`` on the layer that owns each parameter;
* a gradient hook on every pruned weight *arms* the pruner (an optimizer step may follow); a model-level forward
  pre-hook re-applies the masks only while armed, and ``step()`` / ``update_params()`` disarm it, so forwards
  with unchanged weights (eval, inference) cost nothing;
* a state-dict hook on every owning layer applies the masks before the state is read, so ``paddle.save(
  model.state_dict())`` and ``paddle.jit.save`` always store the pruned zeros;
* live pruners are registered, so a second pruner on the same parameters is an error naming the first.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import paddle

from paddleslim_static.core.engine import HOST, Engine
from paddleslim_static.core.naming import mask_name
from paddleslim_static.core.params import ParamInfo
from paddleslim_static.device_engine import PADDLE, use_device_engine

__all__ = ["LayerBackend", "check_model", "host_array", "owned_params", "is_norm_layer", "live_pruners",
           "folded_pruners", "NORM_LAYER_NAMES"]

NORM_LAYER_NAMES = frozenset({
    "BatchNorm", "BatchNorm1D", "BatchNorm2D", "BatchNorm3D", "SyncBatchNorm", "LayerNorm", "GroupNorm",
    "InstanceNorm1D", "InstanceNorm2D", "InstanceNorm3D", "SpectralNorm", "LocalResponseNorm",
})
_NORM_TYPES = tuple(
    t for t in (getattr(paddle.nn, n, None) for n in sorted(NORM_LAYER_NAMES)) if isinstance(t, type)
)
_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_FOLDED: "weakref.WeakSet[Any]" = weakref.WeakSet()  # live pruners inside their folded() block (detached for now)

Owned = Tuple[paddle.nn.Layer, str, paddle.Tensor]


def live_pruners() -> List[Any]:
    """Dygraph pruners attached to a model now (not finalized)."""
    return list(_LIVE)


def folded_pruners() -> List[Any]:
    """Dygraph pruners inside their ``folded()`` block now (attached again when it ends)."""
    return list(_FOLDED)


def check_model(model: Any) -> paddle.nn.Layer:
    if not isinstance(model, paddle.nn.Layer):
        raise TypeError(f"model must be a paddle.nn.Layer; got {type(model).__name__}")
    return model


def owned_params(model: paddle.nn.Layer) -> Iterator[Owned]:
    """(owning layer, attribute name, parameter) for every distinct parameter of the model."""
    seen: Set[int] = set()
    for _, layer in model.named_sublayers(include_self=True):
        for attr, p in layer.named_parameters(include_sublayers=False):
            if id(p) not in seen:
                seen.add(id(p))
                yield layer, attr, p


def host_array(t: paddle.Tensor) -> Tuple[np.ndarray, Optional[Callable[[], None]]]:
    """A writable numpy array over the tensor's data, and a callable that writes it back (None: zero-copy).

    CPU float16/32/64 and bool tensors are viewed in place through DLPack. bfloat16 (no numpy dtype) is widened to
    float32 exactly and narrowed back on write; tensors on an accelerator are copied to the host and back.
    """
    if t.dtype == paddle.bfloat16:
        bits = t.numpy()  # uint16 bit patterns
        arr = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)

        def write_back() -> None:
            t.set_value((arr.view(np.uint32) >> np.uint32(16)).astype(np.uint16))

        return arr, write_back
    if t.place.is_cpu_place():
        return np.from_dlpack(t.detach()), None
    arr = t.numpy()
    return arr, lambda: t.set_value(arr)


def is_norm_layer(layer: paddle.nn.Layer) -> bool:
    """Whether ``layer`` is a normalization layer (its parameters are never pruned, nor N:M checked)."""
    return isinstance(layer, _NORM_TYPES) or type(layer).__name__ in NORM_LAYER_NAMES


def conv1x1_unsupported(layer: paddle.nn.Layer) -> Optional[str]:
    """Why ``layer`` is not a plain 1x1 convolution (Conv2D, 1x1 kernel, stride 1, no padding, groups 1; dilation
    does not matter for a 1x1 kernel), None when it is: the convolutions Paddle Lite's sparse kernels and the sparse CPU runtime take.

    >>> conv1x1_unsupported(paddle.nn.Conv2D(4, 8, 1)) is None, conv1x1_unsupported(paddle.nn.Conv2D(4, 8, 3))
    (True, 'kernel (3, 3) is not 1x1')
    """
    if type(layer) is not paddle.nn.Conv2D:
        return f"{type(layer).__name__} is not a Conv2D"
    # Paddle 3.3 has no public getters for a Conv2D's kernel size / stride / padding / groups
    pads = getattr(layer, "_updated_padding", None)
    checks = [
        (tuple(layer._kernel_size) == (1, 1), f"kernel {tuple(layer._kernel_size)} is not 1x1"),
        (tuple(np.ravel(layer._stride)) == (1, 1), f"stride {tuple(np.ravel(layer._stride))}"),
        (pads is not None and all(int(v) == 0 for v in np.ravel(pads)), "padding"),
        (int(layer._groups) == 1, f"groups={layer._groups}"),
    ]
    return next((why for ok, why in checks if not ok), None)


def _lite_sparse_conv(layer: paddle.nn.Layer, attr: str) -> bool:
    """A Conv2D weight Paddle Lite's sparse conv takes: 1x1 kernel, groups 1, stride 1, no padding."""
    return attr == "weight" and conv1x1_unsupported(layer) is None


def param_infos(model: paddle.nn.Layer) -> List[ParamInfo]:
    return [ParamInfo(p.name, tuple(p.shape), is_norm_layer(layer), layer.full_name(),
                      str(p.dtype).replace("paddle.", ""), _lite_sparse_conv(layer, attr))
            for layer, attr, p in owned_params(model)]


class LayerBackend:
    """The dygraph backend of :class:`paddleslim_static.core.pruner.Pruner` (see the module docstring)."""

    apply_on_attach = False  # the seed's update_params example: masks at construction, weights at the next use

    def __init__(self, model: paddle.nn.Layer) -> None:
        self.target = model
        self.model = model
        self._owned: Dict[str, Owned] = {}
        self._masks: Dict[str, paddle.Tensor] = {}
        self._handles: List[Any] = []
        self._pruner: Any = None
        self._armed = True
        self._optimizers: "weakref.WeakSet[Any]" = weakref.WeakSet()  # their fp32 master weights are masked too

    # -- protocol ----------------------------------------------------------------------------------
    def param_infos(self) -> List[ParamInfo]:
        return param_infos(self.model)

    def check_attach(self, names: Sequence[str], pruner: Any) -> None:
        by_name = {p.name: (layer, attr, p) for layer, attr, p in owned_params(self.model)}
        for n in names:
            layer, attr, p = by_name[n]
            buf = mask_name(attr)
            owner = next((q for q in list(_LIVE) + list(_FOLDED) if id(p) in q.param_ids()), None)
            if owner in _FOLDED:
                raise ValueError(
                    f"parameter {n!r} ({layer.full_name()}.{attr}) is pruned by {type(owner).__name__} at "
                    f"0x{id(owner):x}, folded for now (inside its folded() block); build the new pruner after the "
                    "block, or finalize() the first one"
                )
            if owner is not None:
                raise ValueError(
                    f"parameter {n!r} ({layer.full_name()}.{attr}) is already pruned by {type(owner).__name__} "
                    f"at 0x{id(owner):x} (mode={owner.mode!r}); call its finalize() before building another pruner"
                )
            if hasattr(layer, buf) or buf in layer._buffers:
                raise ValueError(f"cannot add mask buffer {buf!r}: layer {layer.full_name()} already has an "
                                 "attribute of that name")
        self._owned = {n: by_name[n] for n in names}

    def attach(self, names: Sequence[str], pruner: Any) -> None:
        self._pruner = pruner
        for n in names:
            self._masks[n] = paddle.ones(self._owned[n][2].shape, dtype="bool")
            self._masks[n].stop_gradient = True
        self._hook_up()
        _LIVE.add(pruner)

    @contextlib.contextmanager
    def open(self, names: Sequence[str], write: bool = True
             ) -> Iterator[Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]]:
        """Host arrays of the weights and masks (copies off the CPU and for bfloat16, written back only with
        ``write``)."""
        weights, masks, write_backs = {}, {}, []
        for n in names:
            weights[n], w_back = host_array(self._owned[n][2])
            masks[n], m_back = host_array(self._masks[n])
            write_backs += [f for f in (w_back, m_back) if f is not None]
        yield weights, masks
        if write:
            with paddle.no_grad():
                for write_back in write_backs:
                    write_back()

    @contextlib.contextmanager
    def work(self, names: Sequence[str], write: bool = True) -> Iterator[Tuple[Engine, Dict[str, Any], Dict[str, Any]]]:
        """(engine, weights, masks): the Paddle engine and the tensors themselves when any of them is off the CPU
        or ``PADDLESLIM_ENGINE=paddle``; the numpy/C engine and host arrays otherwise."""
        tensors = [self._owned[n][2] for n in names]
        # the first tensor's place decides (checking them all costs ~1 us each per forward); either engine is
        # correct for any placement, only slower on the other side
        if use_device_engine(not tensors or tensors[0].place.is_cpu_place()):
            yield PADDLE, dict(zip(names, tensors)), {n: self._masks[n] for n in names}
            return
        with self.open(names, write=write) as (weights, masks):
            yield HOST, weights, masks

    def check_step(self) -> None:
        for n, (layer, attr, p) in self._owned.items():
            now = layer._parameters.get(attr)
            if now is not p:
                raise RuntimeError(
                    f"{layer.full_name()}.{attr} was replaced after the pruner was built (it was {n!r}, now "
                    f"{getattr(now, 'name', now)!r}), so the new weight would never be pruned: call finalize() and "
                    "build a new pruner on the model"
                )

    def weights_ready(self) -> bool:
        return True

    def masks_reset(self) -> bool:
        return False

    def store_thresholds(self, threshold: float, thresholds: Any) -> None:
        pass

    def state_keys(self, names: Sequence[str]) -> Dict[str, str]:
        structured = {id(p): k for k, p in self.model.named_parameters()}
        return {n: structured[id(self._owned[n][2])] for n in names}

    def masks_written(self) -> None:
        pass

    def after_apply(self) -> None:
        self._armed = False
        self._apply_masters(list(self._owned))

    def detach(self) -> None:
        self._unhook()
        _LIVE.discard(self._pruner)
        _FOLDED.discard(self._pruner)
        self._masks.clear()

    # -- extras the dygraph pruner uses --------------------------------------------------------------
    def mask_tensors(self) -> Dict[str, paddle.Tensor]:
        return dict(self._masks)

    def param_ids(self) -> Set[int]:
        return {id(p) for _, _, p in self._owned.values()}

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Hooks and mask buffers removed inside the block (the caller applied the masks), restored when the
        outermost block ends (nested blocks change nothing) - unless the pruner was finalized inside: it stays
        detached."""
        outermost = self._pruner not in _FOLDED
        if outermost:
            self._unhook()
            _LIVE.discard(self._pruner)
            _FOLDED.add(self._pruner)
        try:
            yield
        finally:
            if outermost and self._pruner in _FOLDED:  # not finalized inside (detach() takes it out)
                _FOLDED.discard(self._pruner)
                self._hook_up()
                _LIVE.add(self._pruner)

    def infos_of(self, target: Any) -> List[ParamInfo]:
        return param_infos(check_model(target))

    def weights_of(self, target: Any, names: Sequence[str]) -> Dict[str, np.ndarray]:
        wanted = set(names)
        return {p.name: host_array(p)[0] for _, _, p in owned_params(target) if p.name in wanted}

    # -- hooks -------------------------------------------------------------------------------------
    def _hook_up(self) -> None:
        by_layer: Dict[int, Tuple[paddle.nn.Layer, List[str]]] = {}
        for n, (layer, attr, p) in self._owned.items():
            layer.register_buffer(mask_name(attr), self._masks[n], persistable=False)
            self._masks[n] = layer._buffers[mask_name(attr)]
            by_layer.setdefault(id(layer), (layer, []))[1].append(n)
            self._handles.append(p.register_hook(self._on_grad))
        for layer, names in by_layer.values():
            self._handles.append(layer.register_state_dict_hook(functools.partial(self._before_state_dict, names)))
        self._handles.append(self.model.register_forward_pre_hook(self._before_forward))

    def _unhook(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for layer, attr, _ in self._owned.values():
            layer._buffers.pop(mask_name(attr), None)
            layer._non_persistable_buffer_names_set.discard(mask_name(attr))

    def _on_grad(self, grad: paddle.Tensor) -> None:
        self._armed = True  # an optimizer step may follow: the next forward re-applies the masks
        return None

    def _apply(self, names: Optional[Sequence[str]] = None) -> None:
        names = list(self._owned) if names is None else names
        with self.work(names) as (eng, weights, masks):
            eng.apply_masks(weights, masks)
        self._apply_masters(names)

    # -- AMP O2: master weights ----------------------------------------------------------------------
    def add_optimizer(self, optimizer: Any) -> None:
        """Mask ``optimizer``'s fp32 master weights (AMP O2 / ``multi_precision``) wherever the parameters are
        masked."""
        if not isinstance(optimizer, paddle.optimizer.Optimizer):
            raise TypeError(f"optimizer must be a paddle.optimizer.Optimizer; got {type(optimizer).__name__}")
        self._optimizers.add(optimizer)
        self._apply_masters(list(self._owned))

    def master_weights(self, names: Sequence[str]) -> Dict[str, paddle.Tensor]:
        """Parameter name -> the fp32 master weight an added optimizer keeps for it (created at its first step)."""
        out: Dict[str, paddle.Tensor] = {}
        for opt in list(self._optimizers):
            masters = getattr(opt, "_master_weights", None) or {}  # Paddle keeps them by parameter name
            out.update({n: masters[n] for n in names if n in masters})
        return out

    def _apply_masters(self, names: Sequence[str]) -> None:
        """master *= mask for every master weight of the named parameters (on their device, or through host views
        for the numpy/C engine)."""
        masters = self.master_weights(names) if self._optimizers else {}
        if not masters:
            return
        with self.work(list(masters), write=False) as (eng, _, masks):
            if eng is PADDLE:
                eng.apply_masks(masters, masks)
                return
            arrays, write_backs = {}, []
            for n, t in masters.items():
                arrays[n], back = host_array(t)
                write_backs += [back] if back is not None else []
            eng.apply_masks(arrays, masks)
            with paddle.no_grad():
                for back in write_backs:
                    back()

    def _before_forward(self, layer: paddle.nn.Layer, inputs: Any) -> None:
        if self._armed and paddle.in_dynamic_mode():  # not while paddle.jit traces the model
            self.check_step()
            self._apply()  # stays armed: the optimizer step this backward prepared may still come
        return None

    def _before_state_dict(self, names: List[str], state: Dict[str, Any]) -> None:
        # the state holds these very tensors, so it reads the pruned zeros; paddle.jit.save asks for it in static mode
        with contextlib.nullcontext() if paddle.in_dynamic_mode() else paddle.base.dygraph.guard():
            self._apply(names)
        return None
