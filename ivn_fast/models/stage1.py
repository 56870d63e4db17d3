"""The Stage 1 student: encoder -> (alignment heads, pooled feature) and -> predictor -> decoder.

The frozen teacher stays outside: it feeds the masks and the alignment targets, owns no
trainable state, and is neither checkpointed nor sharded with the student.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ivn_fast.config import ModelConfig
from ivn_fast.data.transforms import PIXEL_RANGE
from ivn_fast.models.decoders import build_decoder
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.heads import AttentionPool, ProjectionHead
from ivn_fast.models.patches import patchify
from ivn_fast.models.pos_embed import resize_table, sincos_3d
from ivn_fast.models.predictor import build_predictor
from ivn_fast.models.tokens import gather_tokens, masked_complement


@dataclass
class Stage1Output:
    mid: torch.Tensor | None  # [K, B, Kvis, D_teacher] L2-normalised, aligned to teacher layers
    final: torch.Tensor | None  # [B, D_final] L2-normalised pooled feature
    recon: torch.Tensor | None  # scalar reconstruction loss on masked tokens
    z: torch.Tensor | None  # [B, N - Kvis, Z] predictor latents at masked tokens
    masked_idx: torch.Tensor | None  # [B, N - Kvis] indices of the masked tokens


class Stage1Model(nn.Module):
    """Builds only the parts the chosen loss terms need (align-only drops predictor and decoder)."""

    def __init__(
        self,
        cfg: ModelConfig,
        grid: tuple[int, int, int],
        teacher_width: int,
        teacher_final_width: int,
        *,
        align: bool = True,
        recon: bool = True,
    ):
        super().__init__()
        enc = cfg.encoder
        self.grid = tuple(grid)
        self.encoder = VideoEncoder(enc, grid)
        self.num_align = cfg.teacher.num_layers if align else 0
        if align:
            self.align_pos = nn.Parameter(sincos_3d(enc.embed_dim, *grid, num_cls=enc.num_cls))
            self.align_heads = nn.ModuleList(
                ProjectionHead(enc.embed_dim, teacher_width, l2=True) for _ in range(self.num_align)
            )
            self.pool = AttentionPool(enc.embed_dim, cfg.pool_heads, cfg.pool_dim, query="mean")
            self.final_head = ProjectionHead(cfg.pool_dim, teacher_final_width, l2=True)
        self.recon = recon
        if recon:
            self.predictor = build_predictor(cfg, grid, init=cfg.predictor.init)
            d = cfg.decoder
            self.decoder = build_decoder(
                d.kind, self.predictor.width, 3 * enc.patch_size**2, width=d.width, depth=d.depth,
                diffusion_batch_mul=d.batch_mul, num_sampling_steps=d.sampling_steps, fp32=d.fp32,
                sample_range=PIXEL_RANGE,
            )

    def align_layers(self) -> tuple[int, ...]:
        depth = len(self.encoder.blocks)
        return tuple(range(depth - self.num_align, depth))

    def forward(self, video: torch.Tensor, vis_idx: torch.Tensor) -> Stage1Output:
        out = self.encoder(video, vis_idx, return_layers=self.align_layers())
        grid, num_cls = out.grid, self.encoder.num_cls
        mid = final = recon = z = masked_idx = None
        if self.num_align:
            pos = resize_table(self.align_pos, num_cls, self.grid, grid)[num_cls:].to(out.tokens.dtype)
            vis_pos = pos[vis_idx]
            mid = torch.stack([head(h[:, num_cls:] + vis_pos) for head, h in zip(self.align_heads, out.layers)])
            final = self.final_head(self.pool(out.tokens))
        if self.recon:
            n = grid[0] * grid[1] * grid[2]
            masked_idx = masked_complement(vis_idx, n)
            z_all = self.predictor(out.tokens, vis_idx, grid)
            z = gather_tokens(z_all, masked_idx)
            target = gather_tokens(patchify(video, self.encoder.cfg.patch_size), masked_idx)
            recon = self.decoder.loss(z.flatten(0, 1), target.flatten(0, 1))
        return Stage1Output(mid=mid, final=final, recon=recon, z=z, masked_idx=masked_idx)
