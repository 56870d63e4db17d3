"""Stage 2 as a task for the trainer: clip -> target tokens; two multi-block views -> student -> losses."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ivn_fast.config import Config, from_dict, to_dict
from ivn_fast.data.transforms import denormalize
from ivn_fast.losses import cosine_loss
from ivn_fast.masks.multiblock import BlockSpec, multiblock_mask
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.stage2 import EncoderTarget, SiglipTarget, Stage2Student, load_stage1_weights
from ivn_fast.models.teacher import SemanticTeacher
from ivn_fast.models.tokens import gather_tokens
from ivn_fast.train import checkpoint as ckpt
from ivn_fast.train.stage1 import token_grid
from ivn_fast.viz import hide_tokens

log = logging.getLogger("ivn_fast")

# Stage 1 fields that fix the shapes Stage 2 inherits: (dotted name, needed when)
_ENCODER_FIELDS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "num_cls", "qk_norm")
_PREDICTOR_FIELDS = ("kind", "num_layers", "vit_depth", "vit_width", "vit_heads")
_DECODER_FIELDS = ("kind", "width", "depth")


def find_stage1_checkpoint(cfg: Config, saved: dict[str, Any] | None = None) -> Path:
    """stage2.init; else, for a resumed run, the Stage 1 checkpoint it started from (`saved`, what
    its checkpoint recorded: a newer one may have been written since); else the newest Stage 1
    checkpoint under OUTPUT_DIR/checkpoints."""
    if cfg.stage2.init:
        return Path(cfg.stage2.init)
    if saved is not None:
        started = saved.get("stage1_checkpoint")
        if started is None:
            log.warning("the checkpoint resumed does not record its Stage 1 checkpoint (written by an older "
                        "version): the newest one is used; pass --stage2.init to pin it")
        elif not (Path(started) / "state.pt").is_file():
            raise ckpt.CheckpointError(f"this run continues from Stage 1 checkpoint {started}, which is gone; "
                                       "the frozen target cannot be rebuilt without it")
        else:
            return Path(started)
    root = Path(cfg.output_dir) / "checkpoints"
    found = ckpt.latest_checkpoint(root)
    if found is None:
        raise ckpt.CheckpointError(
            f"stage 2 needs a Stage 1 checkpoint: none under {root}; train Stage 1 first with the same "
            f"--output_dir, or pass --stage2.init DIR")
    return found


def stage1_mismatch(saved: dict, cfg: Config) -> list[str]:
    """Dotted names of the shape-fixing fields where the Stage 1 run (its config tree) and this one differ."""
    names = [f"model.encoder.{f}" for f in _ENCODER_FIELDS]
    if cfg.stage2.init_predictor:
        names += [f"model.predictor.{f}" for f in _PREDICTOR_FIELDS]
    if cfg.stage2.w_recon > 0:
        names += [f"model.decoder.{f}" for f in _DECODER_FIELDS]
    return ckpt.config_diff(saved, to_dict(cfg), keys=tuple(names))


class Stage2Task:
    """Owns the target model, the Stage 1 weights and the mask generator."""

    picture_name = "masks.png"

    def __init__(self, cfg: Config, device: torch.device, seed: int, saved: dict[str, Any] | None = None):
        """`saved`: what checkpoint_meta() recorded in the checkpoint this run resumes (None: a fresh run)."""
        self.cfg, self.device = cfg, device
        self.grid = token_grid(cfg)
        s2 = cfg.stage2
        path = find_stage1_checkpoint(cfg, saved)
        state = ckpt.load_checkpoint(path)
        saved = from_dict(state["config"])
        if saved.train.stage != 1:
            raise ckpt.CheckpointError(f"{path} is a Stage {saved.train.stage} checkpoint, not Stage 1")
        diff = stage1_mismatch(state["config"], cfg)
        if diff:
            raise ckpt.CheckpointError(f"Stage 1 checkpoint {path} was trained with different shapes; "
                                          f"differing fields: {', '.join(diff)}")
        if s2.w_recon > 0 and not any(k.startswith("decoder.") for k in state["model"]):
            raise ckpt.CheckpointError(f"stage2.w_recon needs a Stage 1 decoder, and {path} has none "
                                          f"(it was trained with loss.terms={saved.loss.terms})")
        self.stage1_path = path
        log.info("stage 2 starts from Stage 1 checkpoint %s", path)
        self.stage1 = state["model"]
        self.saved_grid = token_grid(saved)
        self.specs = (BlockSpec(s2.small_blocks, s2.small_scale, (s2.aspect_min, s2.aspect_max)),
                      BlockSpec(s2.large_blocks, s2.large_scale, (s2.aspect_min, s2.aspect_max)))
        self.mask_generator = torch.Generator(device=device).manual_seed(seed)
        self.teacher = self._build_target().to(device)

    def _load(self, module: nn.Module, prefixes: tuple[str, ...]) -> None:
        try:
            load_stage1_weights(module, self.stage1, prefixes, self.cfg.model.encoder.num_cls,
                                self.saved_grid, self.grid)
        except ValueError as e:
            raise ckpt.CheckpointError(f"{self.stage1_path}: {e}") from None

    def _build_target(self) -> nn.Module:
        s2 = self.cfg.stage2
        bf16 = torch.bfloat16 if self.device.type == "cuda" else None
        if s2.target == "siglip":
            teacher = SemanticTeacher.from_pretrained(self.cfg.model.teacher.path, num_layers=1, dtype=bf16,
                                                      student_depth=self.cfg.model.encoder.depth)
            return SiglipTarget(teacher, self.grid)
        target = EncoderTarget(VideoEncoder(self.cfg.model.encoder, self.grid), s2.momentum)
        self._load(target, ("encoder.",))
        # a frozen target only runs forward: bf16 halves its memory; an EMA target keeps fp32
        return target.to(bf16) if bf16 is not None and s2.momentum >= 1.0 else target

    def build_model(self) -> Stage2Student:
        s2 = self.cfg.stage2
        model = Stage2Student(self.cfg.model, self.grid, self.teacher.width, visible_head=s2.w_visible > 0,
                              recon=s2.w_recon > 0)
        prefixes = ("encoder.",) + (("predictor.",) if s2.init_predictor else ()) + (
            ("decoder.",) if s2.w_recon > 0 else ())
        self._load(model, prefixes)
        return model

    def _views(self, batch: int, device: torch.device, generator: torch.Generator) -> list:
        s2 = self.cfg.stage2
        return [multiblock_mask(spec, batch, self.grid, max_keep_per_8=s2.max_keep or None,
                                truncation=s2.truncation, device=device, generator=generator)
                for spec in self.specs]

    def losses(self, model: nn.Module, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """`loss` (the weighted total), `loss_*` terms per view, and each view's mask statistics."""
        s2 = self.cfg.stage2
        target = self.teacher(video)  # [B, N, D] unit, computed once for both views
        pred, visible, recon, stats = [], [], [], {}
        for v, view in enumerate(self._views(video.shape[0], video.device, self.mask_generator), start=1):
            out = model(video, view.vis_idx)
            pred.append(cosine_loss(out.pred.float(), gather_tokens(target, out.masked_idx)))
            if out.visible is not None:
                visible.append(cosine_loss(out.visible.float(), gather_tokens(target, view.vis_idx)))
            if out.recon is not None:
                recon.append(out.recon.float())
            stats[f"mask{v}_hidden_frac"] = torch.tensor(view.masked_frac)
            stats[f"mask{v}_block_tokens"] = torch.tensor(float(view.block_hw[0] * view.block_hw[1]))
        terms = {f"loss_pred{v}": value for v, value in enumerate(pred, start=1)}
        total = sum(pred)  # the two views' losses add, as in the released Stage 2 engine
        if visible:
            terms["loss_visible"] = sum(visible) / len(visible)
            total = total + s2.w_visible * terms["loss_visible"]
        if recon:
            terms["loss_recon"] = sum(recon) / len(recon)
            total = total + s2.w_recon * terms["loss_recon"]
        return {"loss": total, **terms, **{k: v.to(video.device) for k, v in stats.items()}}

    def after_step(self, model: nn.Module) -> None:
        self.teacher.update(model.encoder)

    @property
    def ema_target(self) -> nn.Module | None:
        """The target when it learns (by EMA): checkpointed, and sharded like the student."""
        return self.teacher if isinstance(self.teacher, EncoderTarget) and self.teacher.momentum < 1.0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"mask_rng": self.mask_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mask_generator.set_state(state["mask_rng"])

    def checkpoint_meta(self) -> dict[str, Any]:
        """Where the student and the target came from: a resumed run rebuilds them from the same place."""
        return {"stage1_checkpoint": str(self.stage1_path)}

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, video: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """The two mask views' context over the clip, and the clip, in [0, 1]."""
        generator = torch.Generator(device=video.device).manual_seed(seed)
        original = denormalize(video, channel_dim=1).clamp(0, 1)
        p = self.cfg.model.encoder.patch_size
        shown = {f"view {v} context": hide_tokens(original, view.vis_idx, p, self.grid)
                 for v, view in enumerate(self._views(video.shape[0], video.device, generator), start=1)}
        shown["original"] = original
        return shown
