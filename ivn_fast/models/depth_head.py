"""Video Depth Anything's temporal head on a frozen encoder: the paper's second depth probe (Table 6,
"VDA head with temporal fusion"). A DPT decoder reads four of the encoder's blocks, each frame on
its own: their tokens become feature maps at 4x, 2x, 1x and 1/2x the token grid, which are fused
from coarse to fine and upsampled to the frame. Four temporal modules, self-attention along time
at every position, sit where Video Depth Anything puts them, on the two coarsest maps and after
the first two fusions, so that the frames of a window see each other."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.models.layers import Block


def dpt_layers(depth: int) -> tuple[int, int, int, int]:
    """The four blocks a DPT head reads, evenly spaced and ending at the last (ViT-B: 2, 5, 8, 11; an
    encoder of fewer than four blocks gives some twice)."""
    return tuple(max(0, (i + 1) * depth // 4 - 1) for i in range(4))


class TemporalModule(nn.Module):
    """A transformer block along time at each position of a [B*T, C, H, W] map, with a learned
    position per frame; its output projections start at zero, so it starts as the identity."""

    def __init__(self, channels: int, num_heads: int, max_frames: int):
        super().__init__()
        self.block = Block(channels, num_heads, layerscale=None, qk_norm=False)
        self.pos = nn.Parameter(torch.zeros(1, max_frames, channels))
        nn.init.trunc_normal_(self.pos, std=0.02)
        for proj in (self.block.attn.proj, self.block.mlp.fc2):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        if frames > self.pos.shape[1]:
            raise ValueError(f"the temporal module was built for {self.pos.shape[1]} frames, got {frames}")
        seq = x.view(bt // frames, frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, frames, c)
        inp = seq + self.pos[:, :frames].to(seq.dtype)
        seq = seq + self.block(inp) - inp  # the block's residual branches only: the positions stay out
        return seq.view(bt // frames, h * w, frames, c).permute(0, 2, 3, 1).reshape(bt, c, h, w)


class _ResidualConv(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """DPT's fusion: add the refined skip map, refine, upsample to `size`, project."""

    def __init__(self, channels: int):
        super().__init__()
        self.skip = _ResidualConv(channels)
        self.refine = _ResidualConv(channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip(skip)
        x = F.interpolate(self.refine(x), size=size, mode="bilinear", align_corners=True)
        return self.out(x)


class TemporalDepthHead(nn.Module):
    """Depth [B, T, H, W] in metres from tokens [B, num_cls + T*h*w, 4 x dim]: four blocks' tokens side
    by side (`features.LayerTokens`). Sizes after Video Depth Anything's small model."""

    def __init__(self, dim: int, grid: tuple[int, int, int], patch: int, num_cls: int, *, features: int = 64,
                 channels: tuple[int, int, int, int] = (48, 96, 192, 384), num_heads: int = 4):
        super().__init__()
        self.dim, self.grid, self.patch, self.num_cls = dim, tuple(grid), patch, num_cls
        self.project = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in channels)
        self.resize = nn.ModuleList([nn.ConvTranspose2d(channels[0], channels[0], 4, stride=4),
                                     nn.ConvTranspose2d(channels[1], channels[1], 2, stride=2), nn.Identity(),
                                     nn.Conv2d(channels[3], channels[3], 3, stride=2, padding=1)])
        self.to_features = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in channels)
        self.fusions = nn.ModuleList(_Fusion(features) for _ in range(4))
        self.temporal = nn.ModuleList(TemporalModule(features, num_heads, grid[0]) for _ in range(4))
        self.out = nn.Sequential(nn.Conv2d(features, features // 2, 3, padding=1), nn.Upsample(
            size=(grid[1] * patch, grid[2] * patch), mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU())

    def start_at(self, depth: float) -> None:
        """Predict `depth` metres everywhere until trained."""
        with torch.no_grad():
            self.out[-2].weight.zero_()
            self.out[-2].bias.fill_(depth)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid
        b = tokens.shape[0]
        layers = tokens[:, self.num_cls:].unflatten(-1, (4, self.dim)).unflatten(1, (t, h, w))
        maps = []
        for i in range(4):
            x = layers[:, :, :, :, i].permute(0, 1, 4, 2, 3).reshape(b * t, self.dim, h, w)
            maps.append(self.to_features[i](self.resize[i](self.project[i](x))))
        x = self.temporal[0](maps[3], t)
        x = self.temporal[2](self.fusions[0](x, None, maps[2].shape[-2:]), t)
        x = self.temporal[3](self.fusions[1](x, self.temporal[1](maps[2], t), maps[1].shape[-2:]), t)
        x = self.fusions[2](x, maps[1], maps[0].shape[-2:])
        x = self.fusions[3](x, maps[0], tuple(2 * s for s in maps[0].shape[-2:]))
        return self.out(x)[:, 0].unflatten(0, (b, t))
