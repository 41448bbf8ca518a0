"""The tools' one loader: checkpoints (pruner masks folded in), ``module:callable`` networks, saved inference models,
and live pruner masks folded in for an export. The export, the report and the demo load through it and nothing else.

A missing file is a FileNotFoundError; anything else wrong with an input an :class:`~paddleslim_tools.errors.ExportError`
(a ValueError), in one line naming the file.

>>> import numpy as np
>>> state, n = fold_checkpoint_masks({"fc.weight": np.ones(3, np.float32), "fc.weight_mask": np.packbits([1, 0, 1])})
>>> state["fc.weight"].tolist(), n
([1.0, 0.0, 1.0], 1)
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import paddle

import paddleslim_dygraph
import paddleslim_static
from paddleslim_static.core.naming import MASK_SUFFIX, is_mask_name, masked_name
from paddleslim_static.programs import static_mode

from .errors import ExportError, one_line

__all__ = ["load_checkpoint", "checkpoint_arrays", "checkpoint_mask", "fold_checkpoint_masks", "import_from_cwd",
           "resolve_callable", "build_network", "model_files", "load_inference_model", "SavedModel",
           "program_weights", "in_model_order", "is_legacy_program", "np_dtype", "folded_layer", "folded_program",
           "MASK_SUFFIX"]

PathLike = Union[str, "os.PathLike[str]"]


def np_dtype(dtype: Any) -> str:
    """numpy dtype name of a Paddle dtype (``paddle.float32``, ``VarType.FP32``, ``DataType.FLOAT32``...)."""
    text = str(dtype).replace("paddle.", "").replace("VarType.", "").replace("DataType.", "").lower()
    table = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "bfloat16": "float32"}
    return table.get(text, text)


# -- checkpoints -------------------------------------------------------------------------------------------------
def load_checkpoint(path: PathLike) -> Dict[str, np.ndarray]:
    """A ``.pdparams`` state dict as numpy arrays; one line naming the file when it is missing, empty, truncated or
    corrupt, not a state dict, or holds no float tensor."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or a state dict; got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found")
    if os.path.getsize(path) == 0:
        raise ExportError(f"checkpoint {path!r} is empty (0 bytes)")
    try:
        state = paddle.load(path, return_numpy=True)
    except MemoryError:
        raise ExportError(f"checkpoint {path!r} is too large to load in memory") from None
    except Exception as e:  # pickle/protobuf/Paddle errors of a truncated or corrupt file: all the same to the user
        raise ExportError(f"checkpoint {path!r} is truncated or corrupt ({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(state, Mapping):
        raise ExportError(f"checkpoint {path!r} is not a state dict (got {type(state).__name__})")
    arrays = checkpoint_arrays(state)
    if not any(np.issubdtype(v.dtype, np.floating) for v in arrays.values()):
        raise ExportError(f"checkpoint {path!r} holds no float tensor: not a model's state dict")
    return arrays


def checkpoint_arrays(state: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """The array entries of a state dict (numpy arrays, or Tensors as a ``state_dict()`` holds them) as numpy."""
    out = {}
    for k, v in state.items():
        if isinstance(v, (np.ndarray, np.generic)):
            out[k] = np.asarray(v)
        elif callable(getattr(v, "numpy", None)):
            out[k] = np.asarray(v.numpy())
    return out


def checkpoint_mask(mask: Any, shape: Sequence[int], key: str = "mask") -> np.ndarray:
    """A pruner mask as bool of ``shape``: a bool (or 0/1) array of that shape, or the bit-packed uint8 form
    (:mod:`paddleslim_static.core.packing`: ``np.packbits`` of the flat mask); ExportError naming ``key`` otherwise.

    >>> checkpoint_mask(np.packbits([1, 0, 1]), (3,)).tolist()
    [True, False, True]
    """
    m = np.asarray(mask)
    n = int(np.prod(shape, dtype=np.int64))
    if m.shape == tuple(shape) and (m.dtype == np.bool_ or n != math.ceil(n / 8) or np.isin(m, (0, 1)).all()):
        return m.astype(bool)
    if m.dtype == np.uint8 and m.shape == (math.ceil(n / 8),):
        return np.unpackbits(m, count=n).astype(bool).reshape(tuple(shape))
    raise ExportError(f"{key}: shape {list(m.shape)} dtype {m.dtype} is neither a mask of shape {list(shape)} nor "
                      f"a bit-packed mask of {math.ceil(n / 8)} uint8")


def fold_checkpoint_masks(state: Mapping[str, Any]) -> Tuple[Dict[str, np.ndarray], int]:
    """Fold dygraph-pruner mask entries ``<layer>.<attr>_mask`` into ``<layer>.<attr>``; drop them.

    A mask is a bool array of the weight's shape (older checkpoints) or its bit-packed uint8 form
    (:mod:`paddleslim_static.core.packing`). Returns the new state (numpy arrays) and the number of masks folded.

    >>> s, n = fold_checkpoint_masks({"fc.weight": np.ones(2, np.float32), "fc.weight_mask": np.array([True, False])})
    >>> sorted(s), s["fc.weight"].tolist(), n
    (['fc.weight'], [1.0, 0.0], 1)
    """
    arrays = checkpoint_arrays(state)
    out = dict(arrays)
    folded = 0
    for key in [k for k in arrays if is_mask_name(k)]:
        base = masked_name(key)
        if base not in arrays:
            continue  # not a pruner mask (e.g. a model's own buffer); left for the key check
        w = arrays[base]
        m = checkpoint_mask(arrays[key], w.shape, key)
        out[base] = np.where(m, w, np.zeros((), w.dtype)).astype(w.dtype)
        del out[key]
        folded += 1
    return out, folded


# -- networks ----------------------------------------------------------------------------------------------------
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


def build_network(model: Union[str, Callable[..., Any]], kwargs: Optional[Dict[str, Any]] = None,
                  state: Optional[Mapping[str, Any]] = None) -> Tuple[paddle.nn.Layer, int]:
    """``model(**kwargs)`` with ``state`` (when given) loaded, pruner masks folded in; returns (network, masks
    folded). The checkpoint's keys and shapes must be the network's."""
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ExportError(f"kwargs must be a dict; got {kwargs!r}")
    fn = resolve_callable(model)
    try:
        net = fn(**(kwargs or {}))
    except Exception as e:
        raise ExportError(f"model {model!r} failed to build with kwargs {kwargs or {}}: {one_line(e)}") from None
    if not isinstance(net, paddle.nn.Layer):
        raise ExportError(f"model {model!r} returned {type(net).__name__}, not a paddle.nn.Layer")
    if state is None:
        return net, 0
    state, folded = fold_checkpoint_masks(state)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ExportError(f"checkpoint keys do not match the network (does {model!r} build the right network?): "
                          f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                          f"{' ...' if len(unexpected) > 5 else ''}")
    bad = [f"{k!r} has shape {list(state[k].shape)}, network {list(v.shape)}"
           for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ExportError(f"checkpoint shapes do not match the network: {'; '.join(bad[:3])}")
    net.set_state_dict({k: state[k].astype(np.dtype(np_dtype(expected[k].dtype)), copy=False) for k in expected})
    return net, folded


# -- saved inference models --------------------------------------------------------------------------------------
def model_files(prefix: PathLike) -> Tuple[str, str, bool]:
    """(model file, params file, legacy) for an inference-model prefix (with or without extension)."""
    prefix = os.fspath(prefix)
    for ext in (".json", ".pdmodel", ".pdiparams"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    params = prefix + ".pdiparams"
    for ext, legacy in ((".json", False), (".pdmodel", True)):
        if os.path.isfile(prefix + ext):
            if not os.path.isfile(params):
                raise FileNotFoundError(f"inference model {prefix!r}: parameter file {params!r} not found")
            return prefix + ext, params, legacy
    raise FileNotFoundError(f"inference model {prefix!r}: neither {prefix + '.json'!r} nor {prefix + '.pdmodel'!r} "
                            "exists")


def load_inference_model(prefix: PathLike) -> Tuple[Any, Any, bool]:
    """(program, scope holding its weights, legacy?) of a saved inference model (``.json`` or ``.pdmodel``)."""
    saved = SavedModel(prefix)
    return saved.program, saved.scope, saved.legacy


def is_legacy_program(program: Any) -> bool:
    """True for a legacy-IR ``Program``, False for a PIR one; TypeError for anything else."""
    if isinstance(program, paddle.pir.Program):
        return False
    from paddle.base.framework import Program as LegacyProgram  # paddle.static.Program is the PIR class under PIR

    if isinstance(program, LegacyProgram):
        return True
    raise TypeError(f"program must be a paddle static Program (PIR or legacy); got {type(program).__name__}")


def in_model_order(program: Any, names: Sequence[str]) -> List[str]:
    """``names`` (weights of ``program``) in the order the program's ops first read them - the model's order,
    which ``all_parameters()`` (reversed on a loaded PIR model) is not; unread ones last, as given."""
    legacy = is_legacy_program(program)
    wanted, seen = set(names), {}
    for op in program.global_block().ops:
        if legacy:
            reads = [n for slot in op.input_names for n in op.input(slot)]
        else:
            defs = [v.get_defining_op() for v in op.operands_source()]
            reads = [d.attrs().get("parameter_name") for d in defs if d is not None and d.name() == "builtin.parameter"]
        for n in reads:
            if n in wanted:
                seen.setdefault(n, len(seen))
    return sorted(names, key=lambda n: seen.get(n, len(seen)))


def program_weights(program: Any, scope: Any = None) -> Dict[str, np.ndarray]:
    """Name -> array of the weights of a static program (read from ``scope``, default the global scope), in model
    order: its parameters, or for a loaded legacy-IR inference model its persistable dense tensors."""
    legacy = is_legacy_program(program)
    scope = scope if scope is not None else paddle.static.global_scope()
    block = program.global_block()
    names = in_model_order(program, legacy_persistables(block) if legacy else [p.name for p in block.all_parameters()])
    out = {}
    for n in names:
        var = scope.find_var(n)
        if var is None:
            raise ValueError(f"scope has no variable {n!r} of the program (run the startup program, or pass "
                             "the scope the program ran in)")
        out[n] = np.array(var.get_tensor())
    return out


def legacy_persistables(block: Any) -> List[str]:
    """Weights of a legacy-IR block: parameters, or (loaded inference models) persistable dense tensors."""
    from paddle.static.io import is_persistable  # False for the feed/fetch lists and readers

    names = [p.name for p in block.all_parameters()]
    dense = ("LOD_TENSOR", "DENSE_TENSOR")  # the type's name changed between Paddle versions; arrays are not weights
    return names or [v.name for v in block.vars.values() if is_persistable(v) and v.persistable
                     and any(t in str(v.type).upper() for t in dense) and "ARRAY" not in str(v.type).upper()]


class SavedModel:
    """A saved inference model loaded back: program, feeds, fetches, weights (what a deployment sees).
    ``legacy`` (legacy IR, ``.pdmodel``) is read from the files when not given."""

    def __init__(self, prefix: PathLike, legacy: Optional[bool] = None) -> None:
        model_file, _, found = model_files(prefix)
        self.prefix = os.path.splitext(model_file)[0]
        self.legacy = legacy = found if legacy is None else legacy
        self.scope = paddle.static.Scope()
        with static_mode(pir=not legacy), paddle.static.scope_guard(self.scope):
            self.exe = paddle.static.Executor(paddle.CPUPlace())
            try:
                self.program, self.feed_names, self.fetch = paddle.static.load_inference_model(self.prefix, self.exe)
            except MemoryError:
                raise ExportError(f"inference model {self.prefix!r} is too large to load in memory") from None
            except Exception as e:  # a JSON/protobuf parse error, "Cannot read tensor desc size": a damaged file
                raise ExportError(f"inference model {self.prefix!r} is truncated or corrupt ({one_line(e)})") from None
            block = self.program.global_block()
            self.weights = program_weights(self.program, self.scope)
            self.params = list(self.weights)
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

    def run(self, feeds: Dict[str, np.ndarray], fetch: Optional[List[Any]] = None) -> List[np.ndarray]:
        """The fetch targets' values (or ``fetch``: other values/variable names of the program) for ``feeds``."""
        with static_mode(pir=not self.legacy), paddle.static.scope_guard(self.scope):
            outs = self.exe.run(self.program, feed={n: feeds[n] for n in self.feed_names},
                                fetch_list=self.fetch if fetch is None else fetch)
        return [np.asarray(o) for o in outs]


# -- live pruner masks -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def folded_layer(layer: paddle.nn.Layer) -> Iterator[None]:
    """Inside: ``layer`` in eval mode with every live dygraph pruner's masks folded into its weights and the
    pruners' hooks and mask buffers detached; on exit the pruners are attached again and the train/eval mode
    restored (the weights keep their zeros, as after any ``step()``)."""
    training = layer.training
    try:
        layer.eval()
        with paddleslim_dygraph.folded(layer):
            yield
    finally:
        layer.train() if training else layer.eval()


def folded_program(program: Any, scope: Any) -> "contextlib.AbstractContextManager[Any]":
    """Inside: every parameter of ``program`` with a ``<param>_mask`` variable (bool or bit-packed) in ``scope``
    holds ``weight * mask``; the weights are restored bit for bit on exit."""
    return paddleslim_static.folded(program, scope)
