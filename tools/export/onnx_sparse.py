"""Sparse storage of ONNX weights: lift constant weights to initializers, COO-compress, densify.

ONNX's ``SparseTensorProto`` stores the nonzero values plus INT64 indices (the checker rejects INT32), here
in the linearized ``[NNZ]`` form, so a sparse weight costs ``nnz * (itemsize + 8)`` bytes against
``size * itemsize`` dense. :func:`compress` stores a weight sparse only when that is smaller (or when its
density is at most an explicit ``max_density``); :func:`densify` restores the exact dense model.

>>> import numpy as np, onnx
>>> from onnx import helper, numpy_helper, TensorProto
>>> w = np.zeros((8, 8), np.float32); w[0, 0] = 1.0
>>> g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [numpy_helper.from_array(w, "w")])
>>> m = helper.make_model(g)
>>> small, stored = compress(m)
>>> stored
['w']
>>> densify(small).SerializeToString() == canonicalize(m).SerializeToString()
True
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

import numpy as np

if TYPE_CHECKING:  # onnx is the export extra: imported where used, so importing this module never needs it
    import onnx

__all__ = [
    "INDEX_BYTES", "canonicalize", "compress", "coo_bytes", "densify", "onnx_tensors", "should_store_sparse",
]

INDEX_BYTES = 8  # INT64 linear index per nonzero (the ONNX checker requires INT64 indices)
_FLOAT_TYPES = {1, 11, 10, 16}  # onnx.TensorProto FLOAT, DOUBLE, FLOAT16, BFLOAT16


_META_SPARSE = "paddleslim.sparse_initializers"
_META_BYTES = "paddleslim.weight_bytes_dense_to_stored"


def coo_bytes(nnz: int, itemsize: int) -> int:
    """Payload bytes of a COO tensor with ``nnz`` stored values of ``itemsize`` bytes and INT64 indices."""
    return int(nnz) * (int(itemsize) + INDEX_BYTES)


def _stored_mask(arr: np.ndarray) -> np.ndarray:
    """Elements a sparse tensor must store to rebuild ``arr`` bit for bit (-0.0 and NaN included)."""
    if arr.dtype.kind == "f":
        return arr.reshape(-1).view(np.dtype(f"u{arr.dtype.itemsize}")) != 0
    return arr.reshape(-1) != 0


def should_store_sparse(arr: np.ndarray, max_density: Optional[float] = None) -> bool:
    """Whether ``arr`` goes into a ``sparse_initializer``.

    Default (``max_density=None``): when the COO payload is smaller than the dense one, i.e. density below
    ``itemsize / (itemsize + 8)`` (1/3 for float32). With ``max_density``: when density <= max_density.
    """
    if arr.size == 0 or arr.dtype.kind not in "fiu":
        return False
    nnz = int(np.count_nonzero(_stored_mask(arr)))
    if max_density is None:
        return coo_bytes(nnz, arr.dtype.itemsize) < arr.size * arr.dtype.itemsize
    return nnz / arr.size <= max_density


def canonicalize(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy with ``Constant`` tensor nodes lifted to initializers, the initializers no node reads dropped, and the
    rest sorted by name.

    paddle2onnx emits weights as ``Constant`` nodes; as initializers they can be stored sparse. Tensors are
    re-encoded as ``raw_data`` so :func:`densify` can reproduce them bit for bit, and -0.0 (what masking by
    multiplication leaves for negative weights) becomes +0.0, so a pruned zero costs nothing in COO form.
    Values are unchanged (-0.0 == 0.0), so is the graph's semantics.
    """
    from onnx import numpy_helper

    out = copy.deepcopy(model)
    g = out.graph
    graph_outputs = {o.name for o in g.output}
    tensors = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    keep = []
    for node in g.node:
        if (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1
                and node.attribute[0].name == "value" and node.output[0] not in graph_outputs
                and node.output[0] not in tensors):
            tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    used = _read_names(g) | graph_outputs  # an initializer no node reads makes onnxruntime warn on every load
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(_plus_zero(tensors[n]), n) for n in sorted(tensors) if n in used)
    return out


