"""Stage 1 masks as sorted indices of the visible tokens, vis_idx[B, K].

Every kind keeps exactly K = T * visible_per_frame(L, ratio) tokens, so the encoder's sequence
length is fixed for a config and ablations over the mask kind compare equal compute. Token
index = frame * L + position in frame, as in the encoder's flattening.
"""

from __future__ import annotations

import torch

MASK_KINDS = ("semantic", "topk", "random", "tube")


def visible_per_frame(tokens_per_frame: int, ratio: float) -> int:
    """Visible tokens in each frame; the released rule L - int(L * ratio)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return tokens_per_frame - int(tokens_per_frame * ratio)


def _flatten(local: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    b, t, k = local.shape
    offsets = torch.arange(t, device=local.device).view(1, t, 1) * tokens_per_frame
    return (local.sort(-1).values + offsets).reshape(b, t * k)


def _clean_weights(attn: torch.Tensor) -> torch.Tensor:
    """Non-negative finite weights with no all-zero row, so sampling never fails: NaN/inf and
    negative entries count as zero, and a tiny floor turns a dead row into a uniform one."""
    w = torch.nan_to_num(attn.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    return w + 1e-9


def semantic_mask(attn: torch.Tensor, ratio: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per frame, draw the visible tokens by weighted sampling without replacement with the
    teacher attention attn[B, T, L] as weights (the paper's semantic-guided masking)."""
    b, t, length = attn.shape
    k = visible_per_frame(length, ratio)
    w = _clean_weights(attn).view(b * t, length)
    local = torch.multinomial(w, k, replacement=False, generator=generator).view(b, t, k)
    return _flatten(local, length)


def topk_mask(attn: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per frame, the k tokens with the highest teacher attention stay visible (no randomness)."""
    b, t, length = attn.shape
    k = visible_per_frame(length, ratio)
    local = _clean_weights(attn).topk(k, dim=-1, sorted=False).indices
    return _flatten(local, length)


def _uniform_choice(rows: int, length: int, k: int, device: torch.device, generator: torch.Generator | None):
    scores = torch.rand(rows, length, device=device, generator=generator)
    return scores.topk(k, dim=-1, sorted=False).indices


def random_mask(
    batch: int, frames: int, tokens_per_frame: int, ratio: float, *,
    device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniformly random visible tokens over the whole clip (VideoMAE's random masking)."""
    n = frames * tokens_per_frame
    k = frames * visible_per_frame(tokens_per_frame, ratio)
    return _uniform_choice(batch, n, k, torch.device(device), generator).sort(-1).values


def tube_mask(
    batch: int, frames: int, tokens_per_frame: int, ratio: float, *,
    device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The same random spatial positions visible in every frame (VideoMAE's tube masking)."""
    k = visible_per_frame(tokens_per_frame, ratio)
    local = _uniform_choice(batch, tokens_per_frame, k, torch.device(device), generator)
    return _flatten(local.unsqueeze(1).expand(batch, frames, k), tokens_per_frame)


def make_stage1_mask(
    kind: str,
    *,
    attn: torch.Tensor | None,
    batch: int,
    frames: int,
    tokens_per_frame: int,
    ratio: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """vis_idx[B, K] for the configured kind; semantic and topk need the teacher attention."""
    if kind in ("semantic", "topk"):
        if attn is None:
            raise ValueError(f"mask kind {kind!r} needs the teacher attention")
        expected = (batch, frames, tokens_per_frame)
        if tuple(attn.shape) != expected:
            raise ValueError(f"teacher attention has shape {tuple(attn.shape)}, expected {expected}")
        return semantic_mask(attn, ratio, generator=generator) if kind == "semantic" else topk_mask(attn, ratio)
    if kind == "random":
        return random_mask(batch, frames, tokens_per_frame, ratio, device=device, generator=generator)
    if kind == "tube":
        return tube_mask(batch, frames, tokens_per_frame, ratio, device=device, generator=generator)
    raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(MASK_KINDS)}")


def mask_bool(vis_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[B, N] bool, True where the token is masked (hidden from the encoder)."""
    masked = torch.ones(vis_idx.shape[0], num_tokens, dtype=torch.bool, device=vis_idx.device)
    return masked.scatter_(1, vis_idx, False)
