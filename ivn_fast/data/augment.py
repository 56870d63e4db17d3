"""Where a clip is cut from its frames, and the cut itself: crop, resize, flip, normalise.

Training uses the released multi-scale crop (TSN's GroupMultiScaleCrop): with b the shorter
side, the crop height and width are each int(b * s) for s in SCALES (a side within 3 px of the
input size snaps to it), paired so that their scale ranks differ by at most one; the pair and
one of 13 fixed offsets (corners, centre, edge midpoints, quarter points on a 4x4 grid) are
drawn uniformly, the crop is resized to size x size and flipped half the time where the source
allows. Test view c of C is a square of side b, placed along the longer side at
round(c * (L - b) / (C - 1)) (C = 1: centred), i.e. the usual short-side resize then crop.

The same crop, one per clip, holds for every frame. Only the student's clip is cut here: the
teacher resizes that very clip to its own resolution (SemanticTeacher._frames), so both see the
same crop of the same frames.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ivn_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SCALES = (1.0, 0.875, 0.75, 0.66)
# uint8 level -> ImageNet-normalised value, per channel: v * scale + shift
_SCALE = torch.tensor([1 / (255 * s) for s in IMAGENET_STD]).view(3, 1, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(3, 1, 1, 1)
MAX_DISTORT = 1
SNAP_PX = 3


class Crop(NamedTuple):
    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def fixed_offsets(h: int, w: int, crop_h: int, crop_w: int) -> list[tuple[int, int]]:
    """The 13 (top, left) positions of a crop: a 4x4 grid's corners, centre, edge midpoints and
    inner quarter points."""
    hs, ws = (h - crop_h) // 4, (w - crop_w) // 4
    grid = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
            (1, 1), (1, 3), (3, 1), (3, 3))
    return [(r * hs, c * ws) for r, c in grid]


def multiscale_crop(h: int, w: int, size: int, rng: np.random.Generator, flip: bool = True) -> Crop:
    """A training crop of an h x w frame (see the module docstring)."""
    base = min(h, w)
    sides = [max(1, int(base * s)) for s in SCALES]
    sides = [size if abs(s - size) < SNAP_PX else s for s in sides]
    pairs = [(ch, cw) for i, ch in enumerate(sides) for j, cw in enumerate(sides) if abs(i - j) <= MAX_DISTORT]
    crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
    crop_h, crop_w = min(crop_h, h), min(crop_w, w)
    offsets = fixed_offsets(h, w, crop_h, crop_w)
    top, left = offsets[int(rng.integers(len(offsets)))]
    return Crop(top, left, crop_h, crop_w, bool(flip and rng.random() < 0.5))


def view_crop(h: int, w: int, view: int = 0, views: int = 1) -> Crop:
    """Spatial test view `view` of `views`: a square of the shorter side along the longer one."""
    side = min(h, w)
    span = max(h, w) - side
    pos = round(view * span / (views - 1)) if views > 1 else span // 2
    return Crop(pos, 0, side, side) if h > w else Crop(0, pos, side, side)


def cut(frames: torch.Tensor, crop: Crop, size: int) -> torch.Tensor:
    """[T, H, W, 3] uint8 frames -> [3, T, size, size] ImageNet-normalised float clip.

    The resize is bilinear with antialiasing (as PIL's, which the released pipeline uses), done
    on uint8 where torch has a fast kernel for it; the flip and the channel-major layout are
    uint8 copies too, so the float clip is written once and normalised in place.
    """
    region = frames[:, crop.top:crop.top + crop.height, crop.left:crop.left + crop.width]
    x = region.permute(0, 3, 1, 2)  # [T, 3, h, w], channels-last in memory
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if crop.flip:
        x = x.flip(-1)
    clip = x.permute(1, 0, 2, 3).contiguous().float()
    return clip.mul_(_SCALE).add_(_SHIFT)
