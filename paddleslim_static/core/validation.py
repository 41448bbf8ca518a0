"""Argument checks shared by every pruner. Each raises ValueError/TypeError naming the argument."""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional, Sequence, Tuple

MODES = ("ratio", "threshold")
PRUNE_PARAMS_TYPES = (None, "conv1x1_only", "lite_sparse_conv")
_F32_MAX = 3.4028234663852886e38


def check_choice(name: str, value: object, choices: Tuple[str, ...]) -> str:
    """``value`` is one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}; got {value!r} ({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value


def check_mode(mode: object) -> str:
    return check_choice("mode", mode, MODES)


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number; got {value!r} ({type(value).__name__})")
    return float(value)


def check_ratio(ratio: object, name: str = "ratio", allow_one: bool = False) -> float:
    """ratio in [0, 1) (or [0, 1] with ``allow_one``)."""
    r = _real(name, ratio)
    upper_ok = r <= 1.0 if allow_one else r < 1.0
    if not (r >= 0.0 and upper_ok):  # also rejects NaN
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be in {bound}; got {ratio!r}")
    return r


def check_threshold(threshold: object, name: str = "threshold") -> float:
    t = _real(name, threshold)
    if not (math.isfinite(t) and t >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0; got {threshold!r}")
    if t > _F32_MAX:
        raise ValueError(f"{name} must fit in float32 (scores are compared in float32, max {_F32_MAX:.6g}); "
                         f"got {threshold!r}")
    return t


def check_sparse_block(block: object) -> Tuple[int, int]:
    if isinstance(block, (str, bytes)) or not isinstance(block, Sequence) or len(block) != 2:
        raise TypeError(f"sparse_block must be a pair [m, n] of positive ints; got {block!r}")
    out = []
    for v in block:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise TypeError(f"sparse_block must be a pair [m, n] of positive ints; got {block!r}")
        if v < 1:
            raise ValueError(f"sparse_block entries must be >= 1; got {block!r}")
        out.append(int(v))
    return out[0], out[1]


def check_prune_params_type(value: object) -> Optional[str]:
    if value not in PRUNE_PARAMS_TYPES:
        raise ValueError(f"prune_params_type must be one of {PRUNE_PARAMS_TYPES}; got {value!r}")
    return value  # type: ignore[return-value]


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {value!r} ({type(value).__name__})")
    return value
