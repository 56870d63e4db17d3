"""Stage 2: the student (encoder -> predictor -> head) and its targets.

The student predicts, at hidden positions, the tokens a target model gives for the full clip.
The default target is the Stage 1 encoder itself, frozen (the paper's choice); an EMA of the
student's encoder and the external SigLIP teacher are ablation switches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.config import ModelConfig
from ivn_fast.data.transforms import PIXEL_RANGE
from ivn_fast.models.decoders import build_decoder
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.heads import ProjectionHead
from ivn_fast.models.patches import patchify
from ivn_fast.models.pos_embed import resize_table
from ivn_fast.models.predictor import build_predictor
from ivn_fast.models.teacher import SemanticTeacher
from ivn_fast.models.tokens import gather_tokens, masked_complement


@dataclass
class Stage2Output:
    pred: torch.Tensor  # [B, M, D] unit predictions at the hidden tokens
    masked_idx: torch.Tensor  # [B, M] hidden token indices, sorted
    visible: torch.Tensor | None  # [B, K, D] unit projections of the visible tokens (w_visible > 0)
    recon: torch.Tensor | None  # scalar pixel loss at the hidden tokens (w_recon > 0)


class Stage2Student(nn.Module):
    """Same encoder and predictor as Stage 1 (same parameter names, so Stage 1 weights load
    directly), a head from predictor width to the target width, optional ablation heads."""

    def __init__(self, cfg: ModelConfig, grid: tuple[int, int, int], target_dim: int, *,
                 visible_head: bool = False, recon: bool = False):
        super().__init__()
        enc = cfg.encoder
        self.grid = tuple(grid)
        self.encoder = VideoEncoder(enc, grid)
        self.predictor = build_predictor(cfg, grid, init=False)
        self.head = ProjectionHead(self.predictor.width, target_dim, l2=True)
        self.visible_head = ProjectionHead(enc.embed_dim, target_dim, l2=True) if visible_head else None
        self.decoder = None
        if recon:
            d = cfg.decoder
            self.decoder = build_decoder(
                d.kind, self.predictor.width, 3 * enc.patch_size**2, width=d.width, depth=d.depth,
                diffusion_batch_mul=d.batch_mul, num_sampling_steps=d.sampling_steps, fp32=d.fp32,
                sample_range=PIXEL_RANGE,
            )

    def forward(self, video: torch.Tensor, vis_idx: torch.Tensor) -> Stage2Output:
        out = self.encoder(video, vis_idx)
        nc = self.encoder.num_cls
        grid = out.grid
        masked_idx = masked_complement(vis_idx, grid[0] * grid[1] * grid[2])
        z = gather_tokens(self.predictor(out.tokens, vis_idx, grid), masked_idx)
        visible = self.visible_head(out.tokens[:, nc:]) if self.visible_head is not None else None
        recon = None
        if self.decoder is not None:
            target = gather_tokens(patchify(video, self.encoder.cfg.patch_size), masked_idx)
            recon = self.decoder.loss(z.flatten(0, 1), target.flatten(0, 1))
        return Stage2Output(pred=self.head(z), masked_idx=masked_idx, visible=visible, recon=recon)


class EncoderTarget(nn.Module):
    """A Stage 1 encoder run on the whole clip: unit token features [B, N, D], never trained by
    gradients; with momentum < 1 it follows the student's encoder by EMA. Takes ownership of
    `encoder` (pass one the student does not share)."""

    def __init__(self, encoder: VideoEncoder, momentum: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.momentum = momentum
        self.requires_grad_(False)
        self.eval()

    @property
    def width(self) -> int:
        return self.encoder.width

    def train(self, mode: bool = True) -> EncoderTarget:
        return super().train(False)

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(video).tokens[:, self.encoder.num_cls:]
        return F.normalize(tokens.float(), dim=-1)

    @torch.no_grad()
    def update(self, student: VideoEncoder) -> None:
        """target <- m * target + (1 - m) * student, parameter by parameter."""
        if self.momentum >= 1.0:
            return
        mine = list(self.encoder.parameters())
        theirs = [p.detach().to(mine[0].dtype) for p in student.parameters()]
        torch._foreach_lerp_(mine, theirs, 1.0 - self.momentum)


class SiglipTarget(nn.Module):
    """The external SigLIP teacher's deepest aligned layer as the target (Table 3 ablation)."""

    def __init__(self, teacher: SemanticTeacher, grid: tuple[int, int, int]):
        super().__init__()
        self.teacher = teacher
        self.grid = grid

    @property
    def width(self) -> int:
        return self.teacher.width

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.teacher(video, self.grid[1:]).layers[-1].float()

    def update(self, student: VideoEncoder) -> None:
        """Frozen: nothing to follow."""


def load_stage1_weights(module: nn.Module, stage1: dict[str, torch.Tensor], prefixes: tuple[str, ...],
                        num_cls: int, saved_grid: tuple[int, int, int], grid: tuple[int, int, int]) -> None:
    """Copy the Stage 1 parameters under `prefixes` into module, resizing position tables to the
    new token grid (Stage 2 may run more frames). Raises ValueError naming a missing or
    differently shaped parameter."""
    own = module.state_dict()
    wanted = {k: v for k, v in stage1.items() if k.startswith(prefixes)}
    missing = [k for k in own if k.startswith(prefixes) and k not in wanted]
    if missing:
        raise ValueError(f"the Stage 1 checkpoint lacks {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''}")
    for key, value in wanted.items():
        if key not in own:
            raise ValueError(f"the Stage 1 checkpoint has {key}, which this model does not")
        if key.endswith("pos_embed") and tuple(saved_grid) != tuple(grid):
            value = resize_table(value, num_cls, saved_grid, grid)
        if value.shape != own[key].shape:
            raise ValueError(f"{key}: the Stage 1 checkpoint holds shape {tuple(value.shape)}, "
                             f"this model {tuple(own[key].shape)}")
        own[key].copy_(value)