def _read_names(graph: "onnx.GraphProto") -> Set[str]:
    """Every value name a node of ``graph`` or of its subgraphs (If/Loop bodies) reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                names |= _read_names(sub)
    return names


def _plus_zero(arr: np.ndarray) -> np.ndarray:
    """``arr`` with -0.0 replaced by +0.0 (masking by multiplication leaves -0.0 for negative weights)."""
    if arr.dtype.kind == "f" and arr.size and np.any(np.signbit(arr) & (arr == 0)):
        arr = np.where(arr == 0, np.zeros((), arr.dtype), arr).astype(arr.dtype)
    return arr


def compress(model: "onnx.ModelProto", max_density: Optional[float] = None) -> Tuple["onnx.ModelProto", List[str]]:
    """(canonical model with sparse weights as ``sparse_initializer``s, names stored sparse).

    Integer tensors (shapes, indices) are never touched; see :func:`should_store_sparse` for the cut-off.
    """
    import onnx
    from onnx import numpy_helper

    out = canonicalize(model)
    g = out.graph
    dense, names = [], []
    bytes_before = bytes_after = 0
    for t in g.initializer:
        arr = numpy_helper.to_array(t)
        bytes_before += arr.nbytes
        if t.data_type in _FLOAT_TYPES and should_store_sparse(arr, max_density):
            flat = arr.reshape(-1)
            idx = np.flatnonzero(_stored_mask(arr)).astype(np.int64)
            values = numpy_helper.from_array(flat[idx], t.name)
            indices = numpy_helper.from_array(idx, t.name + "_indices")
            g.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, list(arr.shape)))
            names.append(t.name)
            bytes_after += coo_bytes(idx.size, arr.dtype.itemsize)
        else:
            dense.append(t)
            bytes_after += arr.nbytes
    del g.initializer[:]
    g.initializer.extend(dense)
    # the file states what it saves; densify() drops these entries again
    onnx.helper.set_model_props(out, {
        **{p.key: p.value for p in out.metadata_props},
        _META_SPARSE: str(len(names)),
        _META_BYTES: f"{bytes_before} -> {bytes_after} ({bytes_after / max(bytes_before, 1):.3f}x)",
    })
    return out, names


def _sparse_to_array(sp: "onnx.SparseTensorProto") -> np.ndarray:
    from onnx import numpy_helper

    values = numpy_helper.to_array(sp.values)
    idx = numpy_helper.to_array(sp.indices).astype(np.int64)
    shape = tuple(int(d) for d in sp.dims)
    dense = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=values.dtype)
    if idx.ndim == 2:  # [NNZ, rank] coordinates
        idx = np.ravel_multi_index(tuple(idx.T), shape) if idx.size else idx.reshape(-1)
    dense[idx] = values
    return dense.reshape(shape)


def densify(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy with every ``sparse_initializer`` turned back into a dense initializer (sorted by name)."""
    from onnx import numpy_helper

    out = copy.deepcopy(model)
    g = out.graph
    tensors = {t.name: t for t in g.initializer}
    for sp in g.sparse_initializer:
        tensors[sp.values.name] = numpy_helper.from_array(_sparse_to_array(sp), sp.values.name)
    del g.sparse_initializer[:]
    del g.initializer[:]
    g.initializer.extend(tensors[n] for n in sorted(tensors))
    kept = [(p.key, p.value) for p in out.metadata_props if p.key not in (_META_SPARSE, _META_BYTES)]
    del out.metadata_props[:]
    for key, value in kept:
        out.metadata_props.add(key=key, value=value)
    return out


def onnx_tensors(model: "onnx.ModelProto") -> Dict[str, np.ndarray]:
    """Name -> array of every constant tensor: initializers, sparse initializers (dense), Constant nodes."""
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for sp in model.graph.sparse_initializer:
        out[sp.values.name] = _sparse_to_array(sp)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out.setdefault(node.output[0], numpy_helper.to_array(node.attribute[0].t))
    return out
