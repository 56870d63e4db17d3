"""Video <-> per-patch pixel vectors, channel-major within a patch (the decoder's target layout)."""

from __future__ import annotations

import torch


def patchify(video: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T*(H/p)*(W/p), C*p*p], tokens in (t, h, w) order."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 3, 5, 1, 4, 6)  # b t gh gw c p p
    return x.reshape(b, t * (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, grid: tuple[int, int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of patchify: [B, N, C*p*p] -> [B, C, T, H, W]."""
    t, gh, gw = grid
    b = tokens.shape[0]
    x = tokens.reshape(b, t, gh, gw, channels, patch, patch)
    x = x.permute(0, 4, 1, 2, 5, 3, 6)  # b c t gh p gw p
    return x.reshape(b, channels, t, gh * patch, gw * patch)
