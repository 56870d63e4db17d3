"""The probes' one training loop: AdamW on a cosine schedule over shuffled batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

Batches = Callable[[], Iterable[Sequence[torch.Tensor]]]  # one epoch of batches per call


def shuffled(rows: Sequence[torch.Tensor], batch: int, seed: int) -> tuple[Batches, int]:
    """Epochs of shuffled batches of kept rows (tensors with one row per sample), one seeded
    generator across epochs; and the number of batches per epoch."""
    g = torch.Generator().manual_seed(seed)
    n = len(rows[0])

    def epoch() -> Iterator[tuple[torch.Tensor, ...]]:
        return (tuple(r[idx] for r in rows) for idx in torch.randperm(n, generator=g).split(batch))

    return epoch, math.ceil(n / batch)


def fit(probe: nn.Module, batches: Batches, steps_per_epoch: int, loss_fn: Callable[..., torch.Tensor],
        score_fn: Callable[[nn.Module], float], *, epochs: int, lr: float, weight_decay: float,
        device: torch.device) -> tuple[list[float], list[float]]:
    """Train `probe` for `epochs` calls of `batches`; loss_fn(probe, *batch) with the batch on the
    device. Returns the validation curve (score_fn after each epoch) and each epoch's mean
    training loss (per sample)."""
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    curve, losses = [], []
    for _ in range(epochs):
        probe.train()
        total, count = torch.zeros((), device=device), 0
        for rows in batches():
            loss = loss_fn(probe, *(r.to(device, non_blocking=True) for r in rows))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(rows[0])
            count += len(rows[0])
        losses.append(total.item() / max(count, 1))
        curve.append(score_fn(probe))
    return curve, losses
