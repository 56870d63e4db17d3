"""The video ViT encoder: 1x14x14 patches, 4 CLS tokens, runs on the visible tokens only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ivn_fast.config import EncoderConfig
from ivn_fast.models.layers import Block, RMSNorm
from ivn_fast.models.pos_embed import resize_table, sincos_3d
from ivn_fast.models.tokens import gather_tokens


class PatchEmbed(nn.Module):
    """RMSNorm over each raw patch (pixels in (h, w, c) order), a linear projection, RMSNorm.

    Equivalent to the released Conv3d patch embedding with its two norms; a Linear keeps the
    projection one matmul.
    """

    def __init__(self, patch: int, dim: int, channels: int = 3):
        super().__init__()
        self.patch = patch
        self.norm_in = RMSNorm(channels * patch * patch)
        self.proj = nn.Linear(channels * patch * patch, dim)
        self.norm_out = RMSNorm(dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        p = self.patch
        x = video.reshape(b, c, t, h // p, p, w // p, p).permute(0, 2, 3, 5, 4, 6, 1)
        x = x.reshape(b, t * (h // p) * (w // p), p * p * c)
        return self.norm_out(self.proj(self.norm_in(x)))


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # [B, num_cls + K, C] final block output
    layers: list[torch.Tensor]  # outputs of the requested blocks, same shape
    grid: tuple[int, int, int]  # (t, h, w) token grid of the clip


class VideoEncoder(nn.Module):
    """ViT over visible tokens with QK-norm, RMSNorm, LayerScale and no final norm."""

    def __init__(self, cfg: EncoderConfig, grid: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        self.grid = tuple(grid)
        self.num_cls = cfg.num_cls
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, cfg.num_cls, cfg.embed_dim))
        self.pos_embed = nn.Parameter(sincos_3d(cfg.embed_dim, *grid, num_cls=cfg.num_cls))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qk_norm=cfg.qk_norm,
                  layerscale=cfg.layerscale or None, drop_path=0.0)
            for _ in range(cfg.depth)
        )
        self.set_drop_path(cfg.drop_path)
        self.reset_parameters()

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 at the first block to `rate` at the last (fine-tuning
        sets its own rate on a loaded encoder)."""
        for i, blk in enumerate(self.blocks):
            blk.drop_path.set_rate(rate * i / max(1, len(self.blocks) - 1))

    def reset_parameters(self) -> None:
        """Truncated-normal linears, then each block's output projections scaled by 1/sqrt(2*depth_i)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for i, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))

    @property
    def width(self) -> int:
        return self.cfg.embed_dim

    def pos_table(self, grid: tuple[int, int, int]) -> torch.Tensor:
        return resize_table(self.pos_embed, self.num_cls, self.grid, grid)

    def grid_of(self, video: torch.Tensor) -> tuple[int, int, int]:
        _, _, t, h, w = video.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"frame size {h}x{w} is not divisible by the patch size {p}")
        return (t, h // p, w // p)

    def forward(
        self, video: torch.Tensor, vis_idx: torch.Tensor | None = None, return_layers: tuple[int, ...] = ()
    ) -> EncoderOutput:
        """video [B, 3, T, H, W]; vis_idx [B, K] visible token indices (None: every token)."""
        grid = self.grid_of(video)
        x = self.patch_embed(video)
        pos = self.pos_table(grid).to(x.dtype)
        if vis_idx is None:
            x = x + pos[self.num_cls:]
        else:
            x = gather_tokens(x, vis_idx, pos[self.num_cls:])
        cls = (self.cls_token + pos[: self.num_cls]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls.to(x.dtype), x], dim=1)
        layers = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in return_layers:
                layers.append(x)
        return EncoderOutput(tokens=x, layers=layers, grid=grid)
