"""Loading what gets exported: checkpoints (with pruner masks folded in), network builders, saved inference models."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import paddle

from paddleslim_static.core.naming import is_mask_name, masked_name
from paddleslim_static.core.packing import is_packed_mask, unpack_mask
from paddleslim_static.programs import static_mode

from ..sparsity_report import in_model_order
from .errors import ExportError, one_line
from .specs import np_dtype

__all__ = ["load_checkpoint", "fold_checkpoint_masks", "import_from_cwd", "resolve_callable", "build_network",
           "model_files", "SavedModel"]


def load_checkpoint(path: Union[str, "os.PathLike[str]"]) -> Dict[str, np.ndarray]:
    """A ``.pdparams`` state dict as numpy arrays."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or a state dict; got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ExportError(f"checkpoint {path!r} not found")
    try:
        state = paddle.load(path, return_numpy=True)
    except Exception as e:
        raise ExportError(f"checkpoint {path!r} cannot be read: {one_line(e)}") from None
    if not isinstance(state, dict):
        raise ExportError(f"checkpoint {path!r} is not a state dict (got {type(state).__name__})")
    return {k: np.asarray(v) for k, v in state.items()}


def fold_checkpoint_masks(state: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], int]:
    """Fold dygraph-pruner mask entries ``<layer>.<attr>_mask`` into ``<layer>.<attr>``; drop them.

    A mask is a bool array of the weight's shape (older checkpoints) or its bit-packed uint8 form
    (:mod:`paddleslim_static.core.packing`). Returns the new state and the number of masks folded.

    >>> import numpy as np
    >>> s, n = fold_checkpoint_masks({"fc.weight": np.ones(2, np.float32), "fc.weight_mask": np.array([True, False])})
    >>> sorted(s), s["fc.weight"].tolist(), n
    (['fc.weight'], [1.0, 0.0], 1)
    """
    out = dict(state)
    folded = 0
    for key in [k for k in state if is_mask_name(k)]:
        base = masked_name(key)
        if base not in state:
            continue  # not a pruner mask (e.g. a model's own buffer); left for the key check
        w, m = np.asarray(state[base]), np.asarray(state[key])
        if is_packed_mask(m, w.shape) and m.shape != w.shape:
            m = unpack_mask(m, w.shape)
        if m.shape != w.shape:
            raise ExportError(f"checkpoint: mask {key!r} has shape {list(m.shape)}, weight {base!r} has "
                              f"{list(w.shape)}")
        out[base] = np.where(m.astype(bool), w, np.zeros((), w.dtype)).astype(w.dtype)
        del out[key]
        folded += 1
    return out, folded


