"""Checks an export: Paddle weights vs ONNX tensors (zero patterns), onnxruntime vs Paddle outputs.

Matching a Paddle weight to an ONNX tensor, in order:

1. ``name``: same name, same shape (paddle2onnx keeps Paddle parameter names such as ``conv2d_0.w_0``);
2. ``name-transposed``: same name, 2-D, shape reversed (a ``Gemm``/``MatMul`` weight stored transposed);
3. ``values`` / ``values-transposed`` / ``values-reshaped``: an unclaimed tensor with the same number of
   elements whose entries equal the weight's nonzero entries (rtol 1e-5) in that layout (renamed by the
   exporter, e.g. ``p2o.*``);
4. ``values-scaled``: as 3, but equal up to one factor per output channel (axis 0) - a BatchNorm folded
   into the convolution keeps the zero pattern while scaling each filter.

Matching looks only at the weight's nonzero entries, so a tensor whose pruned zeros were overwritten still
matches and then fails the zero-pattern check. A weight that matches nothing is reported as unmatched:
a verification failure when the weight is sparse, a warning when it is dense.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["WeightMatch", "OutputCheck", "match_weights", "compare_outputs", "random_feeds", "run_onnx"]


@dataclasses.dataclass
class WeightMatch:
    """How one Paddle weight was found in the ONNX model and whether its zero pattern survived."""

    name: str
    onnx_name: Optional[str]
    how: Optional[str]  # see the module docstring; None when unmatched
    sparse: bool  # the Paddle weight has zeros
    pattern_ok: Optional[bool]  # None when unmatched
    pattern_mismatches: int = 0  # elements zero on one side only
    max_abs_diff: Optional[float] = None  # only for exact (unscaled) matches

    @property
    def ok(self) -> bool:
        if self.how is None:
            return not self.sparse
        return bool(self.pattern_ok)


@dataclasses.dataclass
class OutputCheck:
    """onnxruntime output vs the Paddle inference output."""

    name: str
    shape: Tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    rtol: float
    atol: float
    ok: bool
    what: str = "onnx vs paddle"


def _layouts(w: np.ndarray, c: np.ndarray) -> Iterator[Tuple[str, np.ndarray]]:
    """(layout name, candidate viewed in the weight's shape) for each plausible layout."""
    if c.shape == w.shape:
        yield "", c
    if w.ndim == 2 and c.shape == w.shape[::-1]:
        yield "-transposed", c.T
    if c.shape != w.shape and c.size == w.size:
        yield "-reshaped", c.reshape(w.shape)


def _value_match(w: np.ndarray, c: np.ndarray, nz: np.ndarray, rtol: float, scaled: bool) -> Optional[str]:
    """'values' (or with ``scaled``: 'values-scaled') if ``c`` agrees with ``w`` on w's nonzeros, else None."""
    wv, cv = w[nz].astype(np.float64), c[nz].astype(np.float64)
    if not scaled:
        return "values" if np.allclose(cv, wv, rtol=rtol, atol=0.0) else None
    if w.ndim < 2 or np.any(cv == 0):
        return None
    per_channel_nz = nz.reshape(w.shape[0], -1).sum(axis=1)
    if np.count_nonzero(per_channel_nz >= 2) * 2 < np.count_nonzero(per_channel_nz):
        return None  # too little evidence: one value per channel always "scales"
    ratio = np.full(w.shape, np.nan)
    ratio[nz] = cv / wv
    per_channel = ratio.reshape(w.shape[0], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (fully pruned channels)
        ref = np.broadcast_to(np.nanmedian(per_channel, axis=1, keepdims=True), per_channel.shape)
    have = ~np.isnan(per_channel)
    if np.all(np.abs(per_channel[have] - ref[have]) <= rtol * np.abs(ref[have])):
        return "values-scaled"
    return None


def _compare(name: str, w: np.ndarray, onnx_name: str, c: np.ndarray, how: str) -> WeightMatch:
    wz, cz = (w == 0), (c == 0)
    mism = int(np.count_nonzero(wz != cz))
    diff = None
    if "scaled" not in how:
        diff = float(np.max(np.abs(w.astype(np.float64) - c.astype(np.float64)))) if w.size else 0.0
    return WeightMatch(name, onnx_name, how, bool(wz.any()), mism == 0, mism, diff)


def match_weights(
    paddle_weights: Mapping[str, np.ndarray],
    onnx_tensors: Mapping[str, np.ndarray],
    rtol: float = 1e-5,
) -> List[WeightMatch]:
    """Match every Paddle weight to an ONNX tensor and compare zero patterns (see the module docstring).

    >>> import numpy as np
    >>> w = np.array([[0., 2.], [3., 0.]], np.float32)
    >>> [m.how for m in match_weights({"fc.w": w}, {"p2o.x": w.T.copy()})]
    ['values-transposed']
    >>> bad = w.T.copy(); bad[0, 0] = 1.0
    >>> match_weights({"fc.w": w}, {"fc.w": bad.T})[0].ok
    False
    """
    out: Dict[str, WeightMatch] = {}
    claimed = set()
    pending = []
    for name, w in paddle_weights.items():
        w = np.asarray(w)
        c = onnx_tensors.get(name)
        if c is not None:
            c = np.asarray(c)
            for suffix, view in _layouts(w, c):
                if suffix != "-reshaped":
                    out[name] = _compare(name, w, name, view, "name" + suffix)
                    claimed.add(name)
                    break
        if name not in out:
            pending.append(name)
    by_size: Dict[int, List[str]] = {}
    for cname, c in onnx_tensors.items():
        if cname not in claimed and np.asarray(c).dtype.kind == "f":
            by_size.setdefault(int(np.asarray(c).size), []).append(cname)
    for scaled in (False, True):  # exact matches first, everywhere; per-channel scaled ones after
        for name in pending:
            if name in out:
                continue
            w = np.asarray(paddle_weights[name])
            nz = w != 0
            if w.dtype.kind != "f" or not nz.any():
                continue
            for cname in by_size.get(int(w.size), []):
                if cname in claimed:
                    continue
                c = np.asarray(onnx_tensors[cname])
                found = None
                for suffix, view in _layouts(w, c):
                    kind = _value_match(w, view, nz, rtol, scaled)
                    if kind is not None:
                        found = _compare(name, w, cname, view, kind + suffix)
                        break
                if found is not None:
                    out[name] = found
                    claimed.add(cname)
                    break
    for name in pending:
        if name not in out:
            w = np.asarray(paddle_weights[name])
            out[name] = WeightMatch(name, None, None, bool((w == 0).any()), None)
    return [out[n] for n in paddle_weights]


def compare_outputs(
    names: Sequence[str],
    reference: Sequence[np.ndarray],
    got: Sequence[np.ndarray],
    rtol: float = 1e-5,
    atol_scale: float = 1e-5,
    what: str = "onnx vs paddle",
) -> List[OutputCheck]:
    """Per output: |got - ref| <= atol + rtol * |ref| with atol = atol_scale * max(|ref|) (scale-aware).

    ``rtol=0, atol_scale=0`` demands bitwise equality.
    """
    if len(reference) != len(got):
        raise ValueError(f"got {len(got)} outputs, expected {len(reference)}")
    checks = []
    for n, r, g in zip(names, reference, got):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape:
            checks.append(OutputCheck(n, tuple(r.shape), float("inf"), float("inf"), rtol, 0.0, False, what))
            continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        scale = float(np.max(np.abs(r64))) if r.size else 0.0
        atol = atol_scale * scale
        err = np.abs(g64 - r64)
        max_abs = float(err.max()) if err.size else 0.0
        with np.errstate(all="ignore"):
            rel = err / np.maximum(np.abs(r64), 1e-30)
        max_rel = float(rel.max()) if rel.size else 0.0
        if rtol == 0 and atol_scale == 0:
            ok = bool(np.array_equal(r, g))
        else:
            ok = bool(np.all(err <= atol + rtol * np.abs(r64))) and bool(np.isfinite(g64).all() == np.isfinite(r64).all())
        checks.append(OutputCheck(n, tuple(r.shape), max_abs, max_rel, rtol, atol, ok, what))
    return checks


def random_feeds(specs: Sequence[Tuple[str, Sequence[int], str]], seed: int = 0,
                 dynamic_dim: int = 2) -> Dict[str, np.ndarray]:
    """Reproducible random inputs for ``(name, shape, dtype)`` specs; dynamic dims (None/-1) become ``dynamic_dim``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in specs:
        shp = tuple(dynamic_dim if (d is None or int(d) < 0) else int(d) for d in shape)
        dt = np.dtype(dtype)
        if dt.kind == "f":
            feeds[name] = rng.standard_normal(shp).astype(dt)
        elif dt.kind in "iu":
            feeds[name] = rng.integers(0, 2, size=shp).astype(dt)
        elif dt.kind == "b":
            feeds[name] = rng.integers(0, 2, size=shp).astype(bool)
        else:
            raise ValueError(f"input {name!r}: cannot make random data of dtype {dtype!r}")
    return feeds


def run_onnx(model_path: str, feeds: Mapping[str, np.ndarray]) -> Tuple[List[str], List[np.ndarray]]:
    """Run an ONNX file on CPU with onnxruntime; returns (output names, outputs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    in_names = [i.name for i in sess.get_inputs()]
    missing = [n for n in in_names if n not in feeds]
    if missing:
        raise ValueError(f"ONNX model inputs {missing} have no data (feeds: {sorted(feeds)})")
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, {n: feeds[n] for n in in_names})
