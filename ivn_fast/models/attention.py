"""The one attention entry point used by the encoder, predictor, teacher and probes.

Tensors are [B, S, H, D] (the layout a fused QKV projection produces).
Backends: ``flash_attn`` (FlashAttention kernels, CUDA and half precision only) and ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``: flash / cuDNN / efficient kernels on
GPU, math on CPU). ``auto`` takes flash_attn where it can run and SDPA everywhere else.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flash_attn", "sdpa")
_selected = "auto"
_flash = None  # flash_attn_func when the selected backend may use it; resolved once, outside any graph


@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def set_backend(name: str) -> None:
    """Choose the backend for every later call (``auto``, ``flash_attn`` or ``sdpa``)."""
    global _selected
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    if name == "flash_attn" and _flash_attn_func() is None:
        raise ValueError("attention backend 'flash_attn' requested but flash_attn is not installed")
    global _flash
    _selected = name
    _flash = None if name == "sdpa" else _flash_attn_func()


def get_backend() -> str:
    return _selected


def _flash_ok(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256


def _window_mask(s_q: int, s_k: int, window: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(s_q, device=device)[:, None]
    j = torch.arange(s_k, device=device)[None, :]
    return (i - j).abs() <= window


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention over [B, S, H, D] inputs; ``window`` limits each query to keys within
    that many positions on either side (ModernBERT's local layers)."""
    if _flash is not None and _flash_ok(q):
        w = (-1, -1) if window is None else (window, window)
        return _flash(q, k, v, dropout_p=dropout_p, window_size=w)
    mask = None if window is None else _window_mask(q.shape[1], k.shape[1], window, q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p
    )
    return out.transpose(1, 2)


set_backend(_selected)
