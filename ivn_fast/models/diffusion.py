"""Gaussian diffusion for the per-token pixel decoder (improved-DDPM formulation).

Cosine noise schedule, epsilon prediction, learned-range variance, and the improved-DDPM hybrid
loss: MSE on epsilon plus the variational-bound term that trains the variance only. Sampling
runs ancestral steps on a respaced subset of the training timesteps.

Schedule tables are computed once in float64 and looked up as float32; everything applied to
tensors runs in float32 regardless of autocast.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ivn_kernels.diffusion import q_sample as q_sample  # re-exported: the formula the fused op is checked against
from ivn_kernels.diffusion import q_sample_at

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t [N, C], model timesteps [N]) -> raw output [N, 2C]: epsilon, then the variance value v."""

_LOG2 = math.log(2.0)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Betas that discretise alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2).

    The last betas would approach 1 (alpha_bar -> 0), so they are clipped at `max_beta`.
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return np.asarray(betas, dtype=np.float64)


def respaced_timesteps(num_timesteps: int, count: int) -> list[int]:
    """`count` timesteps spread evenly over [0, num_timesteps - 1], both ends included.

    Positions are accumulated stride by stride and rounded half to even. The accumulated float
    error decides some rounding ties, so i * stride would pick a different set for some counts;
    accumulation is the improved-DDPM respacing rule.
    """
    if not 2 <= count <= num_timesteps:
        raise ValueError(f"cannot respace {num_timesteps} diffusion steps into {count}")
    stride = (num_timesteps - 1) / (count - 1)
    return [round(pos) for pos in itertools.accumulate([stride] * (count - 1), initial=0.0)]


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
              logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, var1) || N(mean2, var2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise -log P(x) in nats for a Gaussian binned into 8-bit steps on [-1, 1].

    This is the t == 0 decoder term of the improved-DDPM bound. Values beyond +-0.999 take the
    whole tail mass, as for pixels at the ends of the [-1, 1] range.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus,
                            torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
    return -log_probs


_TABLES = (
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "log_betas",
)


class GaussianDiffusion:
    """Schedule tables plus the loss and sampler of one (possibly respaced) diffusion process.

    `timesteps[i]` is the training-schedule timestep the denoiser sees at step i, so a respaced
    process drives a network trained on the full schedule without any rescaling.
    """

    def __init__(self, betas: Sequence[float] | np.ndarray, timesteps: Sequence[int] | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array of at least 2 values in (0, 1]")
        self.num_timesteps = len(betas)
        self.timesteps = np.arange(self.num_timesteps) if timesteps is None else np.asarray(timesteps)
        if self.timesteps.shape != betas.shape:
            raise ValueError("need one model timestep per beta")

        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # Variance of q(x_{t-1} | x_t, x_0); it is 0 at t = 0, so its log borrows the t = 1 value.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)

        self._stacked = np.stack([getattr(self, name) for name in _TABLES])
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def cosine(cls, num_timesteps: int = 1000) -> GaussianDiffusion:
        """The training process: cosine betas spend fewer steps near pure noise than linear ones."""
        return cls(cosine_betas(num_timesteps))

    def respaced(self, count: int) -> GaussianDiffusion:
        """The process restricted to `count` evenly spaced steps, betas recomputed to keep alpha_bar."""
        kept = respaced_timesteps(self.num_timesteps, count)
        alphas_cumprod = self.alphas_cumprod[kept]
        betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
        return GaussianDiffusion(betas, self.timesteps[kept])

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (
                torch.tensor(self._stacked, dtype=torch.float32, device=device),
                torch.tensor(self.timesteps, dtype=torch.long, device=device),
            )
        return self._on_device[device]

    def _extract(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Per-row float32 coefficients [N, 1] for timestep indices t [N]."""
        return self._tables(t.device)[0][_TABLES.index(name), t].unsqueeze(-1)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Step indices -> the training-schedule timesteps the denoiser is conditioned on."""
        return self._tables(t.device)[1][t]

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t at step indices t [N]; the schedule lookup is fused into the (Triton) op."""
        tables = self._tables(t.device)[0]
        return q_sample_at(x_start, noise, t, tables[_TABLES.index("sqrt_alphas_cumprod")],
                           tables[_TABLES.index("sqrt_one_minus_alphas_cumprod")])

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (self._extract("posterior_mean_coef1", t) * x_start
                + self._extract("posterior_mean_coef2", t) * x_t)
        return mean, self._extract("posterior_variance", t), self._extract("posterior_log_variance_clipped", t)

    def p_mean_variance(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t) from the raw [eps, v] output.

        v in [-1, 1] interpolates the log-variance between the posterior variance (v = -1) and
        beta_t (v = 1), which keeps the learned variance in its sensible range. `clip` clamps
        the implied x_0 to the data's range (improved DDPM's clip_denoised).
        """
        eps, v = model_out.float().chunk(2, dim=-1)
        frac = (v + 1.0) / 2.0
        log_var = (frac * self._extract("log_betas", t)
                   + (1.0 - frac) * self._extract("posterior_log_variance_clipped", t))
        pred_x_start = (self._extract("sqrt_recip_alphas_cumprod", t) * x_t
                        - self._extract("sqrt_recipm1_alphas_cumprod", t) * eps)
        if clip is not None:
            pred_x_start = pred_x_start.clamp(*clip)
        mean, _, _ = self.q_posterior(pred_x_start, x_t, t)
        return mean, log_var

    def training_losses(self, model: ModelFn, x_start: torch.Tensor, t: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row improved-DDPM hybrid loss [N]: MSE(eps) + variational-bound term in bits/dim.

        The bound sees a detached epsilon, so it trains only the variance and leaves the mean
        to the MSE term.
        """
        x_start = x_start.float()
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x_start.shape[0],), device=x_start.device)
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        out = model(x_t, self.model_timesteps(t)).float()
        eps, v = out.chunk(2, dim=-1)
        mse = (noise - eps).pow(2).mean(dim=-1)

        mean, log_var = self.p_mean_variance(torch.cat([eps.detach(), v], dim=-1), x_t, t)
        true_mean, _, true_log_var = self.q_posterior(x_start, x_t, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=-1) / _LOG2
        nll = discretized_gaussian_nll(x_start, mean, 0.5 * log_var).mean(dim=-1) / _LOG2
        vb = torch.where(t == 0, nll, kl)
        return mse + vb

    @torch.no_grad()
    def sample(self, model: ModelFn, noise: torch.Tensor, *, temperature: float = 1.0,
               clip: tuple[float, float] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling from x_T = `noise`; `temperature` scales each step's added noise.

        The first step leaves the last training timestep, whose alpha_bar is ~2e-9 under the
        clipped cosine schedule: it multiplies errors in the predicted noise by about
        sqrt(alpha_bar_prev / alpha_bar) (~316 with 100 steps, ~32 with 1000), so without `clip`
        an undertrained denoiser gives divergent samples however good it is elsewhere.
        """
        x = noise.float()
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            mean, log_var = self.p_mean_variance(model(x, self.model_timesteps(t)), x, t, clip)
            if i == 0:
                x = mean
            else:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = mean + torch.exp(0.5 * log_var) * z * temperature
        return x
