"""The seed's dygraph UnstructuredPruner / GMPUnstructuredPruner on Paddle 3: the core pruner over a model's layers."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set

import paddle

from paddleslim_static.core.density import density_by_name, density_of
from paddleslim_static.core.naming import NameKeyed
from paddleslim_static.core.params import is_conv1x1
from paddleslim_static.core.pruner import Pruner
from paddleslim_static.core.schedule import GMPSchedule
from paddleslim_static.core.validation import DEFAULT_RATIO, DEFAULT_THRESHOLD, check_positional_trap

from .layers import LayerBackend, check_model, folded_pruners, host_array, live_pruners, owned_params

__all__ = ["UnstructuredPruner", "GMPUnstructuredPruner", "density", "sparsity", "folded"]


def _params(model: paddle.nn.Layer):
    """(name, shape, host array) of every parameter, read lazily (what the core's density queries take)."""
    for _, _, p in owned_params(check_model(model)):
        yield p.name, tuple(p.shape), host_array(p)[0]


def density(model: paddle.nn.Layer) -> float:
    """Nonzero / all elements over every parameter of ``model`` (BatchNorm statistics included)."""
    return density_of(_params(model))


def sparsity(model: paddle.nn.Layer) -> float:
    """1 - density(model)."""
    return 1.0 - density(model)


class UnstructuredPruner(Pruner):
    """Unstructured magnitude pruning of a dygraph model (PaddleSlim's API).

    >>> import paddle
    >>> from paddle.vision.models import LeNet
    >>> from paddleslim_dygraph import UnstructuredPruner
    >>> model = LeNet()
    >>> pruner = UnstructuredPruner(model, mode='ratio', ratio=0.5)
    >>> pruner.step()
    >>> round(1 - UnstructuredPruner.total_sparse(model), 2) >= 0.49
    True

    Masks are bool buffers named ``<attr>_mask`` on the layer owning each parameter (``pruner.masks`` maps parameter
    names to them; ``pruner.masks``, ``pruner.thresholds`` and ``sparse_by_layer`` also take the structured name,
    ``pruner.masks["features.3.weight"]``). They are not persistable: ``model.state_dict()`` holds the pruned
    weights (their zeros carry the masks) and ``pruner.state_dict()`` the rest. A forward pass re-applies the masks when a backward pass ran since
    they were last applied, so a weight revived by the optimizer is never used; other forwards cost nothing.
    """

    def __init__(
        self,
        model: paddle.nn.Layer,
        mode: str,
        threshold: float = DEFAULT_THRESHOLD,
        ratio: float = DEFAULT_RATIO,
        prune_params_type: Optional[str] = None,
        skip_params_func: Optional[Callable[[paddle.nn.Layer], Iterable[str]]] = None,
        local_sparsity: bool = False,
        sparse_block: Sequence[int] = (1, 1),
        *,
        sparse_pattern: Optional[str] = None,
        collectives: Any = None,
        sparsity_allocation: Optional[str] = None,
        min_density: float = 0.0,
        schedule: Optional[GMPSchedule] = None,
    ) -> None:
        """``schedule``: a GMP ratio schedule (what :class:`GMPUnstructuredPruner` passes); needs mode='ratio'."""
        check_positional_trap(mode, ratio, threshold, "(model, mode, threshold, ratio, ...)")
        self.model = check_model(model)
        self._layers = LayerBackend(self.model)
        super().__init__(
            self._layers, mode=mode, ratio=ratio, threshold=threshold,
            prune_params_type=prune_params_type, skip_params_func=skip_params_func, local_sparsity=local_sparsity,
            sparse_block=sparse_block, sparse_pattern=sparse_pattern, collectives=collectives,
            sparsity_allocation=sparsity_allocation, min_density=min_density, schedule=schedule,
        )

    def param_ids(self) -> Set[int]:
        """``id()`` of every parameter tensor this pruner masks."""
        return self._layers.param_ids()

    def mask_master_weights(self, optimizer: paddle.optimizer.Optimizer) -> None:
        """Apply the masks to ``optimizer``'s fp32 master weights too (AMP O2, ``multi_precision=True``): wherever
        the pruner zeroes a float16/bfloat16 weight (step, update_params, the forward and state-dict hooks), its
        master weight is zeroed as well, so the next ``optimizer.step()`` cannot write the old value back.

        >>> import paddle
        >>> model = paddle.nn.Linear(4, 4)
        >>> pruner = UnstructuredPruner(model, 'ratio', ratio=0.5)
        >>> pruner.mask_master_weights(paddle.optimizer.SGD(0.1, parameters=model.parameters(), multi_precision=True))
        """
        self._check_live()
        self._layers.add_optimizer(optimizer)

    def _keyed(self, values: Dict[str, Any]) -> NameKeyed:
        """``values`` by parameter name, looked up by structured name too (``features.3.weight``)."""
        aliases = self.__dict__.get("_aliases")
        if aliases is None:  # once: the core reads thresholds at every step
            aliases = self.__dict__["_aliases"] = {k: p.name for k, p in self.model.named_parameters()}
        return NameKeyed(values, aliases)

    @property
    def masks(self) -> Dict[str, paddle.Tensor]:
        """Parameter name -> bool mask tensor (a buffer of the owning layer); structured names work as keys too."""
        return self._keyed(self._layers.mask_tensors())

    @property
    def thresholds(self) -> Dict[str, float]:
        """Per-parameter thresholds (``local_sparsity``, ``min_density`` floors): parameter name -> threshold;
        structured names work as keys too."""
        return self._keyed(self.__dict__.get("_thresholds", {}))

    @thresholds.setter
    def thresholds(self, value: Dict[str, float]) -> None:
        self.__dict__["_thresholds"] = dict(value)

    def folded(self) -> "contextlib.AbstractContextManager[None]":
        """Inside the block the masks are applied and detached (no hook, no mask buffers): the model is a plain
        sparse model, e.g. for ``paddle.jit.save`` or export. On exit the pruner is attached again.

        Re-entrant: a nested ``folded()`` (or :func:`folded` of the model) changes nothing and the pruner is attached
        again when the outermost block ends. ``finalize()`` inside the block is final: on exit nothing is attached
        again. Building another pruner on the same parameters inside the block is a ``ValueError`` (one pruner per
        weight, as everywhere).

        >>> import paddle
        >>> model = paddle.nn.Sequential(paddle.nn.Linear(4, 4))
        >>> pruner = UnstructuredPruner(model, 'ratio', ratio=0.5)
        >>> with pruner.folded():
        ...     sorted(model.state_dict())
        ['0.bias', '0.weight']
        """
        self._check_live()
        self.update_params()
        return self._layers.suspended()

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
        return density_of(_params(model), is_conv1x1)

    @staticmethod
    def sparse_by_layer(model: paddle.nn.Layer) -> Dict[str, float]:
        """Parameter name -> density; structured names (``features.3.weight``) work as keys too."""
        model = check_model(model)
        structured = {id(p): k for k, p in model.named_parameters()}
        owned = [p for _, _, p in owned_params(model)]
        return NameKeyed(density_by_name(_params(model)),
                         {structured[id(p)]: p.name for p in owned if id(p) in structured})


class GMPUnstructuredPruner(UnstructuredPruner):
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
        *,
        sparse_pattern: Optional[str] = None,
        collectives: Any = None,
        sparsity_allocation: Optional[str] = None,
        min_density: float = 0.0,
    ) -> None:
        super().__init__(  # the UnstructuredPruner given a schedule (validated before the model is touched)
            model, "ratio", ratio=ratio, prune_params_type=prune_params_type, skip_params_func=skip_params_func,
            local_sparsity=local_sparsity, sparse_block=sparse_block, sparse_pattern=sparse_pattern,
            collectives=collectives, sparsity_allocation=sparsity_allocation, min_density=min_density,
            schedule=GMPSchedule.from_configs(configs, ratio),
        )


@contextlib.contextmanager
def folded(model: paddle.nn.Layer) -> Iterator[List[UnstructuredPruner]]:
    """Inside the block every live pruner of ``model`` (or of a model containing it) has its masks applied and
    detached — ``model`` is a plain sparse model (export, ``paddle.jit.save``); on exit they are attached again.
    Yields the pruners involved (none for a model without a pruner). Re-entrant like
    :meth:`UnstructuredPruner.folded` (a nested block yields the same pruners and changes nothing).

    >>> import paddle
    >>> model = paddle.nn.Linear(4, 4)
    >>> with folded(model) as pruners:
    ...     len(pruners)
    0
    """
    check_model(model)
    ours = {id(p) for p in model.parameters()}
    pruners = [p for p in live_pruners() + folded_pruners() if ours & p.param_ids()]
    with contextlib.ExitStack() as stack:
        for pruner in pruners:
            stack.enter_context(pruner.folded())
        yield pruners
