"""Pictures people would rather look at than read: clip grids with labelled rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ivn_fast.masks import mask_bool
from ivn_fast.models.patches import unpatchify

_LABEL_W = 120
_GAP = 2


def clip_grid(rows: dict[str, torch.Tensor], clips: int) -> Image.Image:
    """rows: label -> [B, 3, T, H, W] in [0, 1]. For each clip, one strip of frames per label."""
    first = next(iter(rows.values()))
    _, _, t, h, w = first.shape
    n = min(clips, first.shape[0])
    strips = len(rows) * n
    width = _LABEL_W + t * (w + _GAP)
    height = strips * (h + _GAP) + n * 6
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for i in range(n):
        for label, video in rows.items():
            frames = (video[i].float().clamp(0, 1) * 255).round().to(torch.uint8)
            frames = frames.permute(1, 2, 3, 0).cpu().numpy()  # T H W C
            for j in range(t):
                canvas.paste(Image.fromarray(np.ascontiguousarray(frames[j])), (_LABEL_W + j * (w + _GAP), y))
            draw.text((4, y + h // 2 - 6), f"clip {i}: {label}", fill=(0, 0, 0))
            y += h + _GAP
        y += 6
    return canvas


def save_clip_grid(rows: dict[str, torch.Tensor], path: Path, clips: int = 4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    clip_grid(rows, clips).save(tmp)
    tmp.replace(path)
    return path


def hide_tokens(pixels: torch.Tensor, vis_idx: torch.Tensor, patch: int, grid: tuple[int, int, int],
                shade: float = 0.15) -> torch.Tensor:
    """pixels [B, 3, T, H, W] in [0, 1] with every token outside vis_idx painted dark grey."""
    hidden = mask_bool(vis_idx, grid[0] * grid[1] * grid[2]).float()
    hidden = unpatchify(hidden.unsqueeze(-1).expand(-1, -1, 3 * patch * patch), patch, grid)
    return pixels * (1 - hidden) + shade * hidden
