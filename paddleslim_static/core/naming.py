"""The one naming rule for masks: a parameter's mask is called ``<parameter>_mask``.

Static programs name the mask variable after the parameter's name (``linear_0.w_0_mask``); dygraph layers name
the mask buffer after the parameter's attribute (``weight_mask``, so ``model.state_dict()`` shows ``fc.weight_mask``).

>>> mask_name("linear_0.w_0"), is_mask_name("fc.weight_mask"), masked_name("fc.weight_mask")
('linear_0.w_0_mask', True, 'fc.weight')
"""
from __future__ import annotations

__all__ = ["MASK_SUFFIX", "mask_name", "is_mask_name", "masked_name"]

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
