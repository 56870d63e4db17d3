"""Optional triton import shared by the op modules.

Without triton the kernels are still defined (as plain, never-called functions) so each op
module reads the same either way; `HAS_TRITON` keeps every call on the PyTorch path.
"""

from __future__ import annotations

import types

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False
    triton = types.SimpleNamespace(jit=lambda fn: fn)
    tl = types.SimpleNamespace(constexpr=int)

__all__ = ["HAS_TRITON", "tl", "triton"]


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n: the padded block a masked row load covers."""
    return 1 << max(0, n - 1).bit_length()


def row_block(width: int, target: int = 4096) -> int:
    """Rows per program so a [rows, next_power_of_2(width)] tile holds about `target` elements:
    wide rows get one or two per program, narrow ones enough to keep the loads in flight."""
    return max(1, min(64, target // next_power_of_2(width)))


def num_warps(block_elems: int) -> int:
    """Warps for a tile: 4 up to 2K elements, 8 up to 8K, 16 beyond (16-byte loads per thread)."""
    return 4 if block_elems <= 2048 else 8 if block_elems <= 8192 else 16


def same_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The references promote mixed dtypes; the kernels take one, so promote up front (a no-op
    in the models, where they already agree)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel fills comes from here, so tests can poison them all in one place."""
    return torch.empty(shape, dtype=dtype, device=device)
