"""Process-group set-up for torchrun (NCCL on GPU, gloo on CPU) and the few collectives we use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> World:
    """Join the torchrun process group when launched by torchrun with more than one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local)


def all_finite(value: torch.Tensor) -> bool:
    """True when value is finite on every rank (so all ranks skip a bad step together)."""
    ok = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def _collective_device() -> torch.device:
    """Where a tensor made for a collective must live: NCCL reduces CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(counts: list[int]) -> list[int]:
    if not dist.is_initialized():
        return counts
    total = torch.tensor(counts, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [int(v) for v in total.tolist()]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: T) -> T:
    """The main process's `obj` on every process (picklable objects)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
