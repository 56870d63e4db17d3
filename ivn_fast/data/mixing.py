"""Label smoothing, CutMix and Mixup on clip batches: the fine-tuning recipe's regularisers.

CutMix pastes one spatial box, through every frame, from the batch read backwards; Mixup blends
whole clips with it. The mixing weight is drawn from Beta(alpha, alpha) per batch; CutMix's is then
set to the share of pixels each clip keeps. With both on, each batch takes one of them at even odds.
"""

from __future__ import annotations

import numpy as np
import torch


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets [B, K] with `smoothing` of the mass spread evenly over every class."""
    return torch.full((len(labels), num_classes), smoothing / num_classes, device=labels.device).scatter_(
        1, labels[:, None], 1 - smoothing + smoothing / num_classes)


def mix(video: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, *, mixup: float = 0.0,
        cutmix: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """video [B, 3, T, H, W] and targets [B, K] mixed with the batch reversed; returns them and the
    weight the clips' own content keeps (1.0: unmixed, when both alphas are 0)."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    if alpha <= 0:
        return video, targets, 1.0
    lam = float(rng.beta(alpha, alpha))
    other = video.flip(0)
    if use_cutmix:
        h, w = video.shape[-2:]
        cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        video = video.clone()
        video[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        video = video * lam + other * (1 - lam)
    return video, targets * lam + targets.flip(0) * (1 - lam), lam
