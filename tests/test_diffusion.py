import math

import numpy as np
import pytest
import torch

from ivn_fast.models.decoders import DiffusionDecoder, LinearDecoder, MLPDecoder, build_decoder
from ivn_fast.models.denoiser import MLPDenoiser, timestep_embedding
from ivn_fast.models.diffusion import (
    GaussianDiffusion,
    discretized_gaussian_nll,
    normal_kl,
    q_sample,
    respaced_timesteps,
)

T = 1000


@pytest.fixture(scope="module")
def base() -> GaussianDiffusion:
    return GaussianDiffusion.cosine(T)


def denoiser_params(z: int, c: int, w: int, depth: int, freq: int = 256) -> int:
    """Closed-form parameter count of the adaLN MLP denoiser."""
    inputs = (c * w + w) + (freq * w + w) + (w * w + w) + (z * w + w)  # x proj, t MLP, z proj
    block = 2 * w + 2 * (w * w + w) + (w * 3 * w + 3 * w)  # LayerNorm, MLP, adaLN
    final = (w * 2 * w + 2 * w) + (w * 2 * c + 2 * c)  # adaLN, output projection
    return inputs + depth * block + final


def test_paper_decoder_parameter_count():
    with torch.device("meta"):
        dec = DiffusionDecoder(1024, 588, 1536, 6)
    n = sum(p.numel() for p in dec.parameters())
    assert n == denoiser_params(1024, 588, 1536, 6) == 82_607_256


def test_cosine_schedule_matches_closed_form(base):
    s = 0.008

    def f(u):
        return np.cos((u + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2

    # alphas_cumprod[i] is alpha_bar after i + 1 steps, i.e. at u = (i + 1) / T; only the last
    # beta (where alpha_bar reaches 0) is clipped, so the closed form holds everywhere before it.
    i = np.arange(T - 1)
    np.testing.assert_allclose(base.alphas_cumprod[:-1], f((i + 1) / T), rtol=1e-10)
    assert base.betas.max() == base.betas[-1] == 0.999
    assert (base.betas[:-1] < 0.999).all() and (base.betas > 0).all()
    assert base.alphas_cumprod[-1] == pytest.approx(base.alphas_cumprod[-2] * 0.001, rel=1e-12)


def test_q_sample_statistics(base):
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.5, 0.0])
    n = 200_000
    for step in (0, 300, 700, 999):
        t = torch.full((n,), step)
        xt = base.q_sample(x0.expand(n, 3), t, torch.randn(n, 3, generator=g))
        ab = base.alphas_cumprod[step]
        torch.testing.assert_close(xt.mean(0), math.sqrt(ab) * x0, atol=0.01, rtol=0)
        torch.testing.assert_close(xt.var(0), torch.full((3,), 1 - ab), atol=0.01, rtol=0.01)
    noise = torch.randn(4, 3, generator=g)
    a, b = torch.rand(4, 1, generator=g), torch.rand(4, 1, generator=g)
    torch.testing.assert_close(q_sample(x0.expand(4, 3), noise, a, b), a * x0 + b * noise)


def test_posterior_is_the_bayes_posterior(base):
    # q(x_{t-1} | x_0) = N(sqrt(ab_{t-1}) x_0, 1 - ab_{t-1}) times the likelihood
    # q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t), normalised: a Gaussian in x_{t-1}.
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    for step in (1, 10, 500, 998, 999):
        t = torch.full((4,), step)
        mean, var, log_var = base.q_posterior(x0.float(), xt.float(), t)
        ab_prev, beta = base.alphas_cumprod[step - 1], base.betas[step]
        precision = 1 / (1 - ab_prev) + (1 - beta) / beta
        want_var = 1 / precision
        want_mean = want_var * (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(1 - beta) * xt / beta)
        torch.testing.assert_close(mean.double(), want_mean, rtol=1e-5, atol=1e-5)
        assert var[0, 0].item() == pytest.approx(want_var, rel=1e-5)
        assert log_var[0, 0].item() == pytest.approx(math.log(want_var), rel=1e-5, abs=1e-5)
    # At t = 0 the posterior variance is 0; its log borrows the t = 1 value.
    _, var0, log_var0 = base.q_posterior(x0.float(), xt.float(), torch.zeros(4, dtype=torch.long))
    assert var0[0, 0].item() == 0.0
    assert log_var0[0, 0].item() == pytest.approx(math.log(base.posterior_variance[1]), rel=1e-6)


