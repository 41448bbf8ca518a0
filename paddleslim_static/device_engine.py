"""The engine of Paddle operations: thresholds and masks computed where the tensors live (an accelerator, or the CPU
when forced), bit for bit what the numpy/C core (:mod:`paddleslim_static.core.engine`) computes.

It takes ``paddle.Tensor`` weights and bool mask tensors (not host arrays) and never copies either to the host:

* **ratio selection** is an exact radix selection over the 31-bit keys ``bits(float32(|w|))`` (the order of the
  scores): two histograms (16 and 15 bits) by ``paddle.bincount``, each narrowing to the bucket that holds
  the k-th key, located on the device by a cumulative sum. Block scores are weighted by the elements each block
  stands for. Nothing is sorted; the only transfer is the final keys and a non-finite count (a few int64 scalars);
  with ``collectives`` the two histograms (65536 + 32768 int64, 768 KiB) are summed across ranks on the host.
* **block scores** are the float32-rounded float64 mean |w| summed in the core's order (a block's rows first, in
  row order, then its columns left to right); the edge blocks are zero-padded, which adds exact zeros.
* **masks** compare the same keys with the threshold's key; applying one is an in-place multiply
  (``w * 1`` or ``w * 0`` in the weight's dtype, as ``np.multiply``), and masks are written in place.
* **N:M** ranks every weight in its group of M by its key in the weight's own dtype (earlier weight wins a tie) and
  keeps rank < N, as :func:`paddleslim_static.core.nm.fill_nm_mask` does.
* **NaN / Inf**: a ratio selection or summary that sees one raises
  :class:`~paddleslim_static.core.selection.NonFiniteScoreError` with the core's message; threshold masks keep NaN.

Hints (warm starts) change only the speed of the core's selection; this one always makes two passes.

>>> import numpy as np, paddle
>>> from paddleslim_static.device_engine import PaddleEngine
>>> w = {'a': paddle.to_tensor([[1., -2.], [3., 0.]]), 'b': paddle.to_tensor([[0.5, 4.]])}
>>> g, per = PaddleEngine().ratio_thresholds(w, 0.5, local=False, block=(1, 1))
>>> float(g), per
(2.0, {})
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import paddle

from .core.nm import reduction_axis
from .core.scores import uses_blocks
from .core.selection import DIRECT_MAX, SOLO, SelectionStats, _check_finite, prune_count
from .device_masks import block_scores, expand_blocks, pack_bits, unpack_bits

__all__ = ["PaddleEngine", "DeviceSource", "PADDLE", "ENGINE_ENV", "engine_name", "use_device_engine", "pack_bits",
           "unpack_bits"]  # pack_bits / unpack_bits: re-exported from device_masks

ENGINE_ENV = "PADDLESLIM_ENGINE"

Block = Tuple[int, int]
Tensors = Mapping[str, paddle.Tensor]

_PASSES = ((15, 16), (0, 15))  # (shift, bits): the 31 key bits, high to low, in two histogram passes
_INF_BUCKET = 0x7F800000 >> 15  # first-pass buckets from here on hold Inf / NaN keys
_INF_KEY = 0x7F800000
_ABS = {"int16": 0x7FFF, "int32": 0x7FFFFFFF}


@dataclass
class DeviceSource:
    """The selection source of one tensor on its device: the weight (element scores, keys made on each pass) or
    its block scores and the element count of each block."""

    weight: paddle.Tensor
    name: str
    scores: Optional[paddle.Tensor] = None  # float32 (blocks down, blocks across)
    counts: Optional[paddle.Tensor] = None  # int64, same shape: elements per block

    @property
    def total(self) -> int:
        return int(np.prod(self.weight.shape, dtype=np.int64))

    def keys(self) -> paddle.Tensor:
        """Flat int32 keys (sign bit cleared): they order like the float32 scores, NaN above +Inf."""
        return _keys32(self.scores if self.scores is not None else self.weight).reshape([-1])

    def flat_counts(self) -> Optional[paddle.Tensor]:
        return None if self.counts is None else self.counts.reshape([-1])


def _const(ref: paddle.Tensor, value: int, dtype: str) -> paddle.Tensor:
    """A 0-d tensor on ``ref``'s device (bitwise ops take no Python scalars)."""
    return paddle.full_like(ref.reshape([-1])[:1], value, dtype=dtype).reshape([])


