"""The diffusion decoder's elementwise hot path, over all masked tokens x batch_mul rows at once.

Four fusions around the denoiser's cuBLAS matmuls, each one pass over its rows:
- `q_sample_at`: x_t = sqrt_ab[t] * x_0 + sqrt_1mab[t] * eps with the schedule lookup inside;
- `timestep_embedding`: sinusoidal features (cos half, then sin half), exact for |t * freq| < 25000;
- `layer_norm_modulate`: LayerNorm (eps 1e-6, affine or not) then adaLN x * (1 + scale) + shift,
  the forward keeping mean / rstd so the backward reads x once;
- `gated_residual`: x + gate * h.
adaLN shift / scale / gate arrive as column slices of one [M, k * W] projection; the kernels
read them through their row stride instead of copying. Arithmetic is fp32 for any input dtypes,
and inputs may differ in dtype: the bf16 decoder keeps its residual stream in float32 while its
projections run in bf16, so `layer_norm_modulate` reads float32 x and writes the bf16 input of
the next matmul, and `gated_residual` adds bf16 gate * h into float32 x.

Each public function runs the Triton op or the PyTorch reference as `ivn_kernels.use_triton`
says; `modulate` and `q_sample` are the plain formulas the references share.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ivn_kernels import use_triton
from ivn_kernels import _triton
from ivn_kernels._triton import next_power_of_2, num_warps, row_block, tl, triton

# --------------------------------------------------------------------------- references


def q_sample(x_start: torch.Tensor, noise: torch.Tensor, signal_scale: torch.Tensor,
             noise_scale: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar) * x_0 + sqrt(1 - alpha_bar) * eps, with per-row scales [N, 1]."""
    return signal_scale * x_start + noise_scale * noise


def q_sample_at_reference(x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                          signal_table: torch.Tensor, noise_table: torch.Tensor) -> torch.Tensor:
    return q_sample(x_start, noise, signal_table[t].unsqueeze(-1), noise_table[t].unsqueeze(-1))


def _frequencies(dim: int, max_period: float, device: torch.device) -> torch.Tensor:
    """Shared by the reference and the kernel, so both multiply t by bit-identical frequencies."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)


def timestep_embedding_reference(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    args = t.float().unsqueeze(-1) * _frequencies(dim, max_period, t.device)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, so a zero-initialised modulation starts as the identity.

    Computed in the promoted dtype of the three without upcast copies of the narrower ones (which
    autograd would keep for backward)."""
    return torch.addcmul(x + shift, x, scale)