def test_learned_range_interpolates_log_variance(base):
    t = torch.tensor([1, 250, 999])
    x = torch.randn(3, 4)
    eps = torch.randn(3, 4)
    lo = torch.tensor(base.posterior_log_variance_clipped[t.numpy()], dtype=torch.float32).unsqueeze(-1)
    hi = torch.tensor(np.log(base.betas[t.numpy()]), dtype=torch.float32).unsqueeze(-1)
    for v, want in ((-1.0, lo), (1.0, hi), (0.0, (lo + hi) / 2)):
        _, log_var = base.p_mean_variance(torch.cat([eps, torch.full_like(x, v)], -1), x, t)
        torch.testing.assert_close(log_var, want.expand(3, 4))
    # With the true noise the mean is the true posterior mean.
    x0 = torch.randn(3, 4)
    xt = base.q_sample(x0, t, eps)
    mean, _ = base.p_mean_variance(torch.cat([eps, torch.zeros_like(x)], -1), xt, t)
    torch.testing.assert_close(mean, base.q_posterior(x0, xt, t)[0], rtol=1e-4, atol=1e-4)


def test_loss_terms_against_independent_formulas(base):
    g = torch.Generator().manual_seed(0)
    n, c = 6, 5
    x0 = torch.randn(n, c, generator=g).clamp(-0.99, 0.99)
    noise = torch.randn(n, c, generator=g)
    out = 0.5 * torch.randn(n, 2 * c, generator=g)
    out[:, c:] = out[:, c:].tanh()
    t = torch.tensor([0, 0, 1, 100, 600, 999])
    loss = base.training_losses(lambda x, tt: out, x0, t, noise)

    eps, v = out.chunk(2, -1)
    xt = base.q_sample(x0, t, noise)
    mean, log_var = base.p_mean_variance(out, xt, t)
    true_mean, _, true_log_var = base.q_posterior(x0, xt, t)
    p = torch.distributions.Normal(mean.double(), (0.5 * log_var.double()).exp())
    q = torch.distributions.Normal(true_mean.double(), (0.5 * true_log_var.double()).exp())
    kl_bits = torch.distributions.kl_divergence(q, p).mean(-1) / math.log(2)
    # t = 0: Gaussian mass of the 8-bit bin around x0, with the exact normal CDF.
    nll_bits = -(p.cdf(x0.double() + 1 / 255) - p.cdf(x0.double() - 1 / 255)).log().mean(-1) / math.log(2)
    mse = (noise - eps).pow(2).mean(-1).double()
    want = mse + torch.where(t == 0, nll_bits, kl_bits)
    torch.testing.assert_close(loss.double(), want, rtol=2e-3, atol=2e-3)

    kl = normal_kl(true_mean, true_log_var, mean, log_var)
    torch.testing.assert_close(kl.mean(-1).double() / math.log(2), kl_bits, rtol=1e-4, atol=1e-5)
    # Values past +-0.999 take the whole tail mass.
    edge = discretized_gaussian_nll(torch.tensor([1.0, -1.0]), torch.zeros(2), torch.zeros(2))
    tail = torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(-1 + 1 / 255))
    torch.testing.assert_close(edge, -tail.log().expand(2), rtol=1e-3, atol=1e-3)


def test_variational_term_trains_only_the_variance(base):
    torch.manual_seed(0)
    out = torch.randn(8, 6, requires_grad=True)
    base.training_losses(lambda x, t: out, torch.randn(8, 3), torch.arange(8) * 100, torch.zeros(8, 3)).sum().backward()
    # Zero noise: the MSE gradient on eps is 2 * eps / C exactly, nothing from the bound.
    torch.testing.assert_close(out.grad[:, :3], 2 * out.detach()[:, :3] / 3)
    assert out.grad[:, 3:].abs().min() > 0


