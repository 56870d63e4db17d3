"""Speed-ups applied to a built model from outside, in torchtitan's order: (activation
checkpointing), per-block compile, (FSDP2). Models know nothing about them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ivn_fast.config import AC_MODES

# ops whose outputs `op` checkpointing keeps: the expensive ones to recompute
_SAVED_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
              torch.ops.aten.baddbmm.default}


def repeated_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """Every element of every nn.ModuleList, outermost lists only (a list inside a block is
    part of that block)."""
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            yield from child
        else:
            yield from repeated_blocks(child)


def _keep_products(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Keep matrix products and attention, recompute the rest (norms, activations, residuals)."""
    if op in _SAVED_OPS or "attention" in str(op) or "flash" in str(op):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_blocks(model: nn.Module, mode: str) -> int:
    """Wrap the forward of blocks in non-reentrant activation checkpointing, in place (parameter
    names unchanged), and return how many: every block (full), every other block (selective), or
    every block keeping its matrix products and attention outputs so that only the cheap
    elementwise work is recomputed (op). `budget` wraps nothing: the compiler decides
    (`set_memory_budget`)."""
    if mode not in AC_MODES:
        raise ValueError(f"activation checkpointing must be one of {', '.join(AC_MODES)}, got {mode!r}")
    options: dict[str, Any] = {"use_reentrant": False}
    if mode == "op":
        options["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_products)
    count = 0
    for i, block in enumerate(repeated_blocks(model) if mode not in ("none", "budget") else ()):
        if mode != "selective" or i % 2 == 0:
            block.forward = _checkpointed(block.forward, options)
            count += 1
    return count


def _checkpointed(forward: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    """`forward` under checkpointing, as a plain function: torch.compile traces a call to
    `checkpoint` made inside it (a functools.partial of `checkpoint` would stay uncompiled)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(forward, *args, **options, **kwargs)

    return run


def set_memory_budget(budget: float) -> None:
    """The share of its activations every graph compiled from now on keeps for backward.

    Below 1 the min-cut partitioner (inductor's, and aot_eager_decomp_partition's) recomputes
    instead of saving, cheapest work first, until what it saves fits. The setting is global to
    the process, so every trainer sets it, 1.0 (torch's default) when not asked for a budget.
    """
    import torch._functorch.config as functorch_config

    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"memory budget must be in [0, 1], got {budget}")
    functorch_config.activation_memory_budget = budget


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


def _float32_diffusion_nets(model: nn.Module) -> list[nn.Module]:
    """The diffusion heads' networks that run in float32 (the reference's choice)."""
    from ivn_fast.models.decoders import DiffusionDecoder

    return [m.net for m in model.modules() if isinstance(m, DiffusionDecoder) and m.fp32]


def shard_model(model: nn.Module, param_dtype: torch.dtype | None, *, forward_only: bool = False) -> int:
    """FSDP2 in place: `fully_shard` every repeated block, then the float32 subtrees, then the root.

    Parameters are sharded over all processes; each block's are gathered just before it runs and
    freed after. `param_dtype` (bf16 on GPU) is the dtype they are gathered in, gradients are
    reduced in float32, and a float32 diffusion head keeps float32 throughout. Inputs are never
    cast: autocast picks each op's dtype, so a sharded run computes what one process would (the
    raw clip and the pixel targets made from it, and float32 residual streams, keep their dtype).
    Returns how many units were sharded. The root stays gathered between forward and backward,
    unless the model only ever runs forward (an EMA target), whose weights must be back in shards
    for the update.
    """
    sharded = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    full = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    fp32 = _float32_diffusion_nets(model)
    in_fp32 = {id(m) for tree in fp32 for m in tree.modules()}
    count = 0
    for block in repeated_blocks(model):
        fully_shard(block, mp_policy=full if id(block) in in_fp32 else sharded)
        count += 1
    for tree in fp32:
        fully_shard(tree, mp_policy=full)
        count += 1
    fully_shard(model, mp_policy=sharded, reshard_after_forward=True if forward_only else None)
    return count + 1
