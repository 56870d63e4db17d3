"""Masked-token movement: gather the visible tokens (+ position rows), merge them back among
mask tokens (+ position table).

`gather_tokens` and `merge_tokens` are what the models call; each runs the fused Triton op or
the PyTorch reference as `ivn_kernels.use_triton` says.

Kernels: one program per tile of rows x channels (`_tiling`: 256-channel blocks where one clip's
rows are copied, the whole padded row where a kernel walks the batch), masked vectorised loads,
fp32 arithmetic. Index rows must be
unique within a clip (true of every mask), which lets both backward passes scatter through an
inverse index map with plain stores: no atomics, deterministic. One kernel builds that map (the
merge forward keeps it for its backward). The position-table gradient sums over the batch inside
the program that owns those table rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ivn_kernels import use_triton
from ivn_kernels import _triton
from ivn_kernels._triton import next_power_of_2, num_warps, row_block, tl, triton


# --------------------------------------------------------------------------- references


def gather_tokens_reference(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of x[B, N, C] at idx[B, K], plus pos[N, C] at the same rows."""
    index = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    out = torch.gather(x, 1, index)
    if pos is not None:
        out = out + pos[idx]
    return out


def merge_tokens_reference(
    vis: torch.Tensor, idx: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor, num_tokens: int
) -> torch.Tensor:
    """[B, N, C]: vis[B, K, C] at rows idx, mask_token[C] elsewhere, plus pos[N, C] everywhere."""
    b, _, c = vis.shape
    base = mask_token.to(vis.dtype).expand(b, num_tokens, c)
    index = idx.unsqueeze(-1).expand(-1, -1, c)
    out = base.scatter(1, index, vis)
    return out + pos.to(vis.dtype)


# --------------------------------------------------------------------------- Triton kernels


@triton.jit
def _gather_kernel(x_ptr, idx_ptr, pos_ptr, out_ptr, K, C, sxb, sxn, sib, sik, spn,
                   HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b, k] = x[b, idx[b, k]] (+ pos[idx[b, k]]); grid (row blocks of K, B, column blocks)."""
    b = tl.program_id(1).to(tl.int64)
    k = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = k < K
    mask = row_ok[:, None] & (c < C)[None, :]
    n = tl.load(idx_ptr + b * sib + k * sik, mask=row_ok, other=0).to(tl.int64)
    v = tl.load(x_ptr + b * sxb + n[:, None] * sxn + c[None, :], mask=mask).to(tl.float32)
    if HAS_POS:
        v += tl.load(pos_ptr + n[:, None] * spn + c[None, :], mask=mask).to(tl.float32)
    out = out_ptr + (b * K + k[:, None].to(tl.int64)) * C + c[None, :]
    tl.store(out, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _invert_kernel(idx_ptr, inv_ptr, N, K, sib, sik, BLOCK: tl.constexpr):
    """inv[b, n] = k where idx[b, k] == n, else -1; one program per clip, so a barrier orders the
    fill before the scatter (one launch where fill, arange and scatter_ took three)."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    row = inv_ptr + b * N
    start = 0
    while start < N:  # while, not range(): see _spread_kernel
        tl.store(row + start + offs, tl.full((BLOCK,), -1, tl.int32), mask=start + offs < N)
        start += BLOCK
    tl.debug_barrier()
    start = 0
    while start < K:
        k = start + offs
        n = tl.load(idx_ptr + b * sib + k * sik, mask=k < K, other=0)
        tl.store(row + n, k.to(tl.int32), mask=(k < K) & (n >= 0) & (n < N))  # a bad index writes nothing
        start += BLOCK


@triton.jit
def _spread_rows(src_ptr, inv_ptr, b, n64, c, col_ok, N, ssb, ssk, n_end):
    """(hit [R], src rows [R, BLOCK_C] as stored) of clip b: the source row each token n < n_end
    takes, zeros elsewhere (n_end 0 reads nothing: a scalar bool in the mask would be simpler,
    but Triton's interpreter rejects a scalar-and-block mask)."""
    j = tl.load(inv_ptr + b * N + n64, mask=n64 < n_end, other=-1).to(tl.int64)
    hit = j >= 0
    v = tl.load(src_ptr + b * ssb + j[:, None] * ssk + c[None, :], mask=hit[:, None] & col_ok[None, :], other=0.0)
    return hit, v