def layer_norm_modulate_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                  shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
                                  out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """fp32 maths rounded once to `out_dtype` (x's by default): what the kernel computes, and what
    autocast does before the next matmul."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    out = modulate(F.layer_norm(x.float(), x.shape[-1:], w, b, eps), shift, scale)
    return out.to(x.dtype if out_dtype is None else out_dtype)


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """fp32 maths, result in x's dtype (the residual stream's)."""
    return torch.addcmul(x.float(), gate, h).to(x.dtype)


# --------------------------------------------------------------------------- Triton kernels


@triton.jit
def _q_sample_kernel(x_ptr, eps_ptr, t_ptr, sig_ptr, nse_ptr, out_ptr, M, C, sx, se,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols < C)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    step = tl.load(t_ptr + rows, mask=row_ok, other=0)
    a = tl.load(sig_ptr + step, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    b = tl.load(nse_ptr + step, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=mask).to(tl.float32)
    e = tl.load(eps_ptr + r64 * se + cols[None, :], mask=mask).to(tl.float32)
    tl.store(out_ptr + r64 * C + cols[None, :], (a * x + b * e).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _timestep_kernel(t_ptr, freq_ptr, out_ptr, M, HALF, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_H)
    row_ok = rows < M
    col_ok = cols < HALF
    mask = row_ok[:, None] & col_ok[None, :]
    t = tl.load(t_ptr + rows, mask=row_ok, other=0).to(tl.float32)
    freq = tl.load(freq_ptr + cols, mask=col_ok, other=0.0)
    args = t[:, None] * freq[None, :]
    # Arguments reach ~1000 radians: reduce them exactly by 2*pi (split into three parts whose
    # products with k < 4096 are exact in fp32) so fast cos / sin see only [-pi, pi].
    k = tl.floor(args * 0.15915494309189535 + 0.5)
    r = ((args - k * 6.28125) - k * 0.0019350051879882812) - k * 3.019916050561733e-07
    out = out_ptr + rows.to(tl.int64)[:, None] * (2 * HALF) + cols[None, :]
    tl.store(out, tl.cos(r), mask=mask)
    tl.store(out + HALF, tl.sin(r), mask=mask)


@triton.jit
def _ln_modulate_fwd_kernel(x_ptr, w_ptr, b_ptr, shift_ptr, scale_ptr, out_ptr, mean_ptr, rstd_ptr,
                            M, W, sx, ssh, ssc, eps, AFFINE: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_W)
    row_ok = rows < M
    col_ok = cols < W
    mask = row_ok[:, None] & col_ok[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / W
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / W + eps)
    y = xc * rstd[:, None]
    if AFFINE:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = y * w[None, :] + b[None, :]
    shift = tl.load(shift_ptr + r64 * ssh + cols[None, :], mask=mask).to(tl.float32)
    scale = tl.load(scale_ptr + r64 * ssc + cols[None, :], mask=mask).to(tl.float32)
    y = y * (1.0 + scale) + shift
    tl.store(out_ptr + r64 * W + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _ln_modulate_bwd_kernel(g_ptr, x_ptr, w_ptr, b_ptr, scale_ptr, mean_ptr, rstd_ptr, gx_ptr, gscale_ptr,
                            gw_ptr, gb_ptr, M, W, sg, sx, ssc, blocks_per_program, AFFINE: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """grad_x and grad_scale per row; with AFFINE this program's partial sums of grad_weight and
    grad_bias over its `blocks_per_program` row blocks go to row program_id of gw / gb."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_W)
    col_ok = cols < W
    if AFFINE:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc_w = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.float32)
    i = 0
    while i < blocks_per_program:  # not range(): Triton 3.6's interpreter cannot iterate over a run-time bound
        rows = (pid * blocks_per_program + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        r64 = rows.to(tl.int64)[:, None]
        g = tl.load(g_ptr + r64 * sg + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + r64 * ssc + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)[:, None]
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)[:, None]
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        g_norm = g * (1.0 + scale)
        if AFFINE:
            tl.store(gscale_ptr + r64 * W + cols[None, :], (g * (xhat * w + b)).to(gscale_ptr.dtype.element_ty),
                     mask=mask)
            acc_w += g_norm * xhat
            acc_b += g_norm
            g_hat = g_norm * w
        else:
            tl.store(gscale_ptr + r64 * W + cols[None, :], (g * xhat).to(gscale_ptr.dtype.element_ty), mask=mask)
            g_hat = g_norm
        c1 = tl.sum(g_hat * xhat, axis=1)[:, None] / W
        c2 = tl.sum(g_hat, axis=1)[:, None] / W
        gx = (g_hat - xhat * c1 - c2) * rstd
        tl.store(gx_ptr + r64 * W + cols[None, :], gx.to(gx_ptr.dtype.element_ty), mask=mask)
        i += 1
    if AFFINE:
        tl.store(gw_ptr + pid * W + cols, tl.sum(acc_w, axis=0), mask=col_ok)
        tl.store(gb_ptr + pid * W + cols, tl.sum(acc_b, axis=0), mask=col_ok)


