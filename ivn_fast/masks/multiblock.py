"""Stage 2 multi-block masks (V-JEPA's): a few large spatial blocks hidden through every frame.

A view hides the union of `num_blocks` rectangles of one size (drawn once per call, shared by
the batch) at positions drawn per clip, through the whole clip. The context (visible tokens)
is then cut to the same length for every clip: the batch minimum, and at most
`max_keep_per_8 * T / 8`. The released rule keeps the lowest token indices, i.e. the earliest
frames, so late frames end up wholly hidden and the task becomes partly future prediction;
`truncation="uniform"` keeps a uniformly random subset instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockSpec:
    num_blocks: int
    scale: float  # fraction of a frame's tokens one block covers
    aspect: tuple[float, float] = (0.75, 1.5)  # height / width range


@dataclass
class MultiBlockMask:
    vis_idx: torch.Tensor  # [B, K] sorted context indices, equal K over the batch
    block_hw: tuple[int, int]  # size of every block of this view, in tokens
    masked_frac: float  # mean fraction of hidden tokens after truncation


def block_size(spec: BlockSpec, h: int, w: int, device: torch.device,
               generator: torch.Generator | None) -> tuple[int, int]:
    """One (height, width) for all blocks of a view: area scale * h * w at a random aspect ratio."""
    area = int(h * w * spec.scale)
    lo, hi = spec.aspect
    aspect = lo + float(torch.rand((), device=device, generator=generator)) * (hi - lo)
    bh = max(1, min(h, int(round(math.sqrt(area * aspect)))))
    bw = max(1, min(w, int(round(math.sqrt(area / aspect)))))
    return bh, bw


def _spatial_hidden(
    batch: int, h: int, w: int, bh: int, bw: int, num_blocks: int, device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """[batch, h, w] bool, True where any of the clip's blocks covers the position."""
    top = torch.randint(0, h - bh + 1, (batch, num_blocks, 1, 1), device=device, generator=generator)
    left = torch.randint(0, w - bw + 1, (batch, num_blocks, 1, 1), device=device, generator=generator)
    rows = torch.arange(h, device=device).view(1, 1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, 1, w)
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return inside.any(1)


def multiblock_mask(
    spec: BlockSpec,
    batch: int,
    grid: tuple[int, int, int],
    *,
    max_keep_per_8: int | None = 400,
    truncation: str = "earliest",
    min_context: int = 1,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    max_tries: int = 20,
) -> MultiBlockMask:
    """One view's context indices for a batch; clips whose blocks hide every position are redrawn."""
    if truncation not in ("earliest", "uniform"):
        raise ValueError(f"truncation must be 'earliest' or 'uniform', got {truncation!r}")
    if spec.num_blocks < 1 or not 0.0 < spec.scale <= 1.0:
        raise ValueError(f"need at least one block and a scale in (0, 1], got {spec}")
    device = torch.device(device)
    t, h, w = grid
    bh, bw = block_size(spec, h, w, device, generator)
    hidden = _spatial_hidden(batch, h, w, bh, bw, spec.num_blocks, device, generator)
    for _ in range(max_tries):
        empty = (~hidden).flatten(1).sum(1) < min_context
        if not bool(empty.any()):
            break
        redraw = _spatial_hidden(int(empty.sum()), h, w, bh, bw, spec.num_blocks, device, generator)
        hidden[empty] = redraw
    else:
        raise RuntimeError(f"blocks of {bh}x{bw} x{spec.num_blocks} leave no context on a {h}x{w} grid")
    visible = (~hidden).flatten(1).repeat(1, t)  # full temporal extent: same positions every frame
    n = t * h * w
    keep = int(visible.sum(1).min())
    if max_keep_per_8 is not None:
        keep = min(keep, max(1, max_keep_per_8 * t // 8))
    order = torch.arange(n, device=device, dtype=torch.float32).expand(batch, n)
    if truncation == "uniform":
        order = torch.rand(batch, n, device=device, generator=generator)
    # visible tokens sort first (by index or by random key), hidden ones after all of them
    key = torch.where(visible, order, order + 2 * n)
    vis_idx = key.topk(keep, dim=1, largest=False).indices.sort(1).values
    return MultiBlockMask(vis_idx=vis_idx, block_hw=(bh, bw), masked_frac=1.0 - keep / n)