@triton.jit
def _spread_kernel(src_ptr, inv_ptr, fill_ptr, pos_ptr, out_ptr, sum_ptr, N, C, batches,
                   ssb, ssk, spn, HAS_FILL: tl.constexpr, HAS_POS: tl.constexpr, SUM: tl.constexpr,
                   PREFETCH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b, n] = (src[b, inv[b, n]] if inv[b, n] >= 0 else fill or 0) (+ pos[n]).

    Grid (row blocks of N, B / batches, column blocks): each program walks `batches` clips from
    program_id(1); with SUM it walks all of them and also writes sum_b out[b, n] to sum[n].
    PREFETCH issues the next clip's loads before this clip's store, two clips in flight.
    """
    n = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = n < N
    col_ok = c < C
    mask = row_ok[:, None] & col_ok[None, :]
    n64 = n.to(tl.int64)
    if HAS_FILL:
        fill = tl.load(fill_ptr + c, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_POS:
        pos = tl.load(pos_ptr + n64[:, None] * spn + c[None, :], mask=mask, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    b = tl.program_id(1).to(tl.int64)
    if PREFETCH:
        hit_next, v_next = _spread_rows(src_ptr, inv_ptr, b, n64, c, col_ok, N, ssb, ssk, N)
    i = 0
    while i < batches:  # not range(): Triton 3.6's interpreter cannot iterate over a run-time bound
        if PREFETCH:
            hit, v = hit_next, v_next
            hit_next, v_next = _spread_rows(src_ptr, inv_ptr, b + 1, n64, c, col_ok, N, ssb, ssk,
                                            tl.where(i + 1 < batches, N, 0))
        else:
            hit, v = _spread_rows(src_ptr, inv_ptr, b, n64, c, col_ok, N, ssb, ssk, N)
        v = v.to(tl.float32)
        if HAS_FILL:
            v = tl.where(hit[:, None], v, fill)
        if HAS_POS:
            v += pos
        tl.store(out_ptr + (b * N + n64[:, None]) * C + c[None, :], v.to(out_ptr.dtype.element_ty), mask=mask)
        if SUM:
            acc += v
        i += 1
        b += 1
    if SUM:
        tl.store(sum_ptr + n64[:, None] * C + c[None, :], acc.to(sum_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merge_backward_kernel(g_ptr, inv_ptr, gvis_ptr, gpos_ptr, gfill_ptr, N, K, C, sgb, sgn, B: tl.constexpr,
                           PREFETCH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """One read of grad[B, N, C] per row block: visible rows go to gvis through the inverse map,
    sum over clips to gpos[n], and this block's sum over mask-token rows to gfill[row block].
    Grid (row blocks of N, column blocks); PREFETCH as in _spread_kernel.
    B is compiled in (one build per batch size): a while loop over a run-time B, the form Triton
    3.6's interpreter would need, took 0.099 ms where this takes 0.064 (H200, bf16, B 16, N 4096,
    C 768)."""
    n = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = n < N
    col_ok = c < C
    mask = row_ok[:, None] & col_ok[None, :]
    n64 = n.to(tl.int64)
    acc_pos = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    acc_fill = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    g_rows = g_ptr + n64[:, None] * sgn + c[None, :]
    inv_rows = inv_ptr + n64
    if PREFETCH:
        g_next = tl.load(g_rows, mask=mask, other=0.0)
        j_next = tl.load(inv_rows, mask=row_ok, other=-1)
    for b in range(B):
        if PREFETCH:
            g, j = g_next, j_next
            next_ok = n < tl.where(b + 1 < B, N, 0)  # see _spread_rows
            g_next = tl.load(g_rows + sgb, mask=next_ok[:, None] & col_ok[None, :], other=0.0)
            j_next = tl.load(inv_rows + N, mask=next_ok, other=-1)
        else:
            g = tl.load(g_rows, mask=mask, other=0.0)
            j = tl.load(inv_rows, mask=row_ok, other=-1)
        g = g.to(tl.float32)
        j = j.to(tl.int64)
        acc_pos += g
        hit = (j >= 0)[:, None]
        tl.store(gvis_ptr + j[:, None] * C + c[None, :], g.to(gvis_ptr.dtype.element_ty), mask=mask & hit)
        acc_fill += tl.where(hit, 0.0, g)
        g_rows += sgb
        inv_rows += N
        gvis_ptr += K * C
    tl.store(gpos_ptr + n64[:, None] * C + c[None, :], acc_pos.to(gpos_ptr.dtype.element_ty), mask=mask)
    tl.store(gfill_ptr + tl.program_id(0) * C + c, tl.sum(acc_fill, axis=0), mask=col_ok)


# --------------------------------------------------------------------------- launchers


def _rows_last_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Kernels take any row strides but need unit channel stride for vector loads."""
    return t if t.stride(-1) == 1 else t.contiguous()


