"""3D sine-cosine position tables: 1/4 of the channels encode time, 3/4 encode (h, w)."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[P] float positions -> [P, dim] table: sin on the first half, cos on the second."""
    if dim % 2:
        raise ValueError(f"sine-cosine width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim: int, t: int, h: int, w: int, num_cls: int = 0) -> torch.Tensor:
    """[num_cls + t*h*w, dim] float32 table in (t, h, w) token order; CLS rows are zero.

    Channel layout: [temporal (dim/4) | spatial-w (3dim/8) | spatial-h (3dim/8)], the layout of
    the released checkpoints, so their tables and ours agree.
    """
    if dim % 16:
        raise ValueError(f"3D sine-cosine width must be a multiple of 16, got {dim}")
    d_t, d_s = dim // 4, dim // 4 * 3
    tt, hh, ww = torch.meshgrid(
        torch.arange(t, dtype=torch.float64),
        torch.arange(h, dtype=torch.float64),
        torch.arange(w, dtype=torch.float64),
        indexing="ij",
    )
    table = torch.cat(
        [
            sincos_1d(d_t, tt.flatten()),
            sincos_1d(d_s // 2, ww.flatten()),
            sincos_1d(d_s // 2, hh.flatten()),
        ],
        dim=1,
    )
    cls = torch.zeros(num_cls, dim, dtype=torch.float64)
    return torch.cat([cls, table], dim=0).float()


def resize_table(
    table: torch.Tensor, num_cls: int, src: tuple[int, int, int], dst: tuple[int, int, int]
) -> torch.Tensor:
    """Resample a [num_cls + t*h*w, C] table from grid src to grid dst (linear in time, bicubic
    in space), so a model trained at one clip size runs at another."""
    if tuple(src) == tuple(dst):
        return table
    c = table.shape[-1]
    cls, grid = table[:num_cls], table[num_cls:]
    (t0, h0, w0), (t1, h1, w1) = src, dst
    x = grid.reshape(t0, h0 * w0, c).permute(1, 2, 0)  # [h*w, C, t]
    if t0 != t1:
        x = torch.nn.functional.interpolate(x.float(), size=t1, mode="linear", align_corners=False)
    x = x.permute(2, 1, 0).reshape(t1, c, h0, w0)  # [t, C, h, w]
    if (h0, w0) != (h1, w1):
        x = torch.nn.functional.interpolate(x.float(), size=(h1, w1), mode="bicubic", align_corners=False)
    x = x.permute(0, 2, 3, 1).reshape(t1 * h1 * w1, c).to(table.dtype)
    return torch.cat([cls, x], dim=0)
