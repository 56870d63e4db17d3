"""Speed-ups applied to a built model from outside, in torchtitan's order: (activation
checkpointing), per-block compile, (FSDP2). Models know nothing about them."""

from __future__ import annotations

import functools
from collections.abc import Iterator

from torch import nn
from torch.utils.checkpoint import checkpoint


def repeated_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """Every element of every nn.ModuleList, outermost lists only (a list inside a block is
    part of that block)."""
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            yield from child
        else:
            yield from repeated_blocks(child)


def checkpoint_blocks(model: nn.Module, mode: str) -> int:
    """Wrap the forward of every block (full) or every other block (selective) in non-reentrant
    activation checkpointing, in place (parameter names unchanged); returns how many."""
    if mode not in ("none", "full", "selective"):
        raise ValueError(f"activation checkpointing must be none, full or selective, got {mode!r}")
    count = 0
    for i, block in enumerate(repeated_blocks(model) if mode != "none" else ()):
        if mode == "full" or i % 2 == 0:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
            count += 1
    return count


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile every repeated block in place and return how many.

    Repeated blocks share code, so dynamo reuses one graph per block type. `Module.compile`
    keeps parameter names, so checkpoints are the same compiled or not.
    """
    count = 0
    for block in repeated_blocks(model):
        block.compile(backend=backend)
        count += 1
    return count
