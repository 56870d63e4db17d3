"""Pixel decoders: predictor latents z [M, Z] -> patch pixels [M, C], behind one interface.

`loss(z, target)` is the scalar training loss (mean over rows); `reconstruct(z, ...)` returns a
prediction or sample for pictures and evaluation. The diffusion decoder is the paper's; the
linear and 3-layer MLP heads are its regression ablations (Table 1c).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.models.denoiser import MLPDenoiser
from ivn_fast.models.diffusion import GaussianDiffusion

DECODER_KINDS = ("diffusion", "linear", "mlp")


class DiffusionDecoder(nn.Module):
    """Per-token diffusion head: models p(pixels | z) instead of regressing its mean, so blurry
    averages of plausible patches are not rewarded."""

    deterministic = False  # reconstruct draws samples

    def __init__(self, z_dim: int, target_dim: int, width: int, depth: int, diffusion_batch_mul: int = 1,
                 num_sampling_steps: int = 100, fp32: bool = True, sample_range: tuple[float, float] | None = None):
        super().__init__()
        self.target_dim = target_dim
        self.sample_range = sample_range
        self.diffusion_batch_mul = diffusion_batch_mul
        self.num_sampling_steps = num_sampling_steps
        self.fp32 = fp32
        self.diffusion = GaussianDiffusion.cosine(1000)
        self.net = MLPDenoiser(target_dim, width, z_dim, depth, num_timesteps=self.diffusion.num_timesteps)
        self._samplers: dict[int, GaussianDiffusion] = {}

    def _precision(self, z: torch.Tensor) -> contextlib.AbstractContextManager:
        """fp32 runs the network in float32 under any autocast, as the paper's models were trained;
        the diffusion maths around it is float32 either way."""
        if self.fp32:
            return torch.autocast(device_type=z.device.type, enabled=False)
        return contextlib.nullcontext()

    def loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each row is repeated `diffusion_batch_mul` times to draw that many (t, noise) pairs."""
        if self.diffusion_batch_mul > 1:
            z = z.repeat(self.diffusion_batch_mul, 1)
            target = target.repeat(self.diffusion_batch_mul, 1)
        with self._precision(z):
            if self.fp32:
                z = z.float()
            per_row = self.diffusion.training_losses(lambda x, t: self.net(x, t, z), target.float())
        return per_row.mean()

    def sampler(self, num_steps: int) -> GaussianDiffusion:
        """Respaced processes are cached: building one costs a few ms of Python per call."""
        if num_steps not in self._samplers:
            self._samplers[num_steps] = self.diffusion.respaced(num_steps)
        return self._samplers[num_steps]

    @torch.no_grad()
    def reconstruct(self, z: torch.Tensor, *, num_steps: int | None = None, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """One sample per row; temperature < 1 trades diversity for fidelity."""
        process = self.sampler(self.num_sampling_steps if num_steps is None else num_steps)
        with self._precision(z):
            if self.fp32:
                z = z.float()
            noise = torch.randn((z.shape[0], self.target_dim), generator=generator, device=z.device)
            return process.sample(lambda x, t: self.net(x, t, z), noise, temperature=temperature,
                                  clip=self.sample_range, generator=generator)


class _RegressionDecoder(nn.Module):
    """MSE regression to the pixels: deterministic, so `reconstruct` ignores its sampling options."""

    deterministic = True

    head: nn.Module

    def _init_linears(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    def loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(z).float(), target.float())

    @torch.no_grad()
    def reconstruct(self, z: torch.Tensor, *, num_steps: int | None = None, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        return self(z)


class LinearDecoder(_RegressionDecoder):
    def __init__(self, z_dim: int, target_dim: int):
        super().__init__()
        self.head = nn.Linear(z_dim, target_dim)
        self._init_linears()


class MLPDecoder(_RegressionDecoder):
    def __init__(self, z_dim: int, target_dim: int, hidden: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, target_dim),
        )
        self._init_linears()


def build_decoder(kind: str, z_dim: int, target_dim: int, *, width: int, depth: int, diffusion_batch_mul: int = 1,
                  num_sampling_steps: int = 100, fp32: bool = True,
                  sample_range: tuple[float, float] | None = None) -> nn.Module:
    """`width` is the diffusion MLP's width or the MLP head's hidden size; `depth` only matters
    for the diffusion head, and `sample_range` (the targets' value range) for its sampler."""
    if kind == "diffusion":
        return DiffusionDecoder(z_dim, target_dim, width, depth, diffusion_batch_mul=diffusion_batch_mul,
                                num_sampling_steps=num_sampling_steps, fp32=fp32, sample_range=sample_range)
    if kind == "linear":
        return LinearDecoder(z_dim, target_dim)
    if kind == "mlp":
        return MLPDecoder(z_dim, target_dim, width)
    raise ValueError(f"unknown decoder kind {kind!r}; expected one of {', '.join(DECODER_KINDS)}")
