"""The numerical core both modes share: scores, exact selection, masks, density, GMP schedule, and the one pruner.

Pure numpy; importable without Paddle. :mod:`.pruner` holds the mode-neutral :class:`~.pruner.Pruner` the dygraph
and static pruners build on; the README's "Semantics" section states the rules these modules implement.
"""
from .density import density, nonzero_and_size
from .engine import apply_masks, fill_masks, masks_from_nonzero, ratio_thresholds, summarize
from .params import ParamInfo, default_skip, is_conv1x1, resolve_prunable
from .schedule import GMPSchedule
from .scores import block_scores, expand_blocks, mask_from_threshold, score_source, uses_blocks
from .selection import NonFiniteScoreError, ScoreSource, kth_smallest, prune_count, ratio_threshold

__all__ = [
    "GMPSchedule", "NonFiniteScoreError", "ParamInfo", "ScoreSource", "apply_masks", "block_scores",
    "default_skip", "density", "expand_blocks", "fill_masks", "is_conv1x1", "kth_smallest",
    "mask_from_threshold", "masks_from_nonzero", "nonzero_and_size", "prune_count", "ratio_threshold",
    "ratio_thresholds", "resolve_prunable", "score_source", "summarize", "uses_blocks",
]
