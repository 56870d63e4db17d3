"""Which tokens the student sees: Stage 1 masks (semantic, strict top-k, random, tube)."""

from ivn_fast.masks.stage1 import (
    MASK_KINDS,
    make_stage1_mask,
    mask_bool,
    random_mask,
    semantic_mask,
    topk_mask,
    tube_mask,
    visible_per_frame,
)

__all__ = [
    "MASK_KINDS",
    "make_stage1_mask",
    "mask_bool",
    "random_mask",
    "semantic_mask",
    "topk_mask",
    "tube_mask",
    "visible_per_frame",
]