def _keys32(x: paddle.Tensor) -> paddle.Tensor:
    """int32 keys of float32(|x|): the float32 bit pattern with the sign cleared (exact for every float dtype the
    core widens or rounds to float32: float16, bfloat16, float64)."""
    f = x if x.dtype == paddle.float32 else x.astype("float32")
    bits = paddle.view(f.contiguous() if hasattr(f, "contiguous") else f, "int32")
    return paddle.bitwise_and(bits, _const(bits, 0x7FFFFFFF, "int32"))


def _own_keys(x: paddle.Tensor) -> paddle.Tensor:
    """|x| as signed integer keys in x's own width (N:M compares in the weight's dtype, like the core)."""
    width = {paddle.float16: "int16", paddle.bfloat16: "int16", paddle.float32: "int32", paddle.float64: "int64"}
    if x.dtype not in width:
        raise TypeError(f"w must be a float16/bfloat16/float32/float64 tensor; got dtype {x.dtype}")
    kind = width[x.dtype]
    if kind == "int64":  # a 2**63 - 1 constant does not survive paddle.full; |x| clears the same bit exactly
        return paddle.view(paddle.abs(x), kind)
    bits = paddle.view(x, kind)
    return paddle.bitwise_and(bits, _const(bits, _ABS[kind], kind))


def _threshold_key(t: Any) -> int:
    """The uint32 key of float32(t), as the core's ``_key``; a key >= 2**31 (t = -0.0) is above every score key."""
    return int(np.array(np.float32(t), np.float32).view(np.uint32))


def _shift(x: paddle.Tensor, s: int) -> paddle.Tensor:
    return x if s == 0 else paddle.bitwise_right_shift(x, _const(x, s, "int32"))


def _low_bits(x: paddle.Tensor, bits: int) -> paddle.Tensor:
    return paddle.bitwise_and(x, _const(x, (1 << bits) - 1, "int32"))


