"""Masked-token movement: gather the visible tokens, merge them back among mask tokens.

These are the plain PyTorch definitions; the fused kernels must match them.
"""

from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of x[B, N, C] at idx[B, K], plus pos[N, C] at the same rows."""
    index = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    out = torch.gather(x, 1, index)
    if pos is not None:
        out = out + pos[idx]
    return out


def merge_tokens(
    vis: torch.Tensor, idx: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor, num_tokens: int
) -> torch.Tensor:
    """[B, N, C]: vis[B, K, C] at rows idx, mask_token[C] elsewhere, plus pos[N, C] everywhere."""
    b, _, c = vis.shape
    base = mask_token.to(vis.dtype).expand(b, num_tokens, c)
    index = idx.unsqueeze(-1).expand(-1, -1, c)
    out = base.scatter(1, index, vis)
    return out + pos.to(vis.dtype)


def masked_complement(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Sorted indices of the tokens not in idx[B, K]: [B, N - K]."""
    keep = torch.ones(idx.shape[0], num_tokens, dtype=torch.bool, device=idx.device)
    keep.scatter_(1, idx, False)
    return keep.nonzero()[:, 1].view(idx.shape[0], num_tokens - idx.shape[1])
