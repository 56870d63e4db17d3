"""Masked-token movement: gather the visible tokens, merge them back among mask tokens.

`gather_tokens` and `merge_tokens` live in `ivn_kernels.tokens` next to their fused Triton
kernels; calling them runs Triton or the PyTorch reference as `train.kernels` selects.
"""

from __future__ import annotations

import torch

from ivn_kernels.tokens import gather_tokens, merge_tokens

__all__ = ["gather_tokens", "masked_complement", "merge_tokens"]


def masked_complement(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Sorted indices of the tokens not in idx[B, K]: [B, N - K]."""
    keep = torch.ones(idx.shape[0], num_tokens, dtype=torch.bool, device=idx.device)
    keep.scatter_(1, idx, False)
    return keep.nonzero()[:, 1].view(idx.shape[0], num_tokens - idx.shape[1])
