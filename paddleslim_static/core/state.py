"""Pruner checkpoints: what :meth:`Pruner.state_dict` records and the checks :meth:`Pruner.set_state_dict` runs on a
state before anything is applied (pure functions, no Paddle import).

A state (version 2) holds

* ``version``, ``mode``, ``ratio`` (in force), ``threshold``, ``thresholds`` (per parameter key: ``local_sparsity``,
  a ``'uniform'`` / ``'erk'`` allocation, or the layers the collapse guard protected),
  ``iteration`` (the next step's), ``prunable`` (parameter keys) and ``masks`` (bit-packed, only the masks that are
  not exactly ``weight != 0``) - the version-1 keys;
* ``config``: the configuration of the pruner that wrote it (``ratio``: the configured / GMP target ratio,
  ``local_sparsity``, ``sparse_block``, ``sparse_pattern``, ``schedule``, ``sparsity_allocation``, ``min_density``
  — the last two absent from states written before they existed, meaning ``'global'`` and 0); a state is only
  applied to a pruner
  with the same configuration and mode (``resume_iteration`` excepted: the state's iteration replaces it);
* ``fingerprint``: per parameter key ``[kept nonzero count, crc32 of the packed kept-nonzero pattern]`` of the
  weights as the model's checkpoint stores them, so a state applied to weights that are not the ones it was saved
  with (``pruner.set_state_dict`` before ``model.set_state_dict``, or another checkpoint) is an error.

Version-1 states (no ``config``, no ``fingerprint``) are still read: every key is checked as in version 2 and the
provenance as far as they record it (mode, ratio, and for GMP the ratio the schedule gives at that iteration).

>>> import numpy as np
>>> cfg = Config(mode="ratio", ratio=0.5, local_sparsity=False, sparse_block=(1, 1), sparse_pattern=None,
...              schedule=None)
>>> w = {"w": np.array([0.0, 2.0, 0.0, 1.0], np.float32)}
>>> keep = {"w": w["w"] != 0}
>>> state = {"version": 2, "mode": "ratio", "ratio": 0.5, "threshold": 1.0, "thresholds": {}, "iteration": 3,
...          "prunable": ["w"], "masks": {}, "config": cfg.record(), "fingerprint": fingerprints(w, keep)}
>>> parsed = parse_state(state, cfg, {"w": (4,)})
>>> parsed.iteration, parsed.threshold
(3, 1.0)
>>> parse_state(dict(state, threshold=float("nan")), cfg, {"w": (4,)})
Traceback (most recent call last):
...
ValueError: state['threshold'] must be finite and >= 0; got nan
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .packing import pack_mask, packed_size
from .schedule import GMPSchedule
from .validation import MODES, check_ratio, check_threshold

__all__ = ["STATE_VERSION", "Config", "ParsedState", "parse_state", "fingerprints", "check_fingerprints",
           "restored_masks"]

STATE_VERSION = 2
_V1_KEYS = ("version", "mode", "ratio", "threshold", "thresholds", "iteration", "prunable", "masks")
_V2_KEYS = _V1_KEYS + ("config", "fingerprint")
_CONFIG_KEYS = ("ratio", "local_sparsity", "sparse_block", "sparse_pattern", "schedule", "sparsity_allocation",
                "min_density")
_CONFIG_DEFAULTS = {"sparsity_allocation": "global", "min_density": 0.0}  # what a state without them was written with
_UNCOMPARED_SCHEDULE_FIELDS = ("resume_iteration",)  # where a fresh pruner starts; the state's iteration replaces it


@dataclass(frozen=True)
class Config:
    """What a pruner was configured with, as far as a state must match it."""

    mode: str
    ratio: float  # the configured ratio (GMP: the target)
    local_sparsity: bool
    sparse_block: Tuple[int, int]
    sparse_pattern: Optional[Tuple[int, int]]
    schedule: Optional[GMPSchedule]
    sparsity_allocation: str = "global"
    min_density: float = 0.0

    def record(self) -> Dict[str, Any]:
        """The ``config`` entry of a state: plain Python values only (``paddle.save`` keeps them as they are)."""
        return {
            "ratio": float(self.ratio), "local_sparsity": bool(self.local_sparsity),
            "sparse_block": [int(v) for v in self.sparse_block],
            "sparse_pattern": None if self.sparse_pattern is None else "%d:%d" % tuple(self.sparse_pattern),
            "schedule": None if self.schedule is None else _schedule_record(self.schedule),
            "sparsity_allocation": str(self.sparsity_allocation), "min_density": float(self.min_density),
        }


@dataclass(frozen=True)
class ParsedState:
    """A validated state, keyed by checkpoint key (not yet applied)."""

    version: int
    ratio: float
    threshold: float
    thresholds: Dict[str, float]
    iteration: int
    masks: Dict[str, np.ndarray]  # key -> packed bits (uint8, validated size)
    fingerprint: Optional[Dict[str, Tuple[int, int]]]  # None for version-1 states


def _schedule_record(schedule: GMPSchedule) -> Dict[str, Any]:
    rec = dataclasses.asdict(schedule)
    for k in _UNCOMPARED_SCHEDULE_FIELDS:
        rec.pop(k, None)
    return rec


def _plain(value: Any) -> Any:
    """A Tensor / numpy array of one element -> that element (paddle.load gives arrays as Tensors)."""
    value = _as_numpy(value)
    if isinstance(value, np.ndarray):
        return value.reshape(()).item() if value.size == 1 else value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _real(key: str, value: Any) -> float:
    v = _plain(value)
    if isinstance(v, bool) or not isinstance(v, Real):
        raise TypeError(f"{key} must be a number; got {value!r} ({type(value).__name__})")
    return float(v)


def _int(key: str, value: Any) -> int:
    v = _plain(value)
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"{key} must be an int; got {value!r} ({type(value).__name__})")
    return int(v)


def _as_numpy(value: Any) -> Any:
    """Tensors (``paddle.load`` gives arrays back as Tensors; in static mode as DenseTensors) -> numpy arrays."""
    if hasattr(value, "numpy") and callable(value.numpy):
        return value.numpy()
    if hasattr(value, "__array__") and not isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value)
    return value


def _array(key: str, value: Any) -> np.ndarray:
    value = _as_numpy(value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{key} must be a packed mask (uint8 array); got {type(value).__name__}")
    return value


def _mapping(key: str, value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{key} must be a dict; got {value!r} ({type(value).__name__})")
    return value


def _keyed(key: str, mapping: Mapping[Any, Any], known: Sequence[str]) -> Dict[str, Any]:
    """``mapping`` with str keys, all of them in ``known``."""
    bad = [k for k in mapping if not isinstance(k, str)]
    if bad:
        raise TypeError(f"{key} keys must be parameter keys (str); got {bad[:3]!r}")
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ValueError(f"{key} names parameters this pruner does not prune: {unknown[:5]}")
    return dict(mapping)


def _mismatch(key: str, saved: Any, ours: Any, what: str) -> ValueError:
    return ValueError(f"{key} is {saved!r} but this pruner's {what} is {ours!r}: build the pruner with the "
                      "configuration the state was saved with")


def parse_state(state: Any, config: Config, shapes: Mapping[str, Sequence[int]]) -> ParsedState:
    """Check every key, type, range and the provenance of ``state`` against a pruner's ``config`` and its prunable
    parameters (``shapes``: checkpoint key -> shape, in the pruner's order). Raises ValueError/TypeError naming the
    key; returns the values to apply."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict from Pruner.state_dict(); got {type(state).__name__}")
    if "version" not in state:
        raise ValueError("state has no 'version': not a Pruner.state_dict()")
    version = _plain(state["version"])
    if isinstance(version, bool) or not isinstance(version, Integral) or version not in (1, STATE_VERSION):
        raise ValueError(f"state['version'] must be 1 or {STATE_VERSION} (the versions this library reads); "
                         f"got {state['version']!r}")
    version = int(version)
    expected = _V1_KEYS if version == 1 else _V2_KEYS
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"state (version {version}) is missing {missing}: not a complete Pruner.state_dict()")
    unknown = sorted(str(k) for k in state if k not in expected)
    if unknown:
        raise ValueError(f"state (version {version}) has unknown keys {unknown}: not a Pruner.state_dict()")

    mode = state["mode"]
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"state['mode'] must be one of {MODES}; got {mode!r}")
    if mode != config.mode:
        raise _mismatch("state['mode']", mode, config.mode, "mode")
    keys = list(shapes)
    prunable = state["prunable"]
    if isinstance(prunable, (str, bytes)) or not isinstance(prunable, Sequence) \
            or not all(isinstance(k, str) for k in prunable):
        raise TypeError(f"state['prunable'] must be a list of parameter keys (str); got {prunable!r:.200}")
    if list(prunable) != keys:
        raise ValueError(f"state['prunable'] does not match this pruner's prunable parameters ({len(prunable)} vs "
                         f"{len(keys)}; first difference: {_first_diff(list(prunable), keys)})")

    ratio = check_ratio(_real("state['ratio']", state["ratio"]), "state['ratio']")
    threshold = _threshold("state['threshold']", state["threshold"], mode)
    iteration = _int("state['iteration']", state["iteration"])
    lowest = -1 if config.schedule is not None else 0  # a GMP pruner built with resume_iteration=-1 starts at -1
    if iteration < lowest:
        raise ValueError(f"state['iteration'] must be >= {lowest}; got {iteration}")
    thresholds = {}
    for k, v in _keyed("state['thresholds']", _mapping("state['thresholds']", state["thresholds"]), keys).items():
        thresholds[k] = _threshold(f"state['thresholds'][{k!r}]", v, mode)
    if thresholds and not config.local_sparsity and config.sparsity_allocation == "global":
        # a global pruner's only per-parameter thresholds are those of layers the collapse guard kept at their
        # floor, which lie below the global threshold (that is why they were protected)
        above = next((k for k, t in thresholds.items() if not t < threshold), None)
        if version < 2 or above is not None:
            raise ValueError(f"state['thresholds'] has per-parameter thresholds ({len(thresholds)}) but this pruner "
                             "has local_sparsity=False and the global allocation (whose protected layers' thresholds "
                             "lie below the global one): the state comes from a pruner with local_sparsity=True or "
                             "another sparsity_allocation")
    masks = {}
    for k, v in _keyed("state['masks']", _mapping("state['masks']", state["masks"]), keys).items():
        masks[k] = _packed(f"state['masks'][{k!r}]", _array(f"state['masks'][{k!r}]", v), shapes[k])

    fingerprint = None
    if version >= 2:
        _check_config(state["config"], config)
        fingerprint = {}
        fp = _mapping("state['fingerprint']", state["fingerprint"])
        absent = [k for k in keys if k not in fp]
        if absent:
            raise ValueError(f"state['fingerprint'] is missing {absent[:5]}: not a complete Pruner.state_dict()")
        for k, v in _keyed("state['fingerprint']", fp, keys).items():
            name = f"state['fingerprint'][{k!r}]"
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 2:
                raise TypeError(f"{name} must be [nonzero count, crc32]; got {v!r:.100}")
            count, crc = _int(name + "[0]", v[0]), _int(name + "[1]", v[1])
            size = int(np.prod(shapes[k], dtype=np.int64))
            if not 0 <= count <= size or not 0 <= crc < 2 ** 32:
                raise ValueError(f"{name} must be [0..{size}, 0..2**32-1]; got {v!r}")
            fingerprint[k] = (count, crc)
    _check_ratio_provenance(ratio, iteration, config)
    return ParsedState(version, ratio, threshold, thresholds, iteration, masks, fingerprint)


