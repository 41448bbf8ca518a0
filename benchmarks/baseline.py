"""The baseline the dygraph benchmark compares against: PaddleSlim 2.x's sort-based ratio step.

This re-states, for measurement only, what PaddleSlim's dygraph ``UnstructuredPruner`` does on a
ratio-mode ``step()``: copy every prunable weight to the host, concatenate the magnitudes, fully sort
them, read the threshold at position ``round(ratio * n)``, then rebuild a **float32** mask per parameter
and write ``w * mask`` back with ``set_value``. It is deliberately the slow, simple method; the library
never uses it.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import paddle

__all__ = ["SortBaseline"]


class SortBaseline:
    """Sort-based global ratio pruning with float32 masks kept as Paddle tensors (one per parameter)."""

    def __init__(self, params: Sequence[paddle.Tensor], ratio: float) -> None:
        self.params: List[paddle.Tensor] = list(params)
        self.ratio = float(ratio)
        self.threshold = 0.0
        self.masks: Dict[str, paddle.Tensor] = {
            p.name: paddle.ones(p.shape, dtype="float32") for p in self.params
        }

    def step(self) -> None:
        """Threshold by full sort of all |w|, then float32 masks and masked weights written back."""
        arrays = [p.numpy() for p in self.params]
        flat = np.sort(np.concatenate([np.abs(a).ravel() for a in arrays]))
        k = int(round(self.ratio * flat.size))
        self.threshold = float(flat[k]) if k < flat.size else float("inf")
        t = np.float32(self.threshold)
        for p, w in zip(self.params, arrays):
            mask = (np.abs(w) >= t).astype(np.float32)
            self.masks[p.name].set_value(mask)
            p.set_value(w * mask)

    def mask_bytes(self) -> int:
        """Bytes held by the float32 mask tensors."""
        return sum(int(m.size) * m.element_size() for m in self.masks.values())


class PaddleSlimBaseline:
    """PaddleSlim 2.6's dygraph ratio step, re-stated with the one fix Paddle 3 needs to run it.

    ``update_threshold``: every prunable weight copied to the host and flattened, concatenated, ``np.abs``,
    ``np.sort``, threshold at position ``max(0, round(ratio * n) - 1)``. ``_update_masks``: per parameter
    ``paddle.abs(p) >= t`` assigned into a float32 mask (PaddleSlim assigns the bool tensor itself, which turns
    the mask into bool on Paddle 3 and breaks the next forward: the fix is the ``astype``). The masks are then
    applied as PaddleSlim's forward pre-hook does: ``paddle.assign(p * mask, output=p)``.
    """

    def __init__(self, params: Sequence[paddle.Tensor], ratio: float) -> None:
        self.params: List[paddle.Tensor] = list(params)
        self.ratio = float(ratio)
        self.threshold = 0.0
        self.masks = {p.name: paddle.ones(p.shape, dtype="float32") for p in self.params}

    def step(self) -> None:
        flat = np.concatenate([p.numpy().flatten() for p in self.params], axis=0)
        self.threshold = np.sort(np.abs(flat))[max(0, round(self.ratio * flat.size) - 1)].item()
        with paddle.no_grad():
            for p in self.params:
                paddle.assign((paddle.abs(p) >= self.threshold).astype("float32"), output=self.masks[p.name])
                paddle.assign(p * self.masks[p.name], output=p)
