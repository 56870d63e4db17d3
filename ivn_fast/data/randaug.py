"""RandAugment for clips: `num_ops` operations drawn per clip, each applied identically to every
frame (as VideoMAE and UMT apply it), at a magnitude drawn around `magnitude` (0-10) with
standard deviation `std`: the fine-tuning recipe's RandAug(9, 0.5), two operations a clip.

Operations and ranges follow the common image recipe (timm's "increasing" set): geometry (rotate
up to 30 degrees, shear up to 0.3, translate up to 45% of the side, grey fill), colour (brightness,
colour, contrast, sharpness by factors 1 +- 0.9 m / 10), and pixel maps (auto-contrast, equalise,
posterize to 8 - 4 m / 10 bits, solarize above 1 - m / 10).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_FILL = 0.5


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    """b + factor * (a - b), clipped: factor 0 gives b, 1 gives a, above 1 pushes past a."""
    return (b + factor * (a - b)).clamp(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _affine(x: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """x [T, 3, H, W] sampled through a 2x3 matrix in normalised coordinates, grey outside."""
    theta = torch.tensor(matrix, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    ones = torch.ones_like(x[:, :1])
    warped = F.grid_sample(torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = warped[:, 3:]
    return warped[:, :3] + (1 - inside) * _FILL


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per channel over the whole clip (256 levels)."""
    levels = (x * 255).round().long()
    out = torch.empty_like(x)
    for c in range(3):
        hist = torch.bincount(levels[:, c].flatten(), minlength=256).double()
        cdf = hist.cumsum(0)
        lo = cdf[hist > 0][0]
        span = cdf[-1] - lo
        lut = ((cdf - lo) / span).clamp(0, 1).to(x.dtype) if span > 0 else torch.arange(256, dtype=x.dtype) / 255
        out[:, c] = lut[levels[:, c]]
    return out


def _op(name: str, x: torch.Tensor, m: float, sign: float) -> torch.Tensor:
    """Operation `name` at magnitude m in [0, 1] on x [T, 3, H, W] in [0, 1]."""
    if name == "auto_contrast":
        lo = x.amin(dim=(0, 2, 3), keepdim=True)
        hi = x.amax(dim=(0, 2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)
    if name == "equalize":
        return _equalize(x)
    if name == "rotate":
        a = math.radians(sign * 30 * m)
        return _affine(x, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    if name == "shear_x":
        return _affine(x, [[1.0, sign * 0.3 * m, 0.0], [0.0, 1.0, 0.0]])
    if name == "shear_y":
        return _affine(x, [[1.0, 0.0, 0.0], [sign * 0.3 * m, 1.0, 0.0]])
    if name == "translate_x":
        return _affine(x, [[1.0, 0.0, sign * 0.9 * m], [0.0, 1.0, 0.0]])  # 0.45 of the side = 0.9 in [-1, 1]
    if name == "translate_y":
        return _affine(x, [[1.0, 0.0, 0.0], [0.0, 1.0, sign * 0.9 * m]])
    if name == "posterize":
        step = 2 ** (8 - max(1, round(8 - 4 * m)))
        return torch.floor(x * 255 / step) * step / 255
    if name == "solarize":
        return torch.where(x >= 1 - m, 1 - x, x)
    factor = 1 + sign * 0.9 * m
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if name == "color":
        return _blend(x, _grey(x).expand_as(x), factor)
    if name == "contrast":
        return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor)
    if name == "sharpness":
        kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=x.dtype) / 13
        smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
        return _blend(x, smooth, factor)
    raise ValueError(f"unknown RandAugment operation {name!r}")


OPS = ("auto_contrast", "equalize", "rotate", "shear_x", "shear_y", "translate_x", "translate_y", "posterize",
       "solarize", "brightness", "color", "contrast", "sharpness")


def rand_augment(clip: torch.Tensor, g: torch.Generator, *, num_ops: int = 2, magnitude: float = 9.0,
                 std: float = 0.5) -> torch.Tensor:
    """clip [3, T, H, W] in [0, 1] -> the same shape, every frame through the same drawn operations."""
    x = clip.transpose(0, 1)  # [T, 3, H, W]
    for _ in range(num_ops):
        name = OPS[int(torch.randint(len(OPS), (), generator=g))]
        m = min(max(magnitude + std * float(torch.randn((), generator=g)), 0.0), 10.0) / 10
        sign = 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0
        x = _op(name, x, m, sign)
    return x.transpose(0, 1).contiguous()
