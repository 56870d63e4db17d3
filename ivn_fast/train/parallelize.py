"""Speed-ups applied to a built model from outside, in torchtitan's order: (activation
checkpointing), per-block compile, (FSDP2). Models know nothing about them."""

from __future__ import annotations

from torch import nn


def compile_blocks(model: nn.Module) -> int:
    """Compile every element of every nn.ModuleList in place and return how many.

    Repeated blocks share code, so dynamo reuses one graph per block type. `Module.compile`
    keeps parameter names, so checkpoints are the same compiled or not. A list nested in an
    already-compiled block is left to that block's graph.
    """
    count = 0
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                block.compile()
                count += 1
        else:
            count += compile_blocks(child)
    return count
