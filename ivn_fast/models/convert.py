"""Load the released InternVideo-Next checkpoints into our encoder.

The released encoder stores the patch projection as a Conv3d over (c, t, h, w) and the tables
with a leading batch dimension; everything else already has our names.
"""

from __future__ import annotations

import torch

_PREFIXES = ("module.", "model.", "vision_encoder.", "encoder.")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


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
        elif k in ("pos_embed", "cls_token"):
            out[k] = value.reshape(-1, value.shape[-1]) if k == "pos_embed" else value
        elif k == "patch_embed.proj.bias" or k.startswith("blocks."):
            out[k] = value
        else:
            unused.append(key)
    return out, unused
