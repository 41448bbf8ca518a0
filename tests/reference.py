"""Brute-force references (full numpy sort) the core is tested against."""
import math

import numpy as np


def element_scores(w, block):
    """float32 score of every element: |w|, or its block's mean |w| (float64 sum, float32 mean)."""
    a = np.abs(w.astype(np.float32))
    if w.ndim < 2 or tuple(block) == (1, 1):
        return a
    m, n = block
    out = np.empty(w.shape, np.float32)
    for i in range(0, w.shape[0], m):
        for j in range(0, w.shape[1], n):
            blk = a[i:i + m, j:j + n]
            out[i:i + m, j:j + n] = np.float32(blk.astype(np.float64).sum() / blk.size)
    return out


def ratio_threshold(weights, ratio, block=(1, 1)):
    s = np.sort(np.concatenate([element_scores(w, block).ravel() for w in weights]))
    k = int(round(ratio * s.size))
    return np.float32(np.inf) if k >= s.size else s[k]


def summarize(weights, ratio):
    s = np.sort(np.concatenate([np.abs(w).ravel() for w in weights]))
    return float(s[max(0, math.ceil(ratio * s.size) - 1)])


def on_c_and_numpy(fn):
    """[fn() with the C kernels, fn() with the numpy code] (the C result equals the numpy one when C is absent)."""
    from paddleslim_static.core import kernels

    out = []
    for flag in (True, False):
        previous = kernels.use_c(flag)
        try:
            out.append(fn())
        finally:
            kernels.use_c(previous)
    return out
