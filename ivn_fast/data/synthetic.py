"""A built-in video set: coloured shapes that move, rotate and cross a textured background.

Each clip is a pure function of (seed, index), rendered on the fly, so the set needs no disk,
any number of workers give identical clips, and resume is exact. Labels cover appearance
(shape) and dynamics (motion direction, speed), which makes the set a probe benchmark too.
Geometry is relative to the frame size and speeds to the clip length, so every size and frame
count gives the same kind of clip.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from ivn_fast.data.transforms import normalize

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")
DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
SPEEDS = ("slow", "medium", "fast")
LABELS = {"shape": SHAPES, "direction": DIRECTIONS, "speed": SPEEDS}

# Distance travelled over the whole clip, as a fraction of the frame side.
_TRAVEL = (0.15, 0.30, 0.45)
_RADIUS = (0.12, 0.18)
# the shapes' colours, named as captions call them
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
_PALETTE = torch.tensor([
    (0.90, 0.10, 0.10), (0.10, 0.70, 0.20), (0.15, 0.30, 0.95), (0.95, 0.80, 0.10),
    (0.85, 0.20, 0.85), (0.10, 0.80, 0.85), (0.95, 0.50, 0.05), (0.97, 0.97, 0.97),
])
_EDGE = 0.01  # anti-aliasing width of the shape's edge, fraction of the frame side
# Depth, in metres: every shape has one physical size, so one at radius r (a fraction of the frame)
# stands _SIZE_AT_1M / r away (1.7-2.5 m); the backdrop rises from 3 m at the bottom to 5 m at the top.
_SIZE_AT_1M = 0.3
_BACKDROP = (3.0, 5.0)


class Look(NamedTuple):
    """What a clip's generator draws before its background: where the shape starts, its spin, its
    size and its colour."""

    radius: float  # fraction of the frame side
    x0: float
    y0: float
    spin: float  # radians per frame
    theta0: float
    colour: int  # index into COLOURS

    @property
    def small(self) -> bool:
        """In the lower half of the radius range (captions call it small, else large)."""
        return self.radius < sum(_RADIUS) / 2


class Rendered(NamedTuple):
    pixels: torch.Tensor  # [3, T, H, W] in [0, 1]
    boxes: torch.Tensor  # [T, 4]: the shape's box per frame, (x0, y0, x1, y1) as fractions of the frame, y down
    depth: torch.Tensor  # [T, H, W] metres


def _sdf(shape: str, x: torch.Tensor, y: torch.Tensor, r: float) -> torch.Tensor:
    """Signed distance (negative inside) of a shape of radius r centred at the origin."""
    if shape == "circle":
        return torch.sqrt(x * x + y * y) - r
    if shape == "square":
        return torch.maximum(x.abs(), y.abs()) - 0.8 * r
    if shape == "triangle":
        return torch.maximum(x.abs() * math.cos(math.pi / 6) + y * 0.5, -y) - 0.5 * r
    if shape == "cross":
        arm, long = r / 3, r
        bar_h = torch.maximum(x.abs() - long, y.abs() - arm)
        bar_v = torch.maximum(x.abs() - arm, y.abs() - long)
        return torch.minimum(bar_h, bar_v)
    if shape == "ring":
        return (torch.sqrt(x * x + y * y) - 0.7 * r).abs() - 0.3 * r
    if shape == "star":
        rho, theta = torch.sqrt(x * x + y * y), torch.atan2(y, x)
        return rho - r * (0.62 + 0.38 * torch.cos(5 * theta))
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [0, 1], y pointing up."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(1 - c, c, indexing="ij")
    return xx, yy


def _background(size: int, g: torch.Generator) -> torch.Tensor:
    """A muted colour field of a few low-frequency waves plus fine grain: [3, H, W]."""
    xx, yy = _grid(size)
    base = 0.25 + 0.35 * torch.rand(3, 1, 1, generator=g)
    field = torch.zeros(3, size, size)
    for _ in range(3):
        fx, fy = (torch.rand(2, generator=g) * 4 - 2).tolist()
        phase = float(torch.rand((), generator=g)) * 2 * math.pi
        amp = 0.06 * torch.rand(3, 1, 1, generator=g)
        field += amp * torch.sin(2 * math.pi * (fx * xx + fy * yy) + phase)
    grain = 0.03 * torch.randn(1, size, size, generator=g)
    return (base + field + grain).clamp(0, 1)


def _look(direction: int, speed: int, num_frames: int, g: torch.Generator) -> Look:
    r = _RADIUS[0] + (_RADIUS[1] - _RADIUS[0]) * float(torch.rand((), generator=g))
    dx, dy = _travel(direction, speed)
    margin = r + _EDGE

    def start(d: float) -> float:
        lo, hi = margin + max(0.0, -d), 1 - margin - max(0.0, d)
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    x0, y0 = start(dx), start(dy)
    spin = (float(torch.rand((), generator=g)) - 0.5) * 2 * math.pi / max(num_frames, 1)
    theta0 = float(torch.rand((), generator=g)) * 2 * math.pi
    return Look(r, x0, y0, spin, theta0, int(torch.randint(len(_PALETTE), (), generator=g)))


def _travel(direction: int, speed: int) -> tuple[float, float]:
    """The shape's displacement over the whole clip, in fractions of the frame (y up)."""
    angle = direction * math.pi / 4
    return _TRAVEL[speed] * math.cos(angle), _TRAVEL[speed] * math.sin(angle)


