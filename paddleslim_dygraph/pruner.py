"""The seed's dygraph UnstructuredPruner / GMPUnstructuredPruner on Paddle 3, built on the shared core."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from paddleslim_static.core import density as _density
from paddleslim_static.core.params import ParamInfo, is_conv1x1
from paddleslim_static.core.schedule import GMPSchedule
from paddleslim_static.pruner_base import GMPMixin, PrunerBase

__all__ = ["UnstructuredPruner", "GMPUnstructuredPruner", "density", "sparsity"]

_log = logging.getLogger(__name__)

NORM_LAYER_NAMES = frozenset({
    "BatchNorm", "BatchNorm1D", "BatchNorm2D", "BatchNorm3D", "SyncBatchNorm", "LayerNorm", "GroupNorm",
    "InstanceNorm1D", "InstanceNorm2D", "InstanceNorm3D", "SpectralNorm", "LocalResponseNorm",
})
_NORM_TYPES = tuple(
    t for t in (getattr(paddle.nn, n, None) for n in sorted(NORM_LAYER_NAMES)) if isinstance(t, type)
)


def _is_norm_layer(layer: paddle.nn.Layer) -> bool:
    return isinstance(layer, _NORM_TYPES) or type(layer).__name__ in NORM_LAYER_NAMES


def _check_model(model: Any) -> paddle.nn.Layer:
    if not isinstance(model, paddle.nn.Layer):
        raise TypeError(f"model must be a paddle.nn.Layer; got {type(model).__name__}")
    return model


def _owned_params(model: paddle.nn.Layer) -> Iterator[Tuple[paddle.nn.Layer, str, paddle.Tensor]]:
    """(owning layer, attribute name, parameter) for every distinct parameter of the model."""
    seen = set()
    for _, layer in model.named_sublayers(include_self=True):
        for attr, p in layer.named_parameters(include_sublayers=False):
            if p.name not in seen:
                seen.add(p.name)
                yield layer, attr, p


def _host(t: paddle.Tensor) -> Tuple[np.ndarray, Optional[Callable[[], None]]]:
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


def _param_arrays(model: paddle.nn.Layer, only: Optional[Callable[[Sequence[int]], bool]] = None):
    for _, _, p in _owned_params(model):
        if only is None or only(p.shape):
            yield _host(p)[0]


def _infos(model: paddle.nn.Layer) -> List[ParamInfo]:
    return [ParamInfo(p.name, tuple(p.shape), _is_norm_layer(layer), layer.full_name())
            for layer, _, p in _owned_params(model)]


def density(model: paddle.nn.Layer) -> float:
    """Nonzero / all elements over every parameter of ``model`` (BatchNorm statistics included)."""
    return _density(_param_arrays(_check_model(model)))


def sparsity(model: paddle.nn.Layer) -> float:
    """1 - density(model)."""
    return 1.0 - density(model)


class UnstructuredPruner(PrunerBase):
    """Unstructured magnitude pruning of a dygraph model (PaddleSlim's API).

    >>> import paddle
    >>> from paddle.vision.models import LeNet
    >>> from paddleslim_dygraph import UnstructuredPruner
    >>> model = LeNet()
    >>> pruner = UnstructuredPruner(model, mode='ratio', ratio=0.5)
    >>> pruner.step()
    >>> round(1 - UnstructuredPruner.total_sparse(model), 2) >= 0.49
    True

    Masks are bool buffers named ``<attr>_mask`` on the layer owning each parameter (so ``state_dict``
    carries them) and are re-applied before every forward pass, so a weight revived by the optimizer
    is never used.
    """

    def __init__(
        self,
        model: paddle.nn.Layer,
        mode: str,
        threshold: float = 0.01,
        ratio: float = 0.3,
        prune_params_type: Optional[str] = None,
        skip_params_func: Optional[Callable[[paddle.nn.Layer], Iterable[str]]] = None,
        local_sparsity: bool = False,
        sparse_block: Sequence[int] = (1, 1),
    ) -> None:
        self.model = _check_model(model)
        self._mask_of: Dict[str, paddle.Tensor] = {}
        super().__init__(model, mode, ratio, threshold, prune_params_type, skip_params_func,
                         local_sparsity, sparse_block)
        self._hook = model.register_forward_pre_hook(self._before_forward)  # type: ignore[arg-type]
        if self.mode == "threshold":
            self._masks_from_threshold()

    # -- hooks for PrunerBase ----------------------------------------------------------------------
    def _param_infos(self) -> List[ParamInfo]:
        return _infos(self.model)

    def _infos_of(self, target: Any) -> List[ParamInfo]:
        return _infos(_check_model(target))

    def _weights_of(self, target: Any, names: Sequence[str]) -> Dict[str, np.ndarray]:
        wanted = set(names)
        return {p.name: _host(p)[0] for _, _, p in _owned_params(target) if p.name in wanted}

    def _create_masks(self, names: Sequence[str]) -> None:
        wanted = set(names)
        self._params: Dict[str, paddle.Tensor] = {}
        for layer, attr, p in _owned_params(self.model):
            if p.name not in wanted:
                continue
            buf_name = f"{attr}_mask"
            existing = layer._buffers.get(buf_name)
            if existing is not None and tuple(existing.shape) == tuple(p.shape):
                mask = existing  # a previous pruner's mask: reuse the buffer, reset below
                mask.set_value(paddle.ones(p.shape, dtype="bool"))
            elif hasattr(layer, buf_name):
                raise ValueError(f"cannot add mask buffer {buf_name!r}: layer {layer.full_name()} already has it")
            else:
                mask = paddle.ones(p.shape, dtype="bool")
                mask.stop_gradient = True
                layer.register_buffer(buf_name, mask, persistable=True)
                mask = layer._buffers[buf_name]
            self._mask_of[p.name] = mask
            self._params[p.name] = p

    @contextlib.contextmanager
    def _open(self, names: Sequence[str]):
        if getattr(self, "_finalized", False):
            raise RuntimeError("this pruner was finalize()d: its masks are gone; build a new pruner to prune again")
        weights, masks, write_backs = {}, {}, []
        for n in names:
            weights[n], w_back = _host(self._params[n])
            masks[n], m_back = _host(self._mask_of[n])
            write_backs += [f for f in (w_back, m_back) if f is not None]
        yield weights, masks
        with paddle.no_grad():
            for write_back in write_backs:
                write_back()

    def _before_forward(self, layer: paddle.nn.Layer, inputs: Any) -> None:
        if paddle.in_dynamic_mode():  # not while paddle.jit traces the model
            self.update_params()
        return None

    # -- API ---------------------------------------------------------------------------------------
    @property
    def masks(self) -> Dict[str, paddle.Tensor]:
        """Parameter name -> bool mask tensor (a buffer of the owning layer)."""
        return dict(self._mask_of)

    def finalize(self) -> None:
        """Apply the masks for good, then remove the forward hook and the mask buffers (before export)."""
        self.update_params()
        self._hook.remove()
        for layer, attr, p in _owned_params(self.model):
            if p.name in self._mask_of:
                layer._buffers.pop(f"{attr}_mask", None)
        self._mask_of.clear()
        self._finalized = True

    def summarize_weights(self, model: Optional[paddle.nn.Layer] = None, ratio: float = 0.1) -> float:
        """|w| below which about ``ratio`` of the prunable weights of ``model`` (default: this pruner's) lie."""
        return super().summarize_weights(model, ratio)

    @staticmethod
    def total_sparse(model: paddle.nn.Layer) -> float:
        """Density (1 - sparsity) of all parameters of ``model``, as PaddleSlim's seed documents."""
        return density(model)

    @staticmethod
    def total_sparse_conv1x1(model: paddle.nn.Layer) -> float:
        """Density of the 4-D 1x1 convolution weights of ``model``."""
        return _density(_param_arrays(_check_model(model), is_conv1x1))

    @staticmethod
    def sparse_by_layer(model: paddle.nn.Layer) -> Dict[str, float]:
        """Parameter name -> density."""
        out = {}
        for _, _, p in _owned_params(_check_model(model)):
            out[p.name] = _density(_param_arrays_of(p))
        return out


def _param_arrays_of(p: paddle.Tensor):
    yield _host(p)[0]


class GMPUnstructuredPruner(GMPMixin, UnstructuredPruner):
    """Gradual magnitude pruning: the ratio follows PaddleSlim's cubic schedule (see ``configs``).

    >>> import paddle
    >>> from paddle.vision.models import LeNet
    >>> configs = {'stable_iterations': 0, 'pruning_iterations': 1000, 'tunning_iterations': 1000,
    ...            'resume_iteration': 0, 'pruning_steps': 20, 'initial_ratio': 0.15}
    >>> pruner = GMPUnstructuredPruner(LeNet(), ratio=0.55, configs=configs)
    >>> pruner.step(); round(pruner.ratio, 2)
    0.15
    """

    def __init__(
        self,
        model: paddle.nn.Layer,
        ratio: float = 0.55,
        prune_params_type: Optional[str] = None,
        skip_params_func: Optional[Callable[[paddle.nn.Layer], Iterable[str]]] = None,
        local_sparsity: bool = False,
        sparse_block: Sequence[int] = (1, 1),
        configs: Optional[dict] = None,
    ) -> None:
        schedule = GMPSchedule.from_configs(configs, ratio)
        super().__init__(model, "ratio", 0.01, ratio, prune_params_type, skip_params_func,
                         local_sparsity, sparse_block)
        self._init_gmp(schedule)
