"""Stage 1 as a task for the trainer: clip -> teacher -> masks -> student -> losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ivn_fast.config import Config
from ivn_fast.data.transforms import denormalize
from ivn_fast.losses import cosine_loss
from ivn_fast.masks import make_stage1_mask
from ivn_fast.models.patches import patchify, unpatchify
from ivn_fast.models.stage1 import Stage1Model
from ivn_fast.models.teacher import SemanticTeacher, TeacherOutput
from ivn_fast.models.tokens import gather_tokens
from ivn_fast.viz import hide_tokens

ALIGN_TERMS = ("both", "align")
RECON_TERMS = ("both", "recon")


def token_grid(cfg: Config) -> tuple[int, int, int]:
    side = cfg.data.size // cfg.model.encoder.patch_size
    return (cfg.data.num_frames, side, side)


class Stage1Task:
    """Owns the frozen teacher and the mask generator; the student is passed in (it may be wrapped)."""

    picture_name = "recon.png"
    ema_target = None  # the teacher never learns

    def __init__(self, cfg: Config, device: torch.device, seed: int):
        self.cfg = cfg
        self.device = device
        self.grid = token_grid(cfg)
        self.align = cfg.loss.terms in ALIGN_TERMS
        self.recon = cfg.loss.terms in RECON_TERMS
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.teacher = SemanticTeacher.from_pretrained(
            cfg.model.teacher.path, num_layers=cfg.model.teacher.num_layers, dtype=dtype,
            student_depth=cfg.model.encoder.depth,
        ).to(device)
        self.mask_generator = torch.Generator(device=device).manual_seed(seed)

    def build_model(self) -> Stage1Model:
        return Stage1Model(
            self.cfg.model, self.grid, self.teacher.width, self.teacher.final_width,
            align=self.align, recon=self.recon,
        )

    def _teacher_and_mask(
        self, video: torch.Tensor, generator: torch.Generator
    ) -> tuple[TeacherOutput | None, torch.Tensor]:
        t, gh, gw = self.grid
        needs_attn = self.cfg.mask.kind in ("semantic", "topk")
        teacher_out = None
        if self.align or needs_attn:
            with torch.no_grad():
                teacher_out = self.teacher(video, (gh, gw))
        vis_idx = make_stage1_mask(
            self.cfg.mask.kind,
            attn=teacher_out.attn.float() if needs_attn else None,
            batch=video.shape[0], frames=t, tokens_per_frame=gh * gw, ratio=self.cfg.mask.ratio,
            device=video.device, generator=generator,
        )
        return teacher_out, vis_idx

    def losses(self, model: nn.Module, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """`loss` (the weighted total) and each `loss_*` term."""
        teacher_out, vis_idx = self._teacher_and_mask(video, self.mask_generator)
        out = model(video, vis_idx)
        w = self.cfg.loss
        terms: dict[str, torch.Tensor] = {}
        if self.align:
            target_mid = torch.stack([gather_tokens(layer, vis_idx) for layer in teacher_out.layers])
            terms["loss_mid"] = cosine_loss(out.mid.float(), target_mid.float())
            terms["loss_final"] = cosine_loss(out.final.float(), teacher_out.final.float())
        if self.recon:
            terms["loss_recon"] = out.recon.float()
        weights = {"loss_mid": w.w_mid, "loss_final": w.w_final, "loss_recon": w.w_recon}
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def after_step(self, model: nn.Module) -> None:
        """The teacher is fixed: nothing to update after an optimiser step."""

    def state_dict(self) -> dict[str, Any]:
        return {"mask_rng": self.mask_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mask_generator.set_state(state["mask_rng"])

    def checkpoint_meta(self) -> dict[str, Any]:
        """Nothing beyond the config: the teacher comes from model.teacher.path."""
        return {}

    @torch.no_grad()
    def reconstruct(self, model: Stage1Model, video: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """Masked input, decoder reconstruction (visible patches kept) and original, in [0, 1].

        Uses its own mask generator so pictures never shift the training random streams.
        """
        generator = torch.Generator(device=video.device).manual_seed(seed)
        _, vis_idx = self._teacher_and_mask(video, generator)
        p = self.cfg.model.encoder.patch_size
        patches = patchify(video, p)
        to_pixels = lambda x: denormalize(unpatchify(x, p, self.grid), channel_dim=1).clamp(0, 1)  # noqa: E731
        original = to_pixels(patches)
        shown = {"masked input": hide_tokens(original, vis_idx, p, self.grid)}
        if self.recon:
            out = model(video, vis_idx)
            index = out.masked_idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
            # a sample, and the noise-free path (temperature 0), which shows what an early decoder
            # has learned before its samples sharpen
            for label, temperature in (("reconstruction", 1.0), ("temperature 0", 0.0)):
                filled = model.decoder.reconstruct(out.z.flatten(0, 1).float(), temperature=temperature,
                                                   generator=generator)
                shown[label] = to_pixels(patches.scatter(1, index, filled.view(index.shape).to(patches.dtype)))
                if model.decoder.deterministic:
                    break
        shown["original"] = original
        return shown