class PaddleEngine:
    """The engine protocol of :mod:`paddleslim_static.core.engine` over ``paddle.Tensor`` weights and bool masks.

    Every method runs Paddle operations on the tensors' own device; weights and masks are written in place.
    Call it in dygraph mode (the static backend enters a dygraph guard around it).
    """

    name = "paddle"

    # -- scores ------------------------------------------------------------------------------------
    def score_sources(self, weights: Tensors, block: Block) -> Dict[str, DeviceSource]:
        """Each weight's selection source: the weight, or its block scores (computed once per step)."""
        out: Dict[str, DeviceSource] = {}
        for name, w in weights.items():
            if uses_blocks(tuple(w.shape), block):
                scores, counts = block_scores(w, block)
                out[name] = DeviceSource(w, name, scores, counts)
            else:
                out[name] = DeviceSource(w, name)
        return out

    # -- selection ---------------------------------------------------------------------------------
    def ratio_thresholds(
        self, weights: Tensors, ratio: float, local: bool, block: Block, sources: Optional[Mapping] = None,
        *, hint: Any = None, hint_width: Optional[float] = None, collectives: Any = None,
        prune_counts: Optional[Mapping[str, int]] = None, max_scores: Optional[Dict[str, float]] = None,
        stats: Optional[SelectionStats] = None,
    ) -> Tuple[Optional[np.float32], Dict[str, np.float32]]:
        """(global threshold, per-parameter thresholds), as :func:`paddleslim_static.core.engine.ratio_thresholds`.

        ``prune_counts`` (local mode): how many elements of each parameter to prune instead of round(ratio * n).
        ``max_scores`` (global mode): receives each parameter's largest score (the max of the keys the first pass
        reads anyway, sent with the threshold in the same transfer).
        ``stats``: a :class:`~paddleslim_static.core.selection.SelectionStats` that receives ``passes``
        (histogram passes over the weights) and ``host_bytes``. ``hint`` / ``hint_width`` are accepted for the
        protocol and unused (the histogram passes need no bracket)."""
        sources = self.score_sources(weights, block) if sources is None else sources
        srcs = [sources[n] for n in weights]
        if local:
            ks = [prune_count(s.total, ratio) if prune_counts is None else int(prune_counts[s.name]) for s in srcs]
            keys = _select_each(srcs, ks, stats)
            return None, {s.name: np.uint32(k).view(np.float32) for s, k in zip(srcs, keys)}
        comm = SOLO if collectives is None else _group(collectives)
        total = comm.sum([sum(s.total for s in srcs)])[0]
        k = prune_count(total, ratio)
        if k >= total:
            return np.float32(np.inf), {}
        tops: Optional[Dict[str, int]] = None if max_scores is None else {}
        g = np.uint32(_select_global(srcs, k, total, comm, stats, tops)).view(np.float32)
        if tops:  # filled after the selection's own non-finite check
            max_scores.update({n: float(np.uint32(t).view(np.float32)) for n, t in tops.items()})
        return g, {}

    def summarize(self, weights: Tensors, ratio: float) -> float:
        """|w| at sorted position max(0, ceil(ratio * N) - 1) over all given weights."""
        srcs = [DeviceSource(w, n) for n, w in weights.items()]
        n = sum(s.total for s in srcs)
        if n == 0:
            raise ValueError("summarize_weights: the model has no prunable weights")
        k = max(0, math.ceil(ratio * n) - 1)
        return float(np.uint32(_select_global(srcs, k, n, SOLO, None)).view(np.float32))

    # -- masks -------------------------------------------------------------------------------------
    def fill_masks(self, weights: Tensors, masks: Tensors, threshold: Optional[float],
                   thresholds: Mapping[str, float], block: Block, apply: bool = False,
                   sources: Optional[Mapping] = None) -> None:
        """masks[n] = score(weights[n]) >= threshold (per-parameter ``thresholds`` win); ``apply``: zero the pruned
        weights too."""
        with paddle.no_grad():
            for name, w in weights.items():
                t_key = _threshold_key(thresholds.get(name, threshold))
                src = None if sources is None else sources.get(name)
                if uses_blocks(tuple(w.shape), block):
                    scores = src.scores if src is not None and src.scores is not None else block_scores(w, block)[0]
                    keep = expand_blocks(_at_least(_keys32(scores), t_key), tuple(w.shape), block)
                else:
                    keep = _at_least(_keys32(w), t_key)
                paddle.assign(keep, output=masks[name])
                if apply:
                    _multiply_(w, keep)

    def fill_nm(self, weights: Tensors, masks: Tensors, n: int, m: int, layouts: Mapping[str, Any]) -> None:
        """masks[name] &= the N:M mask of weights[name] along ``layouts[name]``'s axis."""
        with paddle.no_grad():
            for name, w in weights.items():
                keep = _nm_keep(w, n, m, layouts[name])
                paddle.assign(paddle.logical_and(masks[name], keep), output=masks[name])

    def apply_masks(self, weights: Tensors, masks: Tensors) -> None:
        """weights[n] *= masks[n], in place on the device."""
        with paddle.no_grad():
            for name, w in weights.items():
                _multiply_(w, masks[name])

    def masks_from_nonzero(self, weights: Tensors, masks: Tensors) -> None:
        """masks[n] = weights[n] != 0 (NaN != 0; a denormal is nonzero, which Paddle's CPU compare would miss)."""
        with paddle.no_grad():
            for name, w in weights.items():
                paddle.assign(_nonzero(w), output=masks[name])

    def masks_match_nonzero(self, weights: Tensors, masks: Tensors) -> Dict[str, bool]:
        """Whether each mask equals ``weight != 0`` (one transfer of len(weights) bools)."""
        flags = [paddle.all(paddle.equal(masks[n], _nonzero(w))).reshape([1])
                 for n, w in weights.items()]
        got = paddle.concat(flags).numpy() if flags else np.zeros(0, bool)
        return {n: bool(v) for n, v in zip(weights, got)}

    # -- checks ------------------------------------------------------------------------------------
    def max_abs_over_f32(self, weights: Tensors, limit: float) -> Optional[Tuple[str, float]]:
        """The first non-float32 weight whose max |w| exceeds ``limit`` and that max, or None (one transfer)."""
        wide = [(n, w) for n, w in weights.items() if w.dtype == paddle.float64 and w.size]
        if not wide:
            return None
        maxes = paddle.stack([paddle.max(paddle.abs(w)) for _, w in wide]).numpy()
        return next(((n, float(v)) for (n, _), v in zip(wide, maxes) if float(v) > limit), None)

    def first_nonfinite(self, weights: Tensors) -> Optional[str]:
        """Name of the first weight holding NaN or Inf (error path only)."""
        return next((n for n, w in weights.items() if not bool(paddle.isfinite(w).all())), None)

    def to_host(self, x: paddle.Tensor) -> np.ndarray:
        """A host copy (explicit: only error paths and checkpoints ask); bfloat16 widened to float32 exactly, as the
        numpy/C engine sees it."""
        if x.dtype == paddle.bfloat16:
            return (x.numpy().astype(np.uint32) << np.uint32(16)).view(np.float32)
        return x.numpy()


