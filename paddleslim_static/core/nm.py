"""N:M semi-structured sparsity: keep the N largest |w| of every M consecutive weights along the reduction axis.

Pure numpy (no Paddle import). **N counts kept weights** ('2:4' keeps 2 of every 4, NVIDIA's spelling); Paddle ASP's
``n`` counts *zeroed* weights, so ``is_nm_sparse(w, n, m, ...)`` equals ASP's ``check_sparsity(., n=m - n, m=m)``
on ASP's transposed view (see docs/nm.md).

Layouts (which axis holds the M consecutive weights):

* ``'linear'`` - a 2-D matmul weight ``[in, out]`` (Paddle ``Linear``): groups run down axis 0 (``in``), one
  column (output feature) at a time;
* ``'conv'`` - a 4-D ``Conv2D`` weight ``[out, in, kh, kw]``: groups run along axis 1 (``in``) at each fixed
  ``(out, kh, kw)``. This is the channel-fastest order of the reduction ``in * kh * kw`` that cuSPARSELt /
  TensorRT (NHWC implicit GEMM) and Paddle ASP use;
* an ``int`` - any tensor, groups along that axis.

Exact rules: scores are ``|w|`` compared exactly in the weight's own dtype (bit patterns, no float32 rounding);
existing zeros score lowest; ties are broken by position - the weight **earlier** along the axis is kept (a stable
descending sort); NaN scores above +inf (kept: a NaN is never hidden). When the axis length L is not a multiple
of M, the last group holds ``r = L % M`` weights and keeps ``min(N, r)`` of them - exactly what ASP's zero padding
to a multiple of M gives.

>>> import numpy as np
>>> w = np.array([[0.1, -3.0], [2.0, 0.0], [-0.5, 0.0], [0.4, 1.0]], np.float32)  # Linear weight [in=4, out=2]
>>> nm_mask(w, 2, 4, 'linear').astype(int).T.tolist()   # per output column: the 2 largest |w| of the 4 inputs
[[0, 1, 1, 0], [1, 0, 0, 1]]
>>> is_nm_sparse(w * nm_mask(w, 2, 4, 'linear'), 2, 4, 'linear')
True
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = [
    "LINEAR", "CONV", "Layout", "NMVerdict", "parse_pattern", "check_nm", "reduction_axis", "nm_skip_reason",
    "nm_mask", "fill_nm_mask", "is_nm_sparse", "nm_violations", "all_nm_sparse",
]

LINEAR = "linear"
CONV = "conv"
Layout = Union[str, int]

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_PAIRWISE_MAX_M = 16  # up to here the rank is counted by M vectorised comparisons; above, a partition + tie count


def check_nm(n: Any, m: Any, name: str = "sparse_pattern") -> Tuple[int, int]:
    """Validate N and M: ints with 1 <= N < M. ValueError/TypeError naming ``name`` otherwise."""
    for v in (n, m):
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise TypeError(f"{name} must be N:M with integers 1 <= N < M; got N={n!r}, M={m!r}")
    if not 1 <= int(n) < int(m):
        raise ValueError(f"{name} must be N:M with 1 <= N < M; got {int(n)}:{int(m)}")
    return int(n), int(m)


def parse_pattern(pattern: Any, name: str = "sparse_pattern") -> Tuple[int, int]:
    """``'2:4'`` or ``(2, 4)`` -> ``(2, 4)``: N kept of every M, 1 <= N < M.

    >>> parse_pattern('2:4'), parse_pattern((1, 8))
    ((2, 4), (1, 8))
    >>> parse_pattern('4:2')
    Traceback (most recent call last):
    ...
    ValueError: sparse_pattern must be N:M with 1 <= N < M; got 4:2
    """
    if isinstance(pattern, str):
        match = _PATTERN.match(pattern)
        if match is None:
            raise ValueError(f"{name} must be a string 'N:M' such as '2:4'; got {pattern!r}")
        return check_nm(int(match.group(1)), int(match.group(2)), name)
    if isinstance(pattern, (tuple, list)) and len(pattern) == 2:
        return check_nm(pattern[0], pattern[1], name)
    raise TypeError(f"{name} must be 'N:M' (str) or a pair (N, M); got {pattern!r} ({type(pattern).__name__})")


def reduction_axis(layout: Any, shape: Tuple[int, ...]) -> int:
    """The axis the groups run along for ``layout`` on a tensor of ``shape`` (validated)."""
    ndim = len(shape)
    if isinstance(layout, str):
        if layout == LINEAR:
            if ndim != 2:
                raise ValueError(f"layout 'linear' needs a 2-D [in, out] weight; got shape {tuple(shape)}")
            return 0
        if layout == CONV:
            if ndim != 4:
                raise ValueError(f"layout 'conv' needs a 4-D [out, in, kh, kw] weight; got shape {tuple(shape)}")
            return 1
        raise ValueError(f"layout must be 'linear', 'conv' or an int axis; got {layout!r}")
    if isinstance(layout, bool) or not isinstance(layout, Integral):
        raise TypeError(f"layout must be 'linear', 'conv' or an int axis; got {layout!r} ({type(layout).__name__})")
    if not -ndim <= int(layout) < ndim:
        raise ValueError(f"layout axis {layout} is out of range for shape {tuple(shape)}")
    return int(layout) % ndim


def nm_skip_reason(shape: Tuple[int, ...], m: int, layout: Layout) -> Optional[str]:
    """Why a weight of this shape is left dense under N:M, or None when it qualifies.

    A reduction axis shorter than M has no full group (ASP leaves these dense and so do we).
    """
    axis = reduction_axis(layout, tuple(shape))
    if shape[axis] < m:
        return f"reduction axis {axis} has {shape[axis]} < M={m} weights"
    return None


def _split(shape: Tuple[int, ...], axis: int) -> Tuple[int, int, int]:
    pre = int(np.prod(shape[:axis], dtype=np.int64))
    post = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return pre, shape[axis], post


def _keys(w: np.ndarray) -> np.ndarray:
    """|w| as unsigned bit patterns (sign cleared): same order as |w|, NaN above +inf, exact in any float dtype."""
    if w.dtype.kind != "f" or w.dtype.itemsize not in _UINT:
        raise TypeError(f"w must be a float16/32/64 array; got dtype {w.dtype}")
    u = _UINT[w.dtype.itemsize]
    bits = np.ascontiguousarray(w).view(u)
    return np.bitwise_and(bits, u(np.iinfo(u).max >> 1))


def _keep_top(keys: np.ndarray, n: int, out: np.ndarray) -> None:
    """keys (P, G, M, Q): out[p, g, i, q] = key i is among the n largest of its group (earlier index wins ties)."""
    m = keys.shape[2]
    if m <= _PAIRWISE_MAX_M:
        # rank_i = #{j : j beats i}, kept when rank_i < n; for j < i, j beats i iff k_j >= k_i (else i beats j).
        # One comparison per pair, in place: M(M-1)/2 passes over a 1/M slice.
        rank = np.zeros(keys.shape, np.uint8)
        beats = np.empty(keys[:, :, 0, :].shape, np.bool_)
        for j in range(m):
            kj, rj = keys[:, :, j, :], rank[:, :, j, :]
            for i in range(j + 1, m):
                ri = rank[:, :, i, :]
                np.greater_equal(kj, keys[:, :, i, :], out=beats)
                np.add(ri, beats, out=ri, casting="unsafe")
                np.logical_not(beats, out=beats)
                np.add(rj, beats, out=rj, casting="unsafe")
        np.less(rank, n, out=out)
        return
    # the n-th largest key t of every group (selection, not a sort); keep keys > t, then the earliest keys == t
    t = np.partition(keys, m - n, axis=2)[:, :, m - n:m - n + 1, :]
    np.greater(keys, t, out=out)
    room = n - out.sum(axis=2, keepdims=True)  # how many keys equal to t the group still keeps
    ties = keys == t
    out |= ties & (np.cumsum(ties, axis=2) <= room)


def fill_nm_mask(
    w: np.ndarray, n: int, m: int, layout: Layout, out: np.ndarray, apply: bool = False, intersect: bool = False
) -> np.ndarray:
    """Write the N:M mask of ``w`` into the bool array ``out`` (same shape) and return ``out``.

    ``intersect=True`` ANDs it into what ``out`` already holds (e.g. a magnitude-threshold mask; the result is
    still N:M because a subset of an N:M mask is). ``apply=True`` then zeroes the pruned weights of ``w`` in place
    (assigned, not multiplied: a pruned inf or NaN becomes 0).
    Validates everything before writing anything.
    """
    n, m = check_nm(n, m, "n, m")
    if not isinstance(w, np.ndarray) or not isinstance(out, np.ndarray):
        raise TypeError(f"w and out must be numpy arrays; got {type(w).__name__}, {type(out).__name__}")
    if out.dtype != np.bool_ or out.shape != w.shape:
        raise ValueError(f"out must be a bool array of shape {w.shape}; got {out.dtype} {out.shape}")
    axis = reduction_axis(layout, w.shape)
    keys = _keys(w)
    pre, length, post = _split(w.shape, axis)
    keys = keys.reshape(pre, length, post)
    mask = np.empty((pre, length, post), np.bool_)
    full = length - length % m
    if full:
        main = np.empty((pre, full // m, m, post), np.bool_)
        _keep_top(keys[:, :full, :].reshape(pre, full // m, m, post), n, main)
        mask[:, :full, :] = main.reshape(pre, full, post)
    if full < length:  # tail group of r < M weights: keeps min(N, r), as zero padding to M would
        r = length - full
        if n >= r:
            mask[:, full:, :] = True
        else:
            tail = np.empty((pre, 1, r, post), np.bool_)
            _keep_top(keys[:, full:, :].reshape(pre, 1, r, post), n, tail)
            mask[:, full:, :] = tail.reshape(pre, r, post)
    mask = mask.reshape(w.shape)
    if intersect:
        np.logical_and(out, mask, out=out)
    else:
        out[...] = mask
    if apply:  # assign rather than multiply: a pruned inf/NaN becomes 0, not NaN
        np.copyto(w, 0, where=~out)
    return out


def nm_mask(w: np.ndarray, n: int, m: int, layout: Layout) -> np.ndarray:
    """A new bool mask keeping the N largest |w| of every M consecutive weights along ``layout``'s axis.

    >>> import numpy as np
    >>> nm_mask(np.array([3., 0., 0., 0., 1., 1.], np.float32), 2, 4, 0).astype(int).tolist()  # ties: earlier kept
    [1, 1, 0, 0, 1, 1]
    """
    w = np.asarray(w)
    return fill_nm_mask(w, n, m, layout, np.empty(w.shape, np.bool_))


def _group_nonzeros(w: np.ndarray, m: int, layout: Layout) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    w = np.asarray(w)
    axis = reduction_axis(layout, w.shape)
    pre, length, post = _split(w.shape, axis)
    nz = (w != 0).reshape(pre, length, post)  # NaN != 0: a NaN counts as nonzero
    full = length - length % m
    counts = nz[:, :full, :].reshape(pre, full // m, m, post).sum(axis=2)
    tail = nz[:, full:, :].sum(axis=1) if full < length else None
    return counts, tail


def nm_violations(w: np.ndarray, n: int, m: int, layout: Layout) -> Tuple[int, int]:
    """(groups with more than N nonzeros, number of groups) - the tail group, if any, included."""
    n, m = check_nm(n, m, "n, m")
    counts, tail = _group_nonzeros(w, m, layout)
    bad = int(np.count_nonzero(counts > n))
    total = int(counts.size)
    if tail is not None:
        bad += int(np.count_nonzero(tail > n))
        total += int(tail.size)
    return bad, total


def is_nm_sparse(w: np.ndarray, n: int, m: int, layout: Layout) -> bool:
    """Whether every group of M consecutive weights along ``layout``'s axis has at most N nonzeros.

    >>> import numpy as np
    >>> is_nm_sparse(np.array([[1., 0.], [0., 2.], [0., 3.], [4., 0.]]), 2, 4, 'linear')
    True
    """
    return nm_violations(w, n, m, layout)[0] == 0


@dataclass(frozen=True)
class NMVerdict:
    """One parameter's N:M check. ``ok`` is None when the parameter was skipped (``reason`` says why)."""

    name: str
    shape: Tuple[int, ...]
    layout: Optional[Layout]
    ok: Optional[bool]
    violations: int = 0
    groups: int = 0
    reason: str = ""

    @property
    def skipped(self) -> bool:
        return self.ok is None


def all_nm_sparse(verdicts: Mapping[str, NMVerdict]) -> bool:
    """True when at least one parameter was checked and every checked parameter is N:M sparse."""
    checked = [v for v in verdicts.values() if not v.skipped]
    return bool(checked) and all(v.ok for v in checked)
