"""Transformer building blocks shared by the encoder and the ViT predictor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.models.attention import attention


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 whatever the autocast dtype, for bf16 stability."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return y * self.weight.to(x.dtype)


class LayerScale(nn.Module):
    """Per-channel residual scale (init 1e-5), applied in float32 so tiny gains survive bf16."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.gamma.float()).to(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p."""

    def __init__(self, p: float):
        super().__init__()
        # the rate lives in a tensor, so blocks of different rates share one compiled graph
        self.register_buffer("keep", torch.tensor(1.0), persistent=False)
        self.set_rate(p)

    def set_rate(self, p: float) -> None:
        self.active = p > 0.0
        self.keep.fill_(1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.active and self.training):
            return x
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        keep = self.keep.to(x.dtype)
        return x * ((torch.rand(shape, device=x.device) < self.keep).to(x.dtype) / keep)


class Mlp(nn.Module):
    """Linear-GELU-Linear, back to `dim` (a block's MLP) or out to `out` (a projector)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with QK-norm over the full width (the InternVideo recipe)."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = False, qk_norm: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = RMSNorm(dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        shape = (b, s, self.num_heads, c // self.num_heads)
        out = attention(q.reshape(shape), k.reshape(shape), v.reshape(shape))
        return self.proj(out.reshape(b, s, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(LS(Attn(Norm x))), then the same with the MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        layerscale: float | None = 1e-5,
        drop_path: float = 0.0,
        qkv_bias: bool = False,
    ):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.norm2 = RMSNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