def _nonzero(w: paddle.Tensor) -> paddle.Tensor:
    """w != 0 by bits: only +-0 has an all-zero key."""
    keys = _own_keys(w)
    return paddle.not_equal(keys, paddle.zeros_like(keys))


def _multiply_(w: paddle.Tensor, keep: paddle.Tensor) -> None:
    """w *= keep in place, in w's dtype (x * 1 = x, x * 0 = signed zero or NaN: exact, so where Paddle has no
    float16 multiply kernel (CPU) the product is taken in float32, as numpy's float16 multiply does)."""
    if w.dtype == paddle.float16 and w.place.is_cpu_place():
        paddle.assign((w.astype("float32") * keep.astype("float32")).astype("float16"), output=w)
    else:
        w.multiply_(keep.astype(w.dtype))


PADDLE = PaddleEngine()


def engine_name() -> str:
    """``PADDLESLIM_ENGINE`` from the environment: 'paddle', 'numpy' or '' (unset: the best for the place)."""
    value = os.environ.get(ENGINE_ENV, "").strip().lower()
    if value not in ("", "auto", "paddle", "numpy"):
        raise ValueError(f"{ENGINE_ENV} must be 'paddle', 'numpy' or unset; got {value!r}: fix the environment "
                         "variable")
    return "" if value == "auto" else value


def use_device_engine(on_cpu: bool) -> bool:
    """Whether tensors on this place go to the Paddle engine: forced by ``PADDLESLIM_ENGINE``, otherwise for
    tensors off the CPU (on the CPU the numpy/C engine is faster and reads the tensors in place).

    >>> engine_name() in ("", "paddle", "numpy")
    True
    """
    name = engine_name()
    return name == "paddle" if name else not on_cpu


# -- selection internals ---------------------------------------------------------------------------
def _group(collectives: Any) -> Any:
    from .core.distributed import Group

    return Group(collectives)


def _hist(src: DeviceSource, shift: int, bits: int, prefix: Optional[paddle.Tensor],
          maxes: Optional[List[paddle.Tensor]] = None) -> paddle.Tensor:
    """Histogram (2**bits + 1 bins, the last for keys outside ``prefix``) of the ``bits`` key bits above ``shift``
    of the keys whose higher bits equal ``prefix``; weighted by block sizes. int64 on the device. ``maxes``: the
    source's largest key is appended (a shape-[1] int64 tensor)."""
    keys = src.keys()
    if maxes is not None:
        maxes.append(paddle.max(keys).astype("int64").reshape([1]))
    idx = _shift(keys, shift)
    if shift + bits < 31:
        idx = _low_bits(idx, bits)
    if prefix is not None:
        inside = paddle.equal(_shift(keys, shift + bits), prefix.astype("int32"))
        idx = paddle.where(inside, idx, paddle.full_like(idx, 1 << bits))
    counts = src.flat_counts()
    h = paddle.bincount(idx, weights=counts, minlength=(1 << bits) + 1)
    return h if counts is None else h.astype("int64")  # weighted bincount sums in float64: exact below 2**53