class Tiling(NamedTuple):
    """How the token kernels cut their work: `rows` x `block_c` elements a program, `warps` warps,
    and whether the kernels that walk the batch keep two clips in flight (`prefetch`)."""

    rows: int
    block_c: int
    warps: int
    prefetch: bool = False


def _tiling(c: int, kernel: str) -> Tiling:
    """Per kernel, as swept on an H100 (bench.tune_tokens; bench/results/tune-tokens-h100.json):
    `copy` (one clip's rows moved: both forwards, a gather backward without position rows) takes
    256-column blocks of 4 rows; the batch-walking backwards take whole padded rows of about 4K
    elements, `spread_sum` (the gather backward with the position-table sum) with 8 warps and two
    clips in flight, `merge_backward` with 4 warps."""
    if kernel == "copy":
        block_c = min(256, next_power_of_2(c))
        rows = row_block(block_c, target=1024)
        return Tiling(rows, block_c, num_warps(rows * block_c))
    block_c, rows = next_power_of_2(c), row_block(c)
    if kernel == "spread_sum":
        return Tiling(rows, block_c, num_warps(rows * block_c), prefetch=True)
    if kernel == "merge_backward":
        return Tiling(rows, block_c, 4)
    raise ValueError(f"no tiling for kernel {kernel!r}")


