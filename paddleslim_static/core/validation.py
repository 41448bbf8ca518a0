"""Argument checks shared by every pruner. Each raises ValueError/TypeError naming the argument."""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional, Sequence, Tuple

MODES = ("ratio", "threshold")
PRUNE_PARAMS_TYPES = (None, "conv1x1_only", "lite_sparse_conv")
_F32_MAX = 3.4028234663852886e38


class _Default(float):
    """A default value the caller did not give: it prints and computes as the number, and ``is`` tells it apart
    from the same number passed explicitly."""

    def __repr__(self) -> str:
        return float.__repr__(self)


DEFAULT_RATIO = _Default(0.3)
DEFAULT_THRESHOLD = _Default(0.01)


def check_positional_trap(mode: object, ratio: object, threshold: object, order: str) -> None:
    """The positional-argument trap: the dygraph seed's order is ``(model, mode, threshold, ratio)``, the static one's
    ``(program, mode, ratio, threshold)``. A value for the parameter ``mode`` does not use, while the one it uses is
    left at its default (:data:`DEFAULT_RATIO` / :data:`DEFAULT_THRESHOLD`), is a ValueError naming both and
    ``order``.

    >>> check_positional_trap("ratio", 0.5, DEFAULT_THRESHOLD, "(program, mode, ratio, threshold, ...)")
    >>> check_positional_trap("ratio", DEFAULT_RATIO, 0.5, "(model, ...)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: mode='ratio' uses ratio, left at its default 0.3, but threshold=0.5 was given, ...: pass ratio=0.5 by keyword
    """
    used, unused = {"ratio": ("ratio", "threshold"), "threshold": ("threshold", "ratio")}.get(
        mode if isinstance(mode, str) else "", (None, None))
    if used is None:
        return  # a bad mode is check_mode's to report
    values = {"ratio": (ratio, DEFAULT_RATIO), "threshold": (threshold, DEFAULT_THRESHOLD)}
    (u, u_default), (x, x_default) = values[used], values[unused]
    if u is u_default and x is not x_default:
        raise ValueError(
            f"mode={mode!r} uses {used}, left at its default {float(u_default)!r}, but {unused}={x!r} was given, "
            f"which mode={mode!r} does not use; the argument order here is {order}: pass {used}={x!r} by keyword"
        )


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