def _locate(hist: paddle.Tensor, r: paddle.Tensor, prefix: paddle.Tensor, bits: int):
    """For each row: the bucket j holding the r-th key, r within it, and prefix * 2**bits + j (on the device)."""
    cum = paddle.cumsum(hist[:, : 1 << bits], axis=1)
    j = paddle.sum((cum <= r.unsqueeze(1)).astype("int64"), axis=1)
    before = paddle.take_along_axis(cum, paddle.clip(j - 1, min=0).unsqueeze(1), axis=1).squeeze(1)
    before = paddle.where(j > 0, before, paddle.zeros_like(before))
    return r - before, prefix * (1 << bits) + j


def _select_each(srcs: Sequence[DeviceSource], ks: Sequence[int], stats: Optional[SelectionStats]) -> List[int]:
    """The ks[i]-th smallest key of each source on its own (local mode); +Inf's key where k >= its size."""
    live = [i for i, (s, k) in enumerate(zip(srcs, ks)) if k < s.total]
    out = [_INF_KEY] * len(srcs)
    if not live:
        return out
    found = [_select_on_device([srcs[i]], ks[i]) for i in live]  # (key, non-finite count) tensors per source
    got = paddle.concat([t for pair in found for t in pair]).numpy()  # the one transfer for all of them
    _count(stats, len(_PASSES), got.nbytes)
    for j, i in enumerate(live):
        if got[2 * j + 1]:
            _raise_nonfinite([srcs[i]], srcs[i].total)
        out[i] = int(got[2 * j])
    return out


def _select_on_device(srcs: Sequence[DeviceSource], k: int, maxes: Optional[List[paddle.Tensor]] = None
                      ) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """(key of the k-th smallest score over ``srcs``, number of non-finite scores), both shape-[1] int64 tensors on
    the device: one histogram per pass, the bucket located by a cumulative sum there. ``maxes`` receives each
    source's largest key (from the first pass's keys)."""
    r = _const(srcs[0].weight, k, "int64").reshape([1])
    prefix = paddle.zeros_like(r)
    bad = r
    for p, (shift, bits) in enumerate(_PASSES):
        hists = [_hist(s, shift, bits, None if p == 0 else prefix[0], maxes if p == 0 else None) for s in srcs]
        hist = (hists[0] if len(hists) == 1 else paddle.add_n(hists)).unsqueeze(0)
        if p == 0:
            bad = paddle.sum(hist[:, _INF_BUCKET: 1 << bits], axis=1)
        r, prefix = _locate(hist, r, prefix, bits)
    return prefix, bad


def _select_global(srcs: Sequence[DeviceSource], k: int, total: int, comm: Any, stats: Optional[SelectionStats],
                   max_keys: Optional[Dict[str, int]] = None) -> int:
    """The k-th smallest key over all sources (of all ranks with ``comm``); ``max_keys`` receives each of this
    rank's sources' largest key."""
    srcs = [s for s in srcs if s.total]
    maxes: Optional[List[paddle.Tensor]] = None if max_keys is None else []
    if comm is SOLO:
        got = paddle.concat(list(_select_on_device(srcs, k, maxes)) + (maxes or [])).numpy()  # one transfer
        _count(stats, len(_PASSES), got.nbytes)
        if got[1]:
            _raise_nonfinite(srcs, total)
        if max_keys is not None:
            max_keys.update({s.name: int(v) for s, v in zip(srcs, got[2:])})
        return int(got[0])
    # across ranks: each pass's histogram is summed through the collectives on the host (65536 + 32768 int64)
    r_host, prefix_host, moved = k, 0, 0
    for p, (shift, bits) in enumerate(_PASSES):
        if srcs:
            pre = None if p == 0 else _const(srcs[0].weight, prefix_host, "int64")
            hists = [_hist(s, shift, bits, pre, maxes if p == 0 else None) for s in srcs]
            local = (hists[0] if len(hists) == 1 else paddle.add_n(hists)).numpy()
        else:
            local = np.zeros((1 << bits) + 1, np.int64)
        moved += 2 * local.nbytes
        hist = np.asarray(comm.sum(list(local[: 1 << bits])), np.int64)
        if p == 0:
            bad_here = bool(local[_INF_BUCKET: 1 << bits].any())
            if hist[_INF_BUCKET:].any():
                comm.check(_nonfinite_of(srcs, total) if bad_here else None)
        cum = np.cumsum(hist)
        j = int(np.count_nonzero(cum <= r_host))
        r_host -= int(cum[j - 1]) if j else 0
        prefix_host = (prefix_host << bits) | j
    if maxes:
        top = paddle.concat(maxes).numpy()
        moved += top.nbytes
        max_keys.update({s.name: int(v) for s, v in zip(srcs, top)})
    _count(stats, len(_PASSES), moved)
    return prefix_host