def _inverse_index(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """inv[B, N]: position k of token n in idx[b], or -1 where n is not in idx[b]."""
    b, k = idx.shape
    inv = _triton.empty((b, num_tokens), torch.int32, idx.device)
    _invert_kernel[(b,)](idx, inv, num_tokens, k, idx.stride(0), idx.stride(1), BLOCK=1024, num_warps=4)
    return inv


def _spread(src: torch.Tensor, inv: torch.Tensor, fill: torch.Tensor | None, pos: torch.Tensor | None,
            want_sum: bool) -> tuple[torch.Tensor, torch.Tensor]:
    b, n = inv.shape
    c = src.shape[-1]
    src = _rows_last_contiguous(src)
    out = _triton.empty((b, n, c), src.dtype, src.device)
    total = _triton.empty((n if want_sum else 0, c), src.dtype, src.device)
    t = _tiling(c, "spread_sum" if want_sum else "copy")
    grid = (triton.cdiv(n, t.rows), 1 if want_sum else b, triton.cdiv(c, t.block_c))
    pos_arg = pos if pos is not None else src
    _spread_kernel[grid](
        src, inv, fill if fill is not None else src, pos_arg, out, total, n, c, b if want_sum else 1,
        src.stride(0), src.stride(1), pos_arg.stride(0),
        HAS_FILL=fill is not None, HAS_POS=pos is not None, SUM=want_sum, PREFETCH=t.prefetch and want_sum,
        BLOCK_R=t.rows, BLOCK_C=t.block_c, num_warps=t.warps,
    )
    return out, total


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("ivn::gather_tokens", mutates_args=())
def _gather_op(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    b, k = idx.shape
    c = x.shape[-1]
    x = _rows_last_contiguous(x)
    out = _triton.empty((b, k, c), x.dtype, x.device)
    if pos is not None:
        pos = _rows_last_contiguous(pos)
    pos_arg = pos if pos is not None else x
    t = _tiling(c, "copy")
    _gather_kernel[(triton.cdiv(k, t.rows), b, triton.cdiv(c, t.block_c))](
        x, idx, pos_arg, out, k, c, x.stride(0), x.stride(1), idx.stride(0), idx.stride(1), pos_arg.stride(0),
        HAS_POS=pos is not None, BLOCK_R=t.rows, BLOCK_C=t.block_c, num_warps=t.warps,
    )
    return out


@_gather_op.register_fake
def _(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(idx.shape[0], idx.shape[1], x.shape[-1])


@torch.library.custom_op("ivn::gather_tokens_backward", mutates_args=())
def _gather_backward_op(grad: torch.Tensor, idx: torch.Tensor, num_tokens: int,
                        pos_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x [B, N, C], grad_pos [N, C], or [0, C] when pos_grad is False)."""
    return _spread(grad, _inverse_index(idx, num_tokens), None, None, pos_grad)


@_gather_backward_op.register_fake
def _(grad: torch.Tensor, idx: torch.Tensor, num_tokens: int, pos_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    c = grad.shape[-1]
    return grad.new_empty(idx.shape[0], num_tokens, c), grad.new_empty(num_tokens if pos_grad else 0, c)


def _gather_setup(ctx, inputs, output) -> None:
    x, idx, pos = inputs
    ctx.save_for_backward(idx)
    ctx.num_tokens = x.shape[1]
    ctx.has_pos = pos is not None


def _gather_backward(ctx, grad: torch.Tensor):
    (idx,) = ctx.saved_tensors
    want_pos = ctx.has_pos and ctx.needs_input_grad[2]
    grad_x, grad_pos = torch.ops.ivn.gather_tokens_backward(grad, idx, ctx.num_tokens, want_pos)
    return grad_x if ctx.needs_input_grad[0] else None, None, grad_pos if want_pos else None


_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup)


@torch.library.custom_op("ivn::merge_tokens", mutates_args=())
def _merge_op(vis: torch.Tensor, idx: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor,
              num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(merged [B, N, C], the inverse index [B, N] that the backward reuses)."""
    inv = _inverse_index(idx, num_tokens)
    out, _ = _spread(vis, inv, mask_token, _rows_last_contiguous(pos), False)
    return out, inv


@_merge_op.register_fake
def _(vis: torch.Tensor, idx: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor,
      num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return vis.new_empty(vis.shape[0], num_tokens, vis.shape[-1]), idx.new_empty(idx.shape[0], num_tokens,
                                                                                  dtype=torch.int32)


@torch.library.custom_op("ivn::merge_tokens_backward", mutates_args=())
def _merge_backward_op(grad: torch.Tensor, inv: torch.Tensor,
                       k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_vis [B, K, C], grad_mask_token [C], grad_pos [N, C]) from one pass over grad."""
    b, n, c = grad.shape
    grad = _rows_last_contiguous(grad)
    t = _tiling(c, "merge_backward")
    blocks = triton.cdiv(n, t.rows)
    grad_vis = _triton.empty((b, k, c), grad.dtype, grad.device)
    grad_pos = _triton.empty((n, c), grad.dtype, grad.device)
    fill_parts = _triton.empty((blocks, c), torch.float32, grad.device)
    _merge_backward_kernel[(blocks, triton.cdiv(c, t.block_c))](
        grad, inv, grad_vis, grad_pos, fill_parts, n, k, c, grad.stride(0), grad.stride(1),
        B=b, PREFETCH=t.prefetch, BLOCK_R=t.rows, BLOCK_C=t.block_c, num_warps=t.warps,
    )
    return grad_vis, fill_parts.sum(0).to(grad.dtype), grad_pos


@_merge_backward_op.register_fake
def _(grad: torch.Tensor, inv: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, c = grad.shape
    return grad.new_empty(b, k, c), grad.new_empty(c), grad.new_empty(n, c)


def _merge_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])
    ctx.k = inputs[1].shape[1]
    ctx.set_materialize_grads(False)  # else autograd fills an int [B, N] zero "gradient" for inv


def _merge_backward(ctx, grad: torch.Tensor, _grad_inv: torch.Tensor | None):
    (inv,) = ctx.saved_tensors
    grad_vis, grad_mask, grad_pos = torch.ops.ivn.merge_tokens_backward(grad, inv, ctx.k)
    return grad_vis, None, grad_mask, grad_pos, None


_merge_op.register_autograd(_merge_backward, setup_context=_merge_setup)


# --------------------------------------------------------------------------- what the models call


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of x[B, N, C] at idx[B, K] (unique per clip), plus pos[N, C] at the same rows."""
    if not use_triton(x):
        return gather_tokens_reference(x, idx, pos)
    if pos is not None:
        x, pos = _triton.same_dtype(x, pos)
    return torch.ops.ivn.gather_tokens(x, idx, pos)


def merge_tokens(
    vis: torch.Tensor, idx: torch.Tensor, mask_token: torch.Tensor, pos: torch.Tensor, num_tokens: int
) -> torch.Tensor:
    """[B, N, C]: vis[B, K, C] at rows idx (unique per clip), mask_token[C] elsewhere, plus pos[N, C]
    everywhere, in vis's dtype."""
    if not use_triton(vis):
        return merge_tokens_reference(vis, idx, mask_token, pos, num_tokens)
    return torch.ops.ivn.merge_tokens(vis, idx, mask_token.to(vis.dtype), pos.to(vis.dtype), num_tokens)[0]
