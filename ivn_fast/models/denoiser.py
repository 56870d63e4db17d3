"""Per-token MLP denoiser of the diffusion decoder: adaLN residual MLP blocks conditioned on (t, z).

The elementwise pieces (`timestep_embedding`, `layer_norm_modulate`, `gated_residual`) come from
`ivn_kernels.diffusion`, where each runs a fused Triton kernel or its PyTorch reference as
`train.kernels` selects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ivn_kernels.diffusion import gated_residual, layer_norm_modulate, timestep_embedding

__all__ = ["MLPDenoiser", "timestep_embedding"]


def _mlp(dim_in: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim), nn.SiLU(), nn.Linear(dim, dim))


class AdaLNBlock(nn.Module):
    """`c` is the activated condition SiLU(y), computed once for all blocks: each block used to
    apply the same SiLU itself and keep its own copy of the result for backward."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _mlp(width, width)
        self.ada = nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        # the MLP's input comes out in the dtype the projections run in (bf16 under autocast)
        h = layer_norm_modulate(x, self.norm.weight, self.norm.bias, shift, scale, self.norm.eps, shift.dtype)
        return gated_residual(x, gate, self.mlp(h))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.ada = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.proj(layer_norm_modulate(x, None, None, shift, scale, self.norm.eps, shift.dtype))


class MLPDenoiser(nn.Module):
    """(x_t [N, C], timesteps [N], z [N, Z]) -> [N, 2C]: predicted epsilon, then the variance value.

    All adaLN projections and the output projection start at zero, so the untrained network
    predicts eps = 0 and the midpoint variance, and every block starts as the identity.

    The residual stream between blocks is float32 whatever the autocast: under bf16 autocast
    only the matrix products run in bf16, and the stream that 6 blocks add into keeps its bits.

    Timesteps are integers below `num_timesteps`. A batch with more rows than that embeds every
    timestep once and gathers: the same conditioning as embedding each row (ViT-B Stage 1 has 49152
    rows for 1000 timesteps), without the per-row work or the per-row activations kept for backward.
    """

    def __init__(self, target_dim: int, width: int, z_dim: int, depth: int, freq_dim: int = 256,
                 num_timesteps: int = 1000):
        super().__init__()
        self.freq_dim, self.num_timesteps = freq_dim, num_timesteps
        self.in_proj = nn.Linear(target_dim, width)
        self.t_embed = _mlp(freq_dim, width)
        self.c_proj = nn.Linear(z_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final = FinalLayer(width, 2 * target_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for lin in [b.ada for b in self.blocks] + [self.final.ada, self.final.proj]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def time(self, t: torch.Tensor) -> torch.Tensor:
        """[N] integer timesteps -> [N, width] timestep conditioning."""
        if t.shape[0] <= self.num_timesteps:
            return self.t_embed(timestep_embedding(t, self.freq_dim))
        every = torch.arange(self.num_timesteps, device=t.device)
        return F.embedding(t, self.t_embed(timestep_embedding(every, self.freq_dim)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = F.silu(self.time(t) + self.c_proj(z))
        h = self.in_proj(x).float()
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c)
