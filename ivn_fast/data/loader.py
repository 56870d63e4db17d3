"""Deterministic, resumable batching: the data order is a pure function of (seed, step).

Each epoch is a fresh permutation seeded by (seed, epoch), and the epochs are laid end to end
into one stream; global batch s is the slice [s * B, (s + 1) * B) of that stream, split evenly
over ranks. Every clip is read exactly once per epoch, by exactly one rank (a batch may span the
end of one epoch and the start of the next), whatever the number of processes. A resumed run at
step s therefore reads exactly the batches an uninterrupted run would, on any number of
processes. With epoch_keys the sampler yields index + epoch * num_samples, so a dataset can
draw per-epoch augmentation from the key alone.
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
        self.steps_per_epoch = num_samples // global_batch  # whole batches; a partial one carries over

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.global_batch // self.world
        orders: dict[int, torch.Tensor] = {}
        step = self.start_step
        while True:
            first = step * self.global_batch + self.rank * per_rank
            batch = []
            for pos in range(first, first + per_rank):
                epoch, offset = divmod(pos, self.num_samples)
                if epoch not in orders:
                    orders = {e: o for e, o in orders.items() if e >= epoch - 1}
                    orders[epoch] = self._order(epoch)
                index = int(orders[epoch][offset])
                batch.append(index + epoch * self.num_samples if self.epoch_keys else index)
            yield batch
            step += 1

    def __len__(self) -> int:
        return self.steps_per_epoch


def split_batches(keys: torch.Tensor, batch: int, *, rank: int, world: int) -> list[list[int]]:
    """`keys` cut into global batches of `batch`, this process's share of each (shares differ by one
    at most); a batch with fewer keys than processes is dropped, so every process takes the same steps."""
    return [k.tensor_split(world)[rank].tolist() for k in keys.split(batch) if len(k) >= world]


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
