"""The one training loop of the probes and of fine-tuning: AdamW over epochs of batches, the
learning rate set before every step."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ivn_fast.train.distributed import all_finite

log = logging.getLogger("ivn_fast")

Batches = Callable[[int], Iterable[Sequence[torch.Tensor]]]  # epoch -> that epoch's batches


def shuffled(rows: Sequence[torch.Tensor], batch: int, seed: int) -> tuple[Batches, int]:
    """Epochs of shuffled batches of kept rows (tensors with one row per sample), one seeded
    generator across epochs (so epochs are drawn in order, from the first); and the number of
    batches per epoch."""
    g = torch.Generator().manual_seed(seed)
    n = len(rows[0])

    def epoch(_: int) -> Iterator[tuple[torch.Tensor, ...]]:
        return (tuple(r[idx] for r in rows) for idx in torch.randperm(n, generator=g).split(batch))

    return epoch, math.ceil(n / batch)


def cosine(lr: float, steps: int) -> Callable[[int], float]:
    """lr at step s: half a cosine from lr to 0 over `steps`."""
    return lambda s: lr * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))


def fit(model: nn.Module, batches: Batches, steps_per_epoch: int, loss_fn: Callable[..., torch.Tensor],
        score_fn: Callable[[nn.Module], float], *, epochs: int, lr: float, weight_decay: float, device: torch.device,
        optimizer: torch.optim.Optimizer | None = None, schedule: Callable[[int], float] | None = None,
        start_epoch: int = 0, after_epoch: Callable[[int, list[float], list[float]], None] | None = None,
        log_every: int = 0) -> tuple[list[float], list[float]]:
    """Train `model` over epochs start_epoch .. epochs-1; loss_fn(model, *batch) with the batch on the
    device. The optimiser defaults to AdamW over every parameter, the schedule (the learning rate
    at each step, times a group's "lr_scale") to a cosine from lr to 0. A step whose loss is not
    finite is skipped and logged. after_epoch(epoch, curve, losses) runs after each epoch (a
    checkpoint). Returns the validation curve (score_fn after each epoch run) and each epoch's mean
    training loss (per sample, over the steps taken)."""
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = schedule or cosine(lr, epochs * steps_per_epoch)
    curve, losses = [], []
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        model.train()
        total, count, start = torch.zeros((), device=device), 0, time.perf_counter()
        for rows in batches(epoch):
            rate = schedule(step)
            for group in opt.param_groups:
                group["lr"] = rate * group.get("lr_scale", 1.0)
            loss = loss_fn(model, *(r.to(device, non_blocking=True) for r in rows))
            step += 1
            if not all_finite(loss):  # on any process: every process skips it, so none waits on the others
                log.warning("step %d (epoch %d): the loss is not finite; the step is skipped", step, epoch + 1)
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(rows[0])
            count += len(rows[0])
            if log_every and step % log_every == 0:
                log.info("epoch %d step %d | loss %.4f | lr %.2e | %.1f clips/s", epoch + 1, step, loss.item(), rate,
                         count / (time.perf_counter() - start))
        losses.append(total.item() / max(count, 1))
        curve.append(score_fn(model))
        if after_epoch is not None:
            after_epoch(epoch, curve, losses)
    return curve, losses
