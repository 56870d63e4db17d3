"""Pixel normalisation shared by the data pipeline, the teacher and the pictures."""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the range normalised pixels can take, over all channels: what a pixel decoder may output
PIXEL_RANGE = (min(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)),
               max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)))


def _stats(like: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = [1] * like.dim()
    shape[channel_dim] = 3
    mean = torch.tensor(IMAGENET_MEAN, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=like.dtype, device=like.device).view(shape)
    return mean, std


def normalize(x: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """[0, 1] pixels -> ImageNet-normalised pixels (the model's input and the decoder's target)."""
    mean, std = _stats(x, channel_dim)
    return (x - mean) / std


def denormalize(x: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """ImageNet-normalised pixels -> [0, 1] pixels."""
    mean, std = _stats(x, channel_dim)
    return x * std + mean