def _nonfinite_of(srcs: Sequence[DeviceSource], total: int) -> Tuple[int, str]:
    """(max key, name) as the core reports a NaN/Inf: a small selection (all keys at once) gives the max over all
    keys and no name; a streamed one the first source holding one and that source's max (the core's max is per
    chunk: they differ only for a source with an Inf before a NaN more than a chunk apart). Error path only."""
    maxes = [int(paddle.max(s.keys()).numpy()) for s in srcs]
    if total <= DIRECT_MAX:
        return max(maxes), ""
    return next((mx, s.name) for s, mx in zip(srcs, maxes) if mx >= _INF_KEY)


def _raise_nonfinite(srcs: Sequence[DeviceSource], total: int) -> None:
    _check_finite(*_nonfinite_of(srcs, total))


def _count(stats: Optional[SelectionStats], passes: int, nbytes: int) -> None:
    if stats is not None:
        stats.passes += passes
        stats.host_bytes += int(nbytes)


def _at_least(keys: paddle.Tensor, t_key: int) -> paddle.Tensor:
    """keys >= t_key as the core compares (uint32): a key of 2**31 or more (t = -0.0) keeps nothing."""
    if t_key > 0x7FFFFFFF:
        return paddle.zeros_like(keys, dtype="bool")
    return paddle.greater_equal(keys, _const(keys, t_key, "int32"))


# -- N:M ---------------------------------------------------------------------------------------------
def _nm_keep(w: paddle.Tensor, n: int, m: int, layout: Any) -> paddle.Tensor:
    """Keep the n largest keys of every m consecutive weights along the layout's axis; earlier wins a tie; a tail
    group of r < m keeps min(n, r)."""
    shape = tuple(w.shape)
    axis = reduction_axis(layout, shape)
    pre = int(np.prod(shape[:axis], dtype=np.int64))
    length = shape[axis]
    post = int(np.prod(shape[axis + 1:], dtype=np.int64))
    keys = _own_keys(w).reshape([pre, length, post])
    full = length - length % m
    parts = []
    if full:
        parts.append(_rank_keep(keys[:, :full, :].reshape([pre, full // m, m, post]), n).reshape([pre, full, post]))
    if full < length:
        r = length - full
        tail = keys[:, full:, :].reshape([pre, 1, r, post])
        parts.append(paddle.ones_like(tail, dtype="bool").reshape([pre, r, post]) if n >= r
                     else _rank_keep(tail, n).reshape([pre, r, post]))
    keep = parts[0] if len(parts) == 1 else paddle.concat(parts, axis=1)
    return keep.reshape(list(shape))


def _rank_keep(keys: paddle.Tensor, n: int) -> paddle.Tensor:
    """keys (P, G, M, Q): rank_i = #{j: k_j > k_i} + #{j < i: k_j == k_i}; keep rank < n."""
    m = keys.shape[2]
    idx = paddle.cumsum(paddle.ones_like(keys[:1, :1, :, :1], dtype="int32"), axis=2) - 1  # 0..m-1, on the device
    rank = paddle.zeros_like(keys, dtype="int32")
    for j in range(m):
        kj = keys[:, :, j:j + 1, :]
        beats = paddle.logical_or(paddle.greater_than(kj, keys),
                                  paddle.logical_and(paddle.equal(kj, keys), idx > j))
        rank = rank + beats.astype("int32")
    return rank < n
