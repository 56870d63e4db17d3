"""The probes' one training loop: AdamW on a cosine schedule over shuffled batches of kept features."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


def fit(probe: nn.Module, rows: Sequence[torch.Tensor], loss_fn: Callable[..., torch.Tensor],
        score_fn: Callable[[nn.Module], float], *, epochs: int, batch: int, lr: float, weight_decay: float,
        seed: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Train `probe` for `epochs` passes over `rows` (CPU tensors, one row per sample, batched
    together); loss_fn(probe, *batch_rows) on the device. Returns the validation curve (score_fn
    after each epoch) and each epoch's mean training loss."""
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(rows[0])
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    curve, losses = [], []
    for _ in range(epochs):
        probe.train()
        total = torch.zeros((), device=device)
        for idx in torch.randperm(n, generator=g).split(batch):
            loss = loss_fn(probe, *(r[idx].to(device) for r in rows))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
        losses.append(total.item() / n)
        curve.append(score_fn(probe))
    return curve, losses