def render_clip(
    *, shape: int, direction: int, speed: int, num_frames: int, size: int, g: torch.Generator
) -> Rendered:
    """Pixels, the shape's box (the pixels it covers at least half) and depth in every frame; the
    other properties (the Look, then the background) come from g."""
    look = _look(direction, speed, num_frames, g)
    r, colour = look.radius, _PALETTE[look.colour]
    dx, dy = _travel(direction, speed)
    background = _background(size, g)

    xx, yy = _grid(size)
    frac = torch.arange(num_frames, dtype=torch.float32) / max(num_frames - 1, 1)
    cx, cy = (look.x0 + dx * frac).view(-1, 1, 1), (look.y0 + dy * frac).view(-1, 1, 1)
    theta = (look.theta0 + look.spin * torch.arange(num_frames, dtype=torch.float32)).view(-1, 1, 1)
    px, py = xx - cx, yy - cy
    lx = px * torch.cos(theta) + py * torch.sin(theta)
    ly = -px * torch.sin(theta) + py * torch.cos(theta)
    alpha = torch.sigmoid(-_sdf(SHAPES[shape], lx, ly, r) / (_EDGE / 4))  # [T, H, W]
    shade = (1 + 0.25 * (lx + ly) / r).clamp(0.6, 1.4)
    fg = (colour.view(3, 1, 1, 1) * shade.unsqueeze(0)).clamp(0, 1)
    backdrop = _BACKDROP[0] + (_BACKDROP[1] - _BACKDROP[0]) * yy
    depth = backdrop * (1 - alpha) + (_SIZE_AT_1M / r) * alpha
    return Rendered(background.unsqueeze(1) * (1 - alpha) + fg * alpha, _boxes(alpha > 0.5), depth)


def _boxes(inside: torch.Tensor) -> torch.Tensor:
    """Tight boxes [T, 4] of masks [T, H, W], in fractions of the frame (a frame's last pixel ends at 1)."""
    t, h, w = inside.shape
    cols, rows = inside.any(1), inside.any(2)  # [T, W], [T, H]
    ix, iy = torch.arange(w), torch.arange(h)
    big = max(h, w)
    x0 = torch.where(cols, ix, big).amin(1) / w
    x1 = (torch.where(cols, ix, -1).amax(1) + 1) / w
    y0 = torch.where(rows, iy, big).amin(1) / h
    y1 = (torch.where(rows, iy, -1).amax(1) + 1) / h
    return torch.stack([x0, y0, x1, y1], 1).float()


class SyntheticVideos(Dataset):
    """num_videos clips; labels are balanced by construction (index i cycles through them)."""

    def __init__(self, num_videos: int, num_frames: int, size: int, seed: int = 0):
        if num_videos < 1 or num_frames < 1 or size < 8:
            raise ValueError(f"need num_videos >= 1, num_frames >= 1, size >= 8; got {num_videos}, "
                             f"{num_frames}, {size}")
        self.num_videos, self.num_frames, self.size, self.seed = num_videos, num_frames, size, seed

    def __len__(self) -> int:
        return self.num_videos

    def labels(self, index: int) -> dict[str, int]:
        """Shape, direction and speed of clip `index`: a mixed-radix split of a seeded permutation
        position, so every combination occurs equally often and neighbours differ."""
        combos = len(SHAPES) * len(DIRECTIONS) * len(SPEEDS)
        block, offset = divmod(index, combos)
        g = torch.Generator().manual_seed(self.seed * 7_919 + block)
        code = int(torch.randperm(combos, generator=g)[offset])
        code, shape = divmod(code, len(SHAPES))
        speed, direction = divmod(code, len(DIRECTIONS))
        return {"shape": shape, "direction": direction, "speed": speed}

    def _generator(self, index: int) -> torch.Generator:
        if not 0 <= index < self.num_videos:
            raise IndexError(f"clip {index} outside [0, {self.num_videos})")
        return torch.Generator().manual_seed((self.seed + 1) * 2_654_435_761 + index)

    def render(self, index: int) -> tuple[dict[str, int], Rendered]:
        """Clip `index`'s labels and everything the renderer knows of it (boxes and depth too)."""
        labels = self.labels(index)
        return labels, render_clip(num_frames=self.num_frames, size=self.size, g=self._generator(index), **labels)

    def look(self, index: int) -> Look:
        """Clip `index`'s colour, size and path, without rendering it (a caption's words)."""
        labels = self.labels(index)
        return _look(labels["direction"], labels["speed"], self.num_frames, self._generator(index))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        labels, clip = self.render(index)
        return {"video": normalize(clip.pixels, channel_dim=0), "index": index, **labels}


class RenderedClips(Dataset):
    """The set's clips with ground truth the renderer knows, for the dense probes: items hold the
    video and `targets(rendered clip)` (a module-level function, so DataLoader workers can take it)."""

    def __init__(self, num_videos: int, num_frames: int, size: int, *, seed: int,
                 targets: Callable[[Rendered], dict[str, torch.Tensor]]):
        self.clips, self.targets = SyntheticVideos(num_videos, num_frames, size, seed=seed), targets

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        clip = self.clips.render(key % len(self))[1]  # a streamed probe's epoch keys: the clips stay as they are
        return {"video": normalize(clip.pixels, channel_dim=0), **self.targets(clip)}