@triton.jit
def _gated_residual_kernel(x_ptr, gate_ptr, h_ptr, out_ptr, M, W, sx, sgt, sh,
                           BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_W)
    mask = (rows < M)[:, None] & (cols < W)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(x_ptr + r64 * sx + cols[None, :], mask=mask).to(tl.float32)
    gate = tl.load(gate_ptr + r64 * sgt + cols[None, :], mask=mask).to(tl.float32)
    h = tl.load(h_ptr + r64 * sh + cols[None, :], mask=mask).to(tl.float32)
    tl.store(out_ptr + r64 * W + cols[None, :], (x + gate * h).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_bwd_kernel(g_ptr, gate_ptr, h_ptr, ggate_ptr, gh_ptr, M, W, sg, sgt, sh,
                               BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_W)
    mask = (rows < M)[:, None] & (cols < W)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    g = tl.load(g_ptr + r64 * sg + cols[None, :], mask=mask).to(tl.float32)
    gate = tl.load(gate_ptr + r64 * sgt + cols[None, :], mask=mask).to(tl.float32)
    h = tl.load(h_ptr + r64 * sh + cols[None, :], mask=mask).to(tl.float32)
    tl.store(ggate_ptr + r64 * W + cols[None, :], (g * h).to(ggate_ptr.dtype.element_ty), mask=mask)
    tl.store(gh_ptr + r64 * W + cols[None, :], (g * gate).to(gh_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., W] -> [M, W] with unit column stride; slices of a wider row keep their row stride."""
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t.reshape(-1, t.shape[-1])


def _tiling(m: int, width: int) -> tuple[tuple[int], int, int, int]:
    block_w = next_power_of_2(width)
    block_m = row_block(width)
    return (triton.cdiv(m, block_m),), block_m, block_w, num_warps(block_m * block_w)


def _affine_args(weight: torch.Tensor | None, bias: torch.Tensor | None, like: torch.Tensor):
    """A LayerNorm without affine passes placeholders; weight and bias come as a pair."""
    if (weight is None) != (bias is None):
        raise ValueError("layer_norm_modulate takes both weight and bias or neither")
    return (weight, bias) if weight is not None else (like, like)


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("ivn::q_sample", mutates_args=())
def _q_sample_op(x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, signal_table: torch.Tensor,
                 noise_table: torch.Tensor) -> torch.Tensor:
    x, e = _rows(x_start), _rows(noise)
    m, c = x.shape
    out = _triton.empty(x_start.shape, _q_sample_dtype(x_start, noise, signal_table), x.device)
    grid, block_m, block_c, warps = _tiling(m, c)
    _q_sample_kernel[grid](x, e, t.contiguous(), signal_table.contiguous(), noise_table.contiguous(), out, m, c,
                           x.stride(0), e.stride(0), BLOCK_M=block_m, BLOCK_C=block_c, num_warps=warps)
    return out


def _q_sample_dtype(x_start: torch.Tensor, noise: torch.Tensor, table: torch.Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(x_start.dtype, noise.dtype), table.dtype)


@_q_sample_op.register_fake
def _(x_start, noise, t, signal_table, noise_table):
    return x_start.new_empty(x_start.shape, dtype=_q_sample_dtype(x_start, noise, signal_table))


def _q_sample_setup(ctx, inputs, output) -> None:
    x_start, noise, t, signal_table, noise_table = inputs
    ctx.save_for_backward(t, signal_table, noise_table)
    ctx.dtypes = (x_start.dtype, noise.dtype)


def _q_sample_backward(ctx, grad: torch.Tensor):
    # Training feeds constants (targets, fresh noise); this path serves callers that differentiate.
    t, signal_table, noise_table = ctx.saved_tensors
    grad_x = (signal_table[t].unsqueeze(-1) * grad).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
    grad_e = (noise_table[t].unsqueeze(-1) * grad).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
    return grad_x, grad_e, None, None, None


_q_sample_op.register_autograd(_q_sample_backward, setup_context=_q_sample_setup)


@torch.library.custom_op("ivn::timestep_embedding", mutates_args=())
def _timestep_op(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    m, half = t.numel(), freqs.numel()
    out = _triton.empty((m, 2 * half), torch.float32, t.device)
    grid, block_m, block_h, warps = _tiling(m, half)
    _timestep_kernel[grid](t.contiguous(), freqs, out, m, half, BLOCK_M=block_m, BLOCK_H=block_h, num_warps=warps)
    return out


@_timestep_op.register_fake
def _(t, freqs):
    return t.new_empty(t.numel(), 2 * freqs.numel(), dtype=torch.float32)


@torch.library.custom_op("ivn::layer_norm_modulate", mutates_args=())
def _ln_modulate_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, shift: torch.Tensor,
                    scale: torch.Tensor, eps: float,
                    out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out [x's shape, out_dtype], mean [M] fp32, rstd [M] fp32)."""
    x2, sh, sc = _rows(x), _rows(shift), _rows(scale)
    m, w = x2.shape
    out = _triton.empty(x.shape, out_dtype, x.device)
    mean = _triton.empty((m,), torch.float32, x.device)
    rstd = _triton.empty((m,), torch.float32, x.device)
    grid, block_m, block_w, warps = _tiling(m, w)
    _ln_modulate_fwd_kernel[grid](x2, *_affine_args(weight, bias, x2), sh, sc, out, mean, rstd, m, w,
                                  x2.stride(0), sh.stride(0), sc.stride(0), eps, AFFINE=weight is not None,
                                  BLOCK_M=block_m, BLOCK_W=block_w, num_warps=warps)
    return out, mean, rstd


@_ln_modulate_op.register_fake
def _(x, weight, bias, shift, scale, eps, out_dtype):
    m = x.numel() // x.shape[-1]
    return (torch.empty_like(x, dtype=out_dtype), x.new_empty(m, dtype=torch.float32),
            x.new_empty(m, dtype=torch.float32))


@torch.library.custom_op("ivn::layer_norm_modulate_backward", mutates_args=())
def _ln_modulate_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                             bias: torch.Tensor | None, scale: torch.Tensor, mean: torch.Tensor,
                             rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_scale, grad_weight, grad_bias); the last two are [0] without affine."""
    g2, x2, sc = _rows(grad), _rows(x), _rows(scale)
    m, w = x2.shape
    affine = weight is not None
    grad_x = _triton.empty(x.shape, x.dtype, x.device)
    grad_scale = _triton.empty(scale.shape, scale.dtype, x.device)
    (blocks,), block_m, block_w, warps = _tiling(m, w)
    # Enough programs to fill any GPU, few enough that the weight-grad partials stay small.
    programs = min(blocks, 1024)
    per_program = triton.cdiv(blocks, programs)
    programs = triton.cdiv(blocks, per_program)
    parts = _triton.empty((2, programs if affine else 0, w), torch.float32, x.device)
    _ln_modulate_bwd_kernel[(programs,)](g2, x2, *_affine_args(weight, bias, x2), sc, mean, rstd, grad_x,
                                         grad_scale, parts[0], parts[1], m, w, g2.stride(0), x2.stride(0),
                                         sc.stride(0), per_program, AFFINE=affine, BLOCK_M=block_m,
                                         BLOCK_W=block_w, num_warps=warps)
    if not affine:
        return grad_x, grad_scale, x.new_empty(0), x.new_empty(0)
    return grad_x, grad_scale, parts[0].sum(0).to(weight.dtype), parts[1].sum(0).to(bias.dtype)


@_ln_modulate_backward_op.register_fake
def _(grad, x, weight, bias, scale, mean, rstd):
    w = x.shape[-1] if weight is not None else 0
    dtype = weight.dtype if weight is not None else x.dtype
    return torch.empty_like(x), torch.empty_like(scale), x.new_empty(w, dtype=dtype), x.new_empty(w, dtype=dtype)


def _ln_modulate_setup(ctx, inputs, output) -> None:
    x, weight, bias, shift, scale, _, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)
    ctx.shift_dtype = shift.dtype


def _ln_modulate_backward(ctx, grad: torch.Tensor, _grad_mean: torch.Tensor, _grad_rstd: torch.Tensor):
    x, weight, bias, scale, mean, rstd = ctx.saved_tensors
    grad_x, grad_scale, grad_w, grad_b = torch.ops.ivn.layer_norm_modulate_backward(
        grad, x, weight, bias, scale, mean, rstd)
    affine = weight is not None
    return (grad_x, grad_w if affine else None, grad_b if affine else None, grad.to(ctx.shift_dtype), grad_scale,
            None, None)


_ln_modulate_op.register_autograd(_ln_modulate_backward, setup_context=_ln_modulate_setup)


@torch.library.custom_op("ivn::gated_residual", mutates_args=())
def _gated_residual_op(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    x2, g2, h2 = _rows(x), _rows(gate), _rows(h)
    m, w = x2.shape
    out = _triton.empty(x.shape, x.dtype, x.device)
    grid, block_m, block_w, warps = _tiling(m, w)
    _gated_residual_kernel[grid](x2, g2, h2, out, m, w, x2.stride(0), g2.stride(0), h2.stride(0),
                                 BLOCK_M=block_m, BLOCK_W=block_w, num_warps=warps)
    return out


@_gated_residual_op.register_fake
def _(x, gate, h):
    return torch.empty_like(x)


@torch.library.custom_op("ivn::gated_residual_backward", mutates_args=())
def _gated_residual_backward_op(grad: torch.Tensor, gate: torch.Tensor,
                                h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_gate, grad_h); grad_x is grad itself."""
    g2, gt2, h2 = _rows(grad), _rows(gate), _rows(h)
    m, w = g2.shape
    grad_gate = _triton.empty(gate.shape, gate.dtype, gate.device)
    grad_h = _triton.empty(h.shape, h.dtype, h.device)
    grid, block_m, block_w, warps = _tiling(m, w)
    _gated_residual_bwd_kernel[grid](g2, gt2, h2, grad_gate, grad_h, m, w, g2.stride(0), gt2.stride(0), h2.stride(0),
                                     BLOCK_M=block_m, BLOCK_W=block_w, num_warps=warps)
    return grad_gate, grad_h


@_gated_residual_backward_op.register_fake
def _(grad, gate, h):
    return torch.empty_like(gate), torch.empty_like(h)


def _gated_residual_setup(ctx, inputs, output) -> None:
    _, gate, h = inputs
    ctx.save_for_backward(gate, h)


def _gated_residual_backward(ctx, grad: torch.Tensor):
    gate, h = ctx.saved_tensors
    grad_gate, grad_h = torch.ops.ivn.gated_residual_backward(grad, gate, h)
    return grad, grad_gate, grad_h


_gated_residual_op.register_autograd(_gated_residual_backward, setup_context=_gated_residual_setup)


# --------------------------------------------------------------------------- what the models call


def q_sample_at(x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, signal_table: torch.Tensor,
                noise_table: torch.Tensor) -> torch.Tensor:
    """q_sample with the per-row scales looked up from 1-D schedule tables at step indices t [N]."""
    if not use_triton(x_start):
        return q_sample_at_reference(x_start, noise, t, signal_table, noise_table)
    return torch.ops.ivn.q_sample(x_start, noise, t, signal_table, noise_table)


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [N, dim] (cos half, then sin half) of timesteps t [N]; dim must be even."""
    if not use_triton(t):
        return timestep_embedding_reference(t, dim, max_period)
    return torch.ops.ivn.timestep_embedding(t, _frequencies(dim, max_period, t.device))


def layer_norm_modulate(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
                        out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """modulate(LayerNorm(x), shift, scale) in `out_dtype` (x's by default); weight / bias None
    for a LayerNorm without affine."""
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if not use_triton(x):
        return layer_norm_modulate_reference(x, weight, bias, shift, scale, eps, out_dtype)
    return torch.ops.ivn.layer_norm_modulate(x, weight, bias, shift, scale, eps, out_dtype)[0]


def gated_residual(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x + gate * h in x's dtype; a zero gate makes a fresh block an exact identity."""
    if not use_triton(x):
        return gated_residual_reference(x, gate, h)
    return torch.ops.ivn.gated_residual(x, gate, h)
