"""Static masks across representations. ``paddle.static.load`` puts whatever a checkpoint holds into a scope variable,
whatever its dtype and shape, so a checkpoint saved by a pruner with ``packed_masks=True`` (bit-packed uint8,
``ceil(n/8)`` bytes) loaded into a program built with ``packed_masks=False`` (bool of the parameter's shape), or the
reverse, leaves the mask in the other representation. :func:`adopt_representation` converts such a mask in place
(the same bits) and refuses anything else with one ValueError naming the variable and both representations; the
static pruner runs it before every call that reads its masks.

>>> import numpy as np, paddle
>>> scope = paddle.static.Scope()
>>> scope.var('w_mask').get_tensor().set(np.array([[True, False], [False, True]]), paddle.CPUPlace())
>>> adopt_representation(scope, {'w': 'w_mask'}, {'w': (2, 2)}, packed=True)
['w']
>>> np.array(scope.find_var('w_mask').get_tensor()).tolist()  # 1001 then zero padding
[144]
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .core.packing import pack_mask, packed_size, unpack_mask
from .scope_io import is_initialized, tensor_of, write_scope

__all__ = ["adopt_representation"]

_log = logging.getLogger(__name__)


def _describe(shape: Sequence[int], packed: bool) -> str:
    n = int(np.prod(shape, dtype=np.int64))
    return (f"bit-packed uint8[{packed_size(n)}] (packed_masks=True)" if packed
            else f"bool{list(shape)} (packed_masks=False)")


def adopt_representation(scope: Any, mask_of: Mapping[str, str], shapes: Mapping[str, Tuple[int, ...]],
                         packed: bool) -> List[str]:
    """Convert every initialised mask variable of ``mask_of`` (parameter -> variable) holding the other
    representation into the one of ``packed``; returns the parameters converted. Every mask is checked before any is
    written: a mask that is neither representation of its parameter's shape is a ValueError and nothing changes."""
    todo: Dict[str, np.ndarray] = {}
    for n, var in mask_of.items():
        if not is_initialized(scope, var):
            continue  # the startup program has not run: the pruner says so where it reads the mask
        t = tensor_of(scope, var)
        dtype, dims = str(t._dtype()).replace("paddle.", ""), tuple(int(d) for d in t.shape())
        shape = tuple(int(d) for d in shapes[n])
        size, nbytes = int(np.prod(shape, dtype=np.int64)), packed_size(int(np.prod(shape, dtype=np.int64)))
        numel = int(np.prod(dims, dtype=np.int64))
        if packed and dtype == "uint8" and dims == (nbytes,) or not packed and dtype == "bool" and dims == shape:
            continue  # the usual case: two attribute reads, no copy
        if dtype == "bool" and numel == size:
            bits = np.array(t).reshape(shape)
            todo[var] = pack_mask(bits) if packed else bits
        elif dtype == "uint8" and numel == nbytes:
            bits = np.array(t).reshape(-1)
            todo[var] = bits if packed else unpack_mask(bits, shape)
        else:
            raise ValueError(
                f"mask variable {var!r} of parameter {n!r} holds {dtype}{list(dims)}, which is neither "
                f"representation of a mask of shape {list(shape)}: {_describe(shape, packed)}, which this program "
                f"uses, nor {_describe(shape, not packed)}; the checkpoint loaded into this scope was saved from "
                "another program"
            )
    for var, value in todo.items():
        write_scope(scope, var, value)  # an initialised variable stays on its own place
    if todo:
        _log.info("converted %d mask variable(s) to the %s representation (e.g. %r)", len(todo),
                  "bit-packed" if packed else "bool", next(iter(todo)))
    return [n for n, var in mask_of.items() if var in todo]
