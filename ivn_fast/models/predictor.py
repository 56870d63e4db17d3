"""The predictor P: encoder outputs on visible tokens -> one latent z per token of the clip.

Visible features go back to their grid positions among copies of a learned mask token, get
P's own position table, and pass with the CLS tokens through a projection MLP into the layers'
width, then through the last layers of ModernBERT (the paper's choice) or a plain ViT (the
Table 1b ablation). P sees every token; the losses pick the masked ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ivn_fast.config import ModelConfig
from ivn_fast.models.layers import Block
from ivn_fast.models.modernbert import load_modernbert_layers
from ivn_fast.models.pos_embed import resize_table, sincos_3d
from ivn_fast.models.tokens import merge_tokens

KINDS = ("modernbert", "vit")


def _projection(enc_dim: int, width: int) -> nn.Sequential:
    proj = nn.Sequential(
        nn.Linear(enc_dim, enc_dim), nn.GELU(), nn.Linear(enc_dim, width), nn.LayerNorm(width, eps=1e-5)
    )
    for m in proj:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return proj


def _vit_layers(depth: int, width: int, heads: int) -> nn.ModuleList:
    layers = nn.ModuleList(Block(width, heads) for _ in range(depth))
    for m in layers.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return layers


class Predictor(nn.Module):
    """`width` is the latent size handed to the decoder (1024 for ModernBERT-Large)."""

    def __init__(
        self,
        *,
        enc_dim: int,
        num_cls: int,
        grid: tuple[int, int, int],
        kind: str = "modernbert",
        path: str | None = None,
        num_layers: int = 5,
        init: bool = True,
        vit_depth: int = 5,
        vit_width: int = 1024,
        vit_heads: int = 16,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"predictor kind must be one of {KINDS}, got {kind!r}")
        self.num_cls = num_cls
        self.grid = tuple(grid)
        self.mask_token = nn.Parameter(torch.zeros(enc_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.pos_embed = nn.Parameter(sincos_3d(enc_dim, *self.grid, num_cls=num_cls))
        if kind == "modernbert":
            self.layers, config = load_modernbert_layers(path, num_layers, init=init)
            self.width = config.hidden_size
        else:
            self.layers = _vit_layers(vit_depth, vit_width, vit_heads)
            self.width = vit_width
        self.proj = _projection(enc_dim, self.width)

    def forward(self, x: torch.Tensor, vis_idx: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """x [B, num_cls + K, enc_dim] (CLS, then visible tokens in vis_idx order) -> [B, t*h*w, width]."""
        nc = self.num_cls
        if x.shape[1] != nc + vis_idx.shape[1]:
            raise ValueError(f"predictor got {x.shape[1]} tokens for {nc} CLS + {vis_idx.shape[1]} visible")
        n = grid[0] * grid[1] * grid[2]
        pos = resize_table(self.pos_embed, nc, self.grid, tuple(grid)).to(x.dtype)
        tokens = merge_tokens(x[:, nc:], vis_idx, self.mask_token, pos[nc:], n)
        h = self.proj(torch.cat([x[:, :nc] + pos[:nc], tokens], dim=1))
        for layer in self.layers:
            h = layer(h)
        return h[:, nc:]


def build_predictor(cfg: ModelConfig, grid: tuple[int, int, int], *, init: bool) -> Predictor:
    """The predictor `cfg` describes, fitted to its encoder, at `grid`; `init` copies ModernBERT's
    pretrained weights (Stage 1's start), else the shapes alone (weights loaded after)."""
    enc, p = cfg.encoder, cfg.predictor
    return Predictor(enc_dim=enc.embed_dim, num_cls=enc.num_cls, grid=grid, kind=p.kind, path=p.path or None,
                     num_layers=p.num_layers, init=init, vit_depth=p.vit_depth, vit_width=p.vit_width,
                     vit_heads=p.vit_heads)
