"""Deterministic, resumable batching: the data order is a pure function of (seed, step).

Each epoch is a fresh permutation seeded by (seed, epoch); a global batch is a contiguous
slice of it, split evenly over ranks, and the last partial batch of an epoch is dropped. A
resumed run at step s therefore reads exactly the batches an uninterrupted run would. With
epoch_keys the sampler yields index + epoch * num_samples, so a dataset can draw per-epoch
augmentation from the key alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class StepBatchSampler(Sampler[list[int]]):
    """Infinite batches of dataset indices for one rank, starting at a given global step."""

    def __init__(self, num_samples: int, global_batch: int, *, rank: int = 0, world: int = 1,
                 seed: int = 0, start_step: int = 0, epoch_keys: bool = False):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} does not split over {world} processes")
        if num_samples < global_batch:
            raise ValueError(f"dataset has {num_samples} clips, fewer than one global batch ({global_batch})")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world, self.seed, self.start_step = rank, world, seed, start_step
        self.epoch_keys = epoch_keys
        self.steps_per_epoch = num_samples // global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        per_rank = self.global_batch // self.world
        epoch, order = -1, None
        while True:
            e, i = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, self._order(e)
            start = i * self.global_batch + self.rank * per_rank
            batch = order[start:start + per_rank]
            yield (batch + epoch * self.num_samples if self.epoch_keys else batch).tolist()
            step += 1

    def __len__(self) -> int:
        return self.steps_per_epoch


def build_loader(dataset: Dataset, global_batch: int, *, rank: int, world: int, seed: int, start_step: int,
                 num_workers: int, pin_memory: bool, epoch_keys: bool = False) -> DataLoader:
    """A DataLoader over StepBatchSampler with its own generator (never touching the global RNG)."""
    sampler = StepBatchSampler(len(dataset), global_batch, rank=rank, world=world, seed=seed,
                               start_step=start_step, epoch_keys=epoch_keys)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
