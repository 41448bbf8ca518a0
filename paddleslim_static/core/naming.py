"""The one naming rule for masks: a parameter's mask is called ``<parameter>_mask``.

Static programs name the mask variable after the parameter's name (``linear_0.w_0_mask``); dygraph layers name
the mask buffer after the parameter's attribute (``weight_mask``, so ``model.state_dict()`` shows ``fc.weight_mask``).

>>> mask_name("linear_0.w_0"), is_mask_name("fc.weight_mask"), masked_name("fc.weight_mask")
('linear_0.w_0_mask', True, 'fc.weight')
"""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["MASK_SUFFIX", "mask_name", "is_mask_name", "masked_name", "NameKeyed"]

MASK_SUFFIX = "_mask"


def mask_name(name: str) -> str:
    """Name of the mask of the parameter (static) or parameter attribute / state-dict key (dygraph) ``name``."""
    return name + MASK_SUFFIX


def is_mask_name(name: str) -> bool:
    """Whether ``name`` follows the mask naming rule."""
    return name.endswith(MASK_SUFFIX) and len(name) > len(MASK_SUFFIX)


def masked_name(name: str) -> str:
    """The parameter a mask name belongs to (inverse of :func:`mask_name`)."""
    if not is_mask_name(name):
        raise ValueError(f"{name!r} is not a mask name (it must end with {MASK_SUFFIX!r})")
    return name[: -len(MASK_SUFFIX)]


class NameKeyed(dict):  # type: ignore[type-arg]
    """A dict keyed by parameter names (``conv2d_3.w_0``) that also takes a parameter's other name (its structured
    name ``features.3.weight``) wherever it takes a key: ``[]``, ``get``, ``in``. Iteration, ``len``, equality and
    JSON stay those of the parameter-name dict.

    >>> d = NameKeyed({"conv2d_3.w_0": 0.5}, {"features.3.weight": "conv2d_3.w_0"})
    >>> d["features.3.weight"], "features.3.weight" in d, d.get("x", 0), list(d)
    (0.5, True, 0, ['conv2d_3.w_0'])
    """

    def __init__(self, items: Mapping[str, Any], aliases: Mapping[str, str]) -> None:
        super().__init__(items)
        self.aliases = dict(aliases)  # other name -> parameter name

    def _key(self, key: Any) -> Any:
        if isinstance(key, str) and not dict.__contains__(self, key):
            return self.aliases.get(key, key)
        return key

    def __getitem__(self, key: Any) -> Any:
        return dict.__getitem__(self, self._key(key))

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return dict.get(self, self._key(key), default)
