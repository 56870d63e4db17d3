"""Heads on top of the encoder: MLP projections to the teacher's spaces and attention pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.models.attention import attention


class ProjectionHead(nn.Module):
    """Linear-GELU-Linear-LayerNorm, optionally L2-normalised (the released alignment heads)."""

    def __init__(self, in_dim: int, out_dim: int, *, l2: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, in_dim)
        self.fc2 = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-5)
        self.l2 = l2
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.fc2(F.gelu(self.fc1(x))))
        return F.normalize(x, dim=-1) if self.l2 else x


class AttentionPool(nn.Module):
    """Cross-attention pooling of a token set into one (or a few) vectors.

    query="mean" uses the tokens' mean as the query (the released final-feature pooling);
    query="learned" uses learnable queries (V-JEPA's probe); query="given" takes them from the
    caller (a tracking probe's encoded boxes). Keys and values each get their own LayerNorm, and so
    does a mean query (learned and given queries are used as they are, as in V-JEPA); the
    projections carry biases, the output is projected to out_dim.
    """

    def __init__(
        self, dim: int, num_heads: int, out_dim: int | None = None, *, query: str = "mean", num_queries: int = 1
    ):
        super().__init__()
        if query not in ("mean", "learned", "given"):
            raise ValueError(f"query must be 'mean', 'learned' or 'given', got {query!r}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if query == "mean" and num_queries != 1:
            raise ValueError("query='mean' gives exactly one query")
        self.num_heads = num_heads
        self.query_kind = query
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim)) if query == "learned" else None
        if self.queries is not None:
            nn.init.trunc_normal_(self.queries, std=0.02)
        self.norm_q = nn.LayerNorm(dim, eps=1e-5) if query == "mean" else nn.Identity()
        self.norm_k = nn.LayerNorm(dim, eps=1e-5)
        self.norm_v = nn.LayerNorm(dim, eps=1e-5)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, out_dim or dim)

    def forward(self, x: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """x[B, N, dim] -> [B, out_dim] for one query, [B, Q, out_dim] for several; `queries`
        [B, Q, dim] only with query="given"."""
        b, n, c = x.shape
        h = self.num_heads
        if (queries is not None) != (self.query_kind == "given"):
            raise ValueError(f"queries are passed exactly when query='given' (this pool's is {self.query_kind!r})")
        if self.query_kind == "given":
            q_in = queries.to(x.dtype)
        elif self.queries is None:
            q_in = x.mean(1, keepdim=True)
        else:
            q_in = self.queries.expand(b, -1, -1).to(x.dtype)
        q = self.q(self.norm_q(q_in)).view(b, q_in.shape[1], h, c // h)
        k = self.k(self.norm_k(x)).view(b, n, h, c // h)
        v = self.v(self.norm_v(x)).view(b, n, h, c // h)
        out = self.proj(attention(q, k, v).reshape(b, q_in.shape[1], c))
        return out.squeeze(1) if out.shape[1] == 1 and self.query_kind != "given" else out
