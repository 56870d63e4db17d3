"""Loss functions shared by the stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 2 - 2 <pred / |pred|, target> over all leading dimensions.

    The prediction is L2-normalised here; the target is used as given, as in the released
    code: per-token teacher targets arrive unit-norm, and the clip-level final target is the
    mean of unit per-frame features, whose norm (below 1 when frames differ) scales its term.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return (2 - 2 * (F.normalize(pred, dim=-1) * target).sum(-1)).mean()
