"""Process-group set-up for torchrun (NCCL on GPU, gloo on CPU) and the few collectives we use."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

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


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each value summed over the processes, of its own type (int or float)."""
    if not dist.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [type(v)(t) for v, t in zip(values, total.tolist())]


def data_parallel(model: nn.Module, world: World) -> nn.Module:
    """`model` under DDP when several processes train it, else itself."""
    return model if world.size == 1 else DistributedDataParallel(model)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group after freeing what still holds it (a DDP wrapper in a reference cycle):
    destroyed after the group, it can abort the process at exit."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def broadcast_object(obj: T) -> T:
    """The main process's `obj` on every process (picklable objects)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_keeping_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of every process in rank order (their counts may differ), where only this process's own rows
    carry their gradient. A loss over the whole batch then gives each process the exact gradient of its
    own rows, with no collective in the backward pass."""
    if not dist.is_initialized():
        return x
    count = torch.tensor([len(x)], device=x.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = x.detach().new_zeros(max(sizes), *x.shape[1:])
    padded[:len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    rows = [p[:n] for p, n in zip(parts, sizes)]
    rows[dist.get_rank()] = x
    return torch.cat(rows)