def import_from_cwd(mod_name: str) -> Any:
    """``importlib.import_module(mod_name)`` with the current directory searched first, as ``python -m`` does
    (a console script's ``sys.path`` starts with its own bin directory, not the current one)."""
    cwd = os.getcwd()
    added = cwd not in [os.path.abspath(p or os.curdir) for p in sys.path]
    if added:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    try:
        return importlib.import_module(mod_name)
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def resolve_callable(spec: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    """A callable, or ``'module:attr'`` imported (e.g. ``paddle.vision.models:LeNet``, ``mymodule:MyNet`` from
    ``mymodule.py`` in the current directory)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ExportError(f"model must be 'module:callable' (e.g. paddle.vision.models:mobilenet_v1); got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    try:
        obj: Any = import_from_cwd(mod_name)
    except ModuleNotFoundError as e:
        top = mod_name.split(".")[0]
        where = (f"no {top}.py or {top}/ package in the current directory ({os.getcwd()}) nor on sys.path"
                 if e.name == top else one_line(e))
        raise ExportError(f"model {spec!r}: cannot import module {mod_name!r}: {where}") from None
    except Exception as e:
        raise ExportError(f"model {spec!r}: cannot import module {mod_name!r}: {one_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ExportError(f"model {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj) or isinstance(obj, type(importlib)):
        raise ExportError(f"model {spec!r} is not callable (a module?); name a class or function, "
                          f"e.g. paddle.vision.models:LeNet")
    return obj


def build_network(model: Union[str, Callable[..., Any]], kwargs: Optional[Dict[str, Any]],
                  state: Dict[str, np.ndarray]) -> Tuple[paddle.nn.Layer, int]:
    """``model(**kwargs)`` with ``state`` loaded (pruner masks folded in); returns (network, masks folded)."""
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ExportError(f"kwargs must be a dict; got {kwargs!r}")
    fn = resolve_callable(model)
    try:
        net = fn(**(kwargs or {}))
    except Exception as e:
        raise ExportError(f"model {model!r} failed to build with kwargs {kwargs or {}}: {one_line(e)}") from None
    if not isinstance(net, paddle.nn.Layer):
        raise ExportError(f"model {model!r} returned {type(net).__name__}, not a paddle.nn.Layer")
    state, folded = fold_checkpoint_masks(state)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ExportError(f"checkpoint keys do not match the network: missing {missing[:5]}"
                          f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                          f"{' ...' if len(unexpected) > 5 else ''}")
    bad = [f"{k}: checkpoint {list(state[k].shape)} vs network {list(v.shape)}"
           for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ExportError(f"checkpoint shapes do not match the network: {'; '.join(bad[:3])}")
    net.set_state_dict({k: state[k].astype(np.dtype(np_dtype(expected[k].dtype)), copy=False) for k in expected})
    return net, folded


def model_files(prefix: str) -> Tuple[str, str, bool]:
    """(model file, params file, legacy) for an inference-model prefix (with or without extension)."""
    for ext in (".json", ".pdmodel", ".pdiparams"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    params = prefix + ".pdiparams"
    for ext, legacy in ((".json", False), (".pdmodel", True)):
        if os.path.isfile(prefix + ext):
            if not os.path.isfile(params):
                raise ExportError(f"inference model {prefix!r}: parameter file {params!r} not found")
            return prefix + ext, params, legacy
    raise ExportError(f"inference model {prefix!r}: neither {prefix + '.json'!r} nor {prefix + '.pdmodel'!r} exists")


def legacy_persistables(block: Any) -> List[str]:
    """Weights of a legacy-IR block: parameters, or (loaded inference models) persistable dense tensors."""
    names = [p.name for p in block.all_parameters()]
    if names:
        return names
    out = []
    for n, v in block.vars.items():
        kind = str(v.type).upper()
        if v.persistable and n not in ("feed", "fetch") and ("LOD_TENSOR" in kind or "DENSE_TENSOR" in kind) \
                and "ARRAY" not in kind:
            out.append(n)
    return out


class SavedModel:
    """A saved inference model loaded back: program, feeds, fetches, weights (what a deployment sees)."""

    def __init__(self, prefix: str, legacy: bool) -> None:
        self.prefix, self.legacy = prefix, legacy
        self.scope = paddle.static.Scope()
        with static_mode(pir=not legacy), paddle.static.scope_guard(self.scope):
            self.exe = paddle.static.Executor(paddle.CPUPlace())
            self.program, self.feed_names, self.fetch = paddle.static.load_inference_model(prefix, self.exe)
            block = self.program.global_block()
            self.params = in_model_order(self.program, legacy_persistables(block) if legacy
                                         else [p.name for p in block.all_parameters()])
            if legacy:
                self.op_names = [op.type for op in block.ops]
                self.var_names = list(block.vars)
                self.feed_specs = [(n, list(block.var(n).shape), np_dtype(block.var(n).dtype))
                                   for n in self.feed_names]
            else:
                self.op_names = [op.name() for op in block.ops]
                self.var_names = list(self.params)
                data = {op.attrs().get("name"): op.results()[0] for op in block.ops if op.name() == "pd_op.data"}
                self.feed_specs = [(n, list(data[n].shape), np_dtype(data[n].dtype)) for n in self.feed_names]
            self.weights = {n: np.array(self.scope.find_var(n).get_tensor()) for n in self.params}

    def run(self, feeds: Dict[str, np.ndarray], fetch: Optional[List[Any]] = None) -> List[np.ndarray]:
        """The fetch targets' values (or ``fetch``: other values/variable names of the program) for ``feeds``."""
        with static_mode(pir=not self.legacy), paddle.static.scope_guard(self.scope):
            outs = self.exe.run(self.program, feed={n: feeds[n] for n in self.feed_names},
                                fetch_list=self.fetch if fetch is None else fetch)
        return [np.asarray(o) for o in outs]