def test_initial_denoiser_and_timestep_embedding():
    net = MLPDenoiser(target_dim=6, width=32, z_dim=4, depth=2)
    out = net(torch.randn(5, 6), torch.randint(0, T, (5,)), torch.randn(5, 4))
    assert out.shape == (5, 12) and not out.any()
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), dim=8)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_timestep_table_gives_the_per_row_conditioning_and_gradients():
    """More rows than timesteps: one embedding per timestep, gathered; same values and gradients."""
    torch.manual_seed(0)
    net = MLPDenoiser(target_dim=6, width=32, z_dim=4, depth=2, num_timesteps=10)
    t = torch.randint(0, 10, (40,))
    by_table = net.time(t)
    net.num_timesteps = 1000  # now 40 rows are fewer: embedded row by row
    by_row = net.time(t)
    torch.testing.assert_close(by_table, by_row)
    weight = torch.randn(40, 32)
    grads = [torch.autograd.grad((out * weight).sum(), list(net.t_embed.parameters())) for out in (by_table, by_row)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter_after_two_steps():
    torch.manual_seed(0)
    dec = DiffusionDecoder(z_dim=8, target_dim=12, width=32, depth=2)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    z, x = torch.randn(64, 8), torch.randn(64, 12)
    params = dict(dec.named_parameters())
    nonzero = []
    for _ in range(3):
        opt.zero_grad()
        loss = dec.loss(z, x)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        nonzero.append({k for k, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0})
        opt.step()
    # Zero-initialised output and adaLN layers: only the output projection learns on step one,
    # then the residual path and adaLN projections, then everything behind the gates and y.
    assert nonzero[0] == {"net.final.proj.weight", "net.final.proj.bias"}
    assert nonzero[2] == set(params)


def test_respaced_process_keeps_alphas_cumprod(base):
    for count in (2, 50, 100, 1000):
        spaced = base.respaced(count)
        kept = spaced.timesteps
        assert len(kept) == count and kept[0] == 0 and kept[-1] == T - 1 and (np.diff(kept) > 0).all()
        # 1 - beta is tiny for a step into t = 999, so its relative precision is ~1e-16 / 2e-9.
        np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-7)
        torch.testing.assert_close(spaced.model_timesteps(torch.arange(count)), torch.as_tensor(kept))
    np.testing.assert_allclose(base.respaced(T).betas, base.betas, rtol=1e-9)
    assert respaced_timesteps(1000, 3) == [0, 500, 999]  # 499.5 rounds half to even
    for bad in (1, 1001):
        with pytest.raises(ValueError):
            respaced_timesteps(1000, bad)


MEANS = torch.tensor([[2.0, -2.0], [-2.0, 2.0]])  # conditional mean of the 2-D target for z = 0, 1
STD = 0.5


def optimal_output(x: torch.Tensor, t: torch.Tensor, z: torch.Tensor, base: GaussianDiffusion) -> torch.Tensor:
    """Exact E[eps | x_t, z] for x_0 ~ N(MEANS[z], STD^2), with the midpoint variance value."""
    ab = torch.tensor(base.alphas_cumprod, dtype=torch.float32)[t].unsqueeze(-1)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    mu = z @ MEANS
    x0 = mu + a * STD**2 / (a * a * STD**2 + b * b) * (x - a * mu)
    return torch.cat([(x - a * x0) / b, torch.zeros_like(x)], -1)


def per_class_stats(samples: torch.Tensor, per: int) -> tuple[torch.Tensor, torch.Tensor]:
    return samples.view(2, per, 2).mean(1), samples.view(2, per, 2).std(1)


def recovers_target(samples: torch.Tensor, per: int, mean_tol: float, std_rel: float) -> bool:
    mean, std = per_class_stats(samples, per)
    return bool((mean - MEANS).abs().max() < mean_tol and ((std / STD) - 1).abs().max() < std_rel)


