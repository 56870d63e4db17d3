"""Load the released InternVideo-Next checkpoints into our encoder.

The released encoder stores the patch projection as a Conv3d over (c, t, h, w) and the tables
with a leading batch dimension; everything else already has our names. A released file is an
encoder-only state dict (the inference model: encoder plus its `clip_projector` pooling head) or
a whole Stage 1 / Stage 2 training model, either bare or wrapped by DeepSpeed (`{"module": ...}`);
the non-encoder parts (pooling and alignment heads, the ModernBERT predictor, the diffusion
decoder, the extra position tables) are reported, not loaded.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from ivn_fast.config import EncoderConfig

_PREFIXES = ("module.", "model.", "vision_encoder.", "encoder.")
_WRAPPERS = ("module", "model", "state_dict")
# The released models put head dim 64 everywhere but in the 1B (1408 wide, 16 heads); the
# head count leaves no trace in the weights (QK-norm runs over the full width).
_HEADS = {768: 12, 1024: 16, 1408: 16}
# The released training scripts build every model's tables for 16 frames at 224 px.
RELEASED_FRAMES = 16


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def read_released(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a released file (.safetensors, or a torch file read without unpickling
    code), unwrapped from DeepSpeed's or a trainer's outer dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: holds objects other than tensors and plain containers ({e}); if you trust "
                         "the file, load it with torch.load(weights_only=False) and save its state dict") from None
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{path}: no state dict found (top-level keys: {', '.join(map(str, state))})")
        state = inner
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def convert_released_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our encoder state dict, released keys left unused: pooling heads, decoders, predictor)."""
    out: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in state.items():
        k = _strip(key)
        if k == "patch_embed.proj.weight":
            dim, c, t, ph, pw = value.shape
            if t != 1:
                raise ValueError(f"{key}: tubelet size {t} is not supported (ours is 1)")
            out[k] = value[:, :, 0].permute(0, 2, 3, 1).reshape(dim, ph * pw * c)
        elif k == "patch_embed.norm_before.weight":
            out["patch_embed.norm_in.weight"] = value
        elif k == "patch_embed.norm.weight":
            out["patch_embed.norm_out.weight"] = value
        elif k == "pos_embed":
            out[k] = value.reshape(-1, value.shape[-1])
        elif k == "cls_token" or k == "patch_embed.proj.bias" or k.startswith("blocks."):
            out[k] = value
        elif k in ("pos_embed_spatial", "pos_embed_temporal", "pos_embed_cls"):
            raise ValueError(f"{key}: separable position tables (sep_pos_embed) are not supported; "
                             "the released models use one joint table")
        else:
            unused.append(key)
    return out, unused


def released_encoder_config(ours: dict[str, torch.Tensor], *, frames: int = RELEASED_FRAMES,
                            num_heads: int = 0) -> tuple[EncoderConfig, tuple[int, int, int]]:
    """(encoder config, token grid of the position table) read off converted weights. The
    table's frame count is not in its shape: the released one is for 16 frames. `num_heads`
    0 takes the released value for the width (head dim 64 for widths it does not know)."""
    dim = ours["cls_token"].shape[-1]
    num_cls = ours["cls_token"].shape[1]
    depth = len({k.split(".")[1] for k in ours if k.startswith("blocks.")})
    tokens = ours["pos_embed"].shape[0] - num_cls
    side = math.isqrt(tokens // frames) if tokens % frames == 0 else 0
    if side == 0 or frames * side * side != tokens:
        raise ValueError(f"a position table of {tokens} tokens is not {frames} frames of a square grid")
    hidden = ours["blocks.0.mlp.fc1.weight"].shape[0]
    cfg = EncoderConfig(
        embed_dim=dim, depth=depth, num_heads=num_heads or _HEADS.get(dim, max(1, dim // 64)), mlp_ratio=hidden / dim,
        patch_size=math.isqrt(ours["patch_embed.proj.weight"].shape[1] // 3), num_cls=num_cls,
        qk_norm="blocks.0.attn.q_norm.weight" in ours,
        layerscale=1e-5 if "blocks.0.ls1.gamma" in ours else 0.0, drop_path=0.0)
    return cfg, (frames, side, side)
