"""Probe heads on frozen encoder tokens: V-JEPA's attentive probe and a linear probe."""

from __future__ import annotations

import torch
from torch import nn

from ivn_fast.models.heads import AttentionPool
from ivn_fast.models.layers import Mlp

PROBE_KINDS = ("attentive", "linear")


class AttentiveProbe(nn.Module):
    """One learnable query cross-attends to the tokens (LayerNorm on keys and values), a residual
    on the query, a 4x MLP block, then a linear classifier."""

    def __init__(self, dim: int, num_classes: int, num_heads: int):
        super().__init__()
        self.pool = AttentionPool(dim, num_heads, query="learned")
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.pool.queries[:, 0].to(tokens.dtype) + self.pool(tokens)
        x = x + self.mlp(self.norm(x))
        return self.head(x)


class LinearProbe(nn.Module):
    """A linear classifier on the mean of the tokens (after a parameter-free LayerNorm)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(tokens.mean(1)))


def build_probe(kind: str, dim: int, num_classes: int, num_heads: int) -> nn.Module:
    if kind == "attentive":
        return AttentiveProbe(dim, num_classes, num_heads)
    if kind == "linear":
        return LinearProbe(dim, num_classes)
    raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