def test_sampler_with_the_optimal_denoiser_recovers_the_distribution(base):
    per = 2000
    z = torch.eye(2).repeat_interleave(per, 0)
    process = base.respaced(50)
    stds = {}
    for temperature in (1.0, 0.5):
        g = torch.Generator().manual_seed(1)
        s = process.sample(lambda x, t: optimal_output(x, t, z, base), torch.randn(2 * per, 2, generator=g),
                           temperature=temperature, generator=g)
        stds[temperature] = per_class_stats(s, per)[1].mean()
        if temperature == 1.0:
            assert recovers_target(s, per, mean_tol=0.05, std_rel=0.1)
    assert stds[0.5] < 0.8 * stds[1.0]


def test_short_fit_recovers_a_conditional_gaussian():
    torch.manual_seed(0)
    dec = DiffusionDecoder(z_dim=2, target_dim=2, width=128, depth=2, num_sampling_steps=50)
    per = 2000
    z_eval = torch.eye(2).repeat_interleave(per, 0)

    def sample() -> torch.Tensor:
        # Step t = 999 has alpha_bar ~ 2e-9 (the clipped last beta), so it multiplies any error
        # in the predicted noise by ~600: a fit of seconds cannot get that one step right, a
        # long training run does. The exact denoiser takes that single step; the fitted network
        # takes the other 49.
        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if t[0] == T - 1:
                return optimal_output(x, t, z_eval, dec.diffusion)
            return dec.net(x, t, z_eval)

        g = torch.Generator().manual_seed(1)
        return dec.sampler(50).sample(model, torch.randn(2 * per, 2, generator=g), generator=g)

    assert not recovers_target(sample(), per, mean_tol=0.3, std_rel=0.35)

    steps = 300
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for _ in range(steps):
        k = torch.randint(0, 2, (256,))
        loss = dec.loss(torch.eye(2)[k], MEANS[k] + STD * torch.randn(256, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert recovers_target(sample(), per, mean_tol=0.15, std_rel=0.2)


def test_reconstruct_is_seeded_and_respects_num_steps():
    torch.manual_seed(0)
    dec = DiffusionDecoder(z_dim=4, target_dim=6, width=16, depth=1, num_sampling_steps=10)
    z = torch.randn(3, 4)
    a = dec.reconstruct(z, generator=torch.Generator().manual_seed(5))
    b = dec.reconstruct(z, generator=torch.Generator().manual_seed(5))
    c = dec.reconstruct(z, num_steps=20, generator=torch.Generator().manual_seed(5))
    assert a.shape == (3, 6) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert set(dec._samplers) == {10, 20}


def test_fp32_head_ignores_autocast_and_batch_mul_repeats_rows():
    dec = DiffusionDecoder(z_dim=4, target_dim=6, width=16, depth=1, diffusion_batch_mul=3)
    z, x = torch.randn(5, 4), torch.randn(5, 6)
    torch.manual_seed(0)
    plain = dec.loss(z, x)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = dec.loss(z.bfloat16(), x)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=1e-2, atol=1e-2)

    seen = []
    real = dec.diffusion.training_losses
    dec.diffusion.training_losses = lambda model, x_start: seen.append(x_start) or real(model, x_start)
    dec.loss(z, x)
    torch.testing.assert_close(seen[0], x.repeat(3, 1))


def _bf16_twin(dec: DiffusionDecoder) -> DiffusionDecoder:
    twin = DiffusionDecoder(z_dim=dec.net.c_proj.in_features, target_dim=dec.target_dim,
                            width=dec.net.in_proj.out_features, depth=len(dec.net.blocks), fp32=False)
    twin.load_state_dict(dec.state_dict())
    return twin


def test_bf16_head_keeps_a_float32_residual_stream():
    """Under bf16 autocast the bf16 head runs its products in bf16, hands float32 between blocks,
    and gives the float32 head's loss and gradients to bf16 accuracy."""
    torch.manual_seed(0)
    dec = DiffusionDecoder(z_dim=16, target_dim=24, width=64, depth=3)
    with torch.no_grad():  # off the zero init, so every block and product matters
        for p in dec.parameters():
            p.add_(0.05 * torch.randn_like(p))
    twin = _bf16_twin(dec)
    z, x = torch.randn(256, 16), torch.randn(256, 24)
    dtypes = []
    for block in twin.net.blocks:
        block.register_forward_hook(lambda m, args, out: dtypes.append((out.dtype, m.mlp[2].weight.dtype)))
        block.mlp.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))

    def loss_and_grads(d: DiffusionDecoder) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = d.loss(z, x)
        return loss, torch.autograd.grad(loss, list(d.parameters()))

    ref, ref_grads = loss_and_grads(dec)
    got, got_grads = loss_and_grads(twin)
    assert dtypes == [torch.bfloat16, (torch.float32, torch.float32)] * 3
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 1e-2 * ref.item()
    for a, b in zip(got_grads, ref_grads):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_bf16_head_trains_like_the_float32_head():
    """The same 200-step fit in float32 and under bf16 autocast: equal loss curves (windowed
    means within 1%), the evidence a bf16 decoder has to give."""
    torch.manual_seed(0)
    codes, proj = torch.randn(64, 16), torch.randn(16, 48) / 4
    curves = []
    for fp32 in (True, False):
        torch.manual_seed(1)
        dec = DiffusionDecoder(z_dim=16, target_dim=48, width=128, depth=3, fp32=fp32)
        opt = torch.optim.AdamW(dec.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(2)
        losses = []
        for _ in range(200):
            k = torch.randint(0, 64, (256,), generator=g)
            target = torch.tanh(codes[k] @ proj) + 0.1 * torch.randn(256, 48, generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = dec.loss(codes[k], target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(torch.tensor(losses).reshape(10, 20).mean(dim=1))
    ref, got = curves
    assert ref[-1] < 0.7 * ref[0]  # the fit learns something
    assert ((got - ref).abs() / ref).max() < 0.01


@pytest.mark.parametrize("make", [lambda: LinearDecoder(8, 12), lambda: MLPDecoder(8, 12, hidden=32)])
def test_regression_heads_fit_a_fixed_batch(make):
    torch.manual_seed(0)
    dec = make()
    z, x = torch.randn(32, 8), torch.randn(32, 12)
    assert dec.reconstruct(z, num_steps=5, temperature=0.5).shape == (32, 12)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = dec.loss(z, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_build_decoder_kinds():
    kw = dict(width=16, depth=1)
    assert isinstance(build_decoder("diffusion", 8, 12, **kw), DiffusionDecoder)
    assert isinstance(build_decoder("linear", 8, 12, **kw), LinearDecoder)
    mlp = build_decoder("mlp", 8, 12, **kw)
    assert isinstance(mlp, MLPDecoder) and mlp.head[0].out_features == 16
    with pytest.raises(ValueError, match="diffusion, linear, mlp"):
        build_decoder("vae", 8, 12, **kw)


def test_sample_range_keeps_an_untrained_decoder_bounded():
    torch.manual_seed(0)
    free = DiffusionDecoder(z_dim=4, target_dim=6, width=32, depth=2, num_sampling_steps=20)
    clipped = DiffusionDecoder(z_dim=4, target_dim=6, width=32, depth=2, num_sampling_steps=20,
                               sample_range=(-2.0, 2.5))
    clipped.load_state_dict(free.state_dict())
    for dec in (free, clipped):  # a random final layer, as an untrained network would have
        torch.nn.init.normal_(dec.net.final.proj.weight, std=0.5)
    z = torch.randn(256, 4)
    wild = free.reconstruct(z, generator=torch.Generator().manual_seed(0))
    tame = clipped.reconstruct(z, generator=torch.Generator().manual_seed(0))
    assert wild.abs().max() > 100  # the ~2e-9 alpha_bar of the first step amplifies eps errors
    assert tame.abs().max() < 10 and torch.isfinite(tame).all()