def _threshold(key: str, value: Any, mode: str) -> float:
    """A finite float32 threshold >= 0; in ratio mode also +inf (what a step that prunes every element yields)."""
    t = _real(key, value)
    if mode == "ratio" and t == math.inf:
        return t
    return check_threshold(t, key)


def _packed(key: str, bits: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != packed_size(n):
        raise ValueError(f"{key} must be the bit-packed mask of shape {list(shape)} (uint8, {packed_size(n)} bytes); "
                         f"got {bits.dtype}{list(bits.shape)}")
    return bits


def _check_config(saved: Any, config: Config) -> None:
    saved = _mapping("state['config']", saved)
    missing = [k for k in _CONFIG_KEYS if k not in saved and k not in _CONFIG_DEFAULTS]
    unknown = sorted(str(k) for k in saved if k not in _CONFIG_KEYS)
    if missing or unknown:
        raise ValueError(f"state['config'] must have exactly the keys {list(_CONFIG_KEYS)}; missing {missing}, "
                         f"unknown {unknown}")
    ours = config.record()
    for k in _CONFIG_KEYS:
        theirs = saved[k] if k in saved else _CONFIG_DEFAULTS[k]
        if k == "sparse_block" and isinstance(theirs, tuple):
            theirs = list(theirs)
        if k == "schedule" and isinstance(theirs, Mapping):
            theirs = {f: v for f, v in theirs.items() if f not in _UNCOMPARED_SCHEDULE_FIELDS}
        if not _same(theirs, ours[k]):
            what = {"ratio": "ratio (GMP: target ratio)", "schedule": "GMP schedule"}.get(k, k)
            raise _mismatch(f"state['config'][{k!r}]", theirs, ours[k], what)


def _same(a: Any, b: Any) -> bool:
    """Equal, with bools never equal to ints (True == 1 in Python) and NaN never equal."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (list, Mapping)) or isinstance(b, (list, Mapping)):
        return False
    try:
        return bool(a == b)
    except Exception:  # an exotic object whose == raises is simply not our value
        return False


def _check_ratio_provenance(ratio: float, iteration: int, config: Config) -> None:
    if config.schedule is None:
        if ratio != config.ratio:
            raise _mismatch("state['ratio']", ratio, config.ratio, "ratio")
        return
    expected = config.schedule.ratio_at(iteration - 1)
    if ratio != expected:
        raise ValueError(f"state['ratio'] is {ratio!r} but this pruner's GMP schedule gives {expected!r} before "
                         f"iteration {iteration}: the state comes from another schedule or was edited")


def fingerprints(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> Dict[str, List[int]]:
    """Key -> ``[count, crc32]`` of the kept nonzero weights (``mask & (weight != 0)``): what the model's checkpoint
    stores once the masks are applied."""
    out = {}
    for k, w in weights.items():
        kept = np.logical_and(masks[k], w != 0)
        out[k] = [int(np.count_nonzero(kept)), zlib.crc32(pack_mask(kept).tobytes()) & 0xFFFFFFFF]
    return out


def restored_masks(parsed: ParsedState, weights: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Key -> the bool mask a state restores: its packed mask where it stored one, ``weight != 0`` elsewhere."""
    from .packing import unpack_mask

    return {k: unpack_mask(parsed.masks[k], w.shape) if k in parsed.masks else w != 0 for k, w in weights.items()}


def check_fingerprints(parsed: ParsedState, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError naming the first parameter whose weights (under the restored ``masks``) are not the ones the
    state was saved with. Version-1 states carry no fingerprint: nothing to check."""
    if parsed.fingerprint is None:
        return
    now = fingerprints(weights, masks)
    for k, (count, crc) in parsed.fingerprint.items():
        have, have_crc = now[k]
        if have != count:
            raise ValueError(
                f"state['fingerprint'][{k!r}] records {count} kept nonzero weights but the model holds {have}: load "
                "the model's weights from the same checkpoint before pruner.set_state_dict (model.set_state_dict / "
                "paddle.static.load first)")
        if have_crc != crc:
            raise ValueError(
                f"state['fingerprint'][{k!r}] records another zero pattern than the model's weights (same count, "
                f"{count}): load the model's weights from the checkpoint the state was saved with")


def _first_diff(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"at {i}: {x!r} != {y!r}"
    return f"lengths {len(a)} != {len(b)}"
