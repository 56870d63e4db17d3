"""AdamW with the usual no-decay groups, and the warmup + cosine learning-rate curve."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ivn_fast.config import OptimConfig

# Parameters that are tables or tokens rather than weights: never decayed.
_NO_DECAY_NAMES = ("pos_embed", "align_pos", "cls_token", "mask_token", "pos_table", "query")


def _decays(name: str, p: nn.Parameter) -> bool:
    return not (p.ndim <= 1 or name.endswith(".bias") or any(k in name for k in _NO_DECAY_NAMES))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if _decays(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float, num_layers: int,
                       layer_of: Callable[[str], int]) -> list[dict]:
    """param_groups split by depth for layer-wise learning-rate decay (BEiT's fine-tuning recipe):
    a parameter in layer i (layer_of its name: 0 the embeddings, num_layers + 1 the head) learns at
    decay ** (num_layers + 1 - i) times the rate, through its group's "lr_scale"."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decays = layer_of(name), _decays(name, p)
        group = groups.setdefault((layer, decays), {"params": [], "weight_decay": weight_decay if decays else 0.0,
                                                    "lr_scale": decay ** (num_layers + 1 - layer)})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused CUDA implementation when the parameters live on a GPU."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=device.type == "cuda",
    )


class LRSchedule:
    """Linear warmup from warmup_lr to lr, then half-cosine to min_lr at max_steps.

    A pure function of the step, so resuming needs nothing but the step. A run shorter than its
    warmup (a quick `--max-steps 20` check of a preset) warms up over its whole length instead.
    """

    def __init__(self, cfg: OptimConfig, max_steps: int, global_batch: int):
        scale = global_batch / 256 if cfg.scale_lr else 1.0
        self.lr, self.min_lr, self.warmup_lr = cfg.lr * scale, cfg.min_lr * scale, cfg.warmup_lr * scale
        self.warmup, self.max_steps = min(cfg.warmup_steps, max_steps), max_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup
        span = max(1, self.max_steps - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
