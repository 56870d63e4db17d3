"""Export a trained encoder for downstream use.

    python -m ivn_fast.export --checkpoint OUTPUT_DIR/checkpoints/step_XXXXXXXX --out DIR

DIR receives `encoder.safetensors` and `encoder.json` (the encoder config and the token grid
its position table was trained at); `ivn_fast.load_encoder(DIR)` rebuilds the encoder for
feature extraction, at any clip size. Works for Stage 1 and Stage 2 checkpoints alike;
`load_encoder` also reads a released InternVideo-Next checkpoint file directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ivn_fast.config import EncoderConfig, from_dict
from ivn_fast.models.convert import convert_released_encoder, read_released, released_encoder_config
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.predictor import Predictor, build_predictor
from ivn_fast.train.checkpoint import load_full, load_meta
from ivn_fast.train.stage1 import token_grid

WEIGHTS, CONFIG = "encoder.safetensors", "encoder.json"


def _checkpoint_encoder(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(encoder weights, metadata) of a training checkpoint of either stage."""
    state = load_meta(checkpoint)
    cfg = from_dict(state["config"])
    weights = {k: v.contiguous() for k, v in load_full(checkpoint, "model", "encoder.").items()}
    if not weights:
        raise ValueError(f"{checkpoint} holds no encoder weights")
    meta = {"encoder": dataclasses.asdict(cfg.model.encoder), "grid": list(token_grid(cfg)),
            "stage": cfg.train.stage, "step": state["step"], "source": str(checkpoint)}
    return weights, meta


def export_encoder(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's encoder to `out`, replacing an earlier export there atomically; a
    directory holding anything else is refused, never deleted."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(p.name not in (WEIGHTS, CONFIG) for p in out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an exported encoder (it would be replaced): "
                         "choose a new or empty directory")
    weights, meta = _checkpoint_encoder(checkpoint)
    tmp = out.with_name(f".tmp_{out.name}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_encoder(path: str | Path, device: str | torch.device = "cpu", *, random_init: bool = False,
                 seed: int = 0) -> VideoEncoder:
    """An encoder in eval mode from an exported directory, a training checkpoint (a
    step_XXXXXXXX directory) or a released InternVideo-Next file (.pth, .pt, .bin or
    .safetensors, through the key converter): `encoder(video).tokens` gives [B, num_cls + N, C]
    features for video [B, 3, T, H, W] (ImageNet-normalised, H and W multiples of the patch size).
    `random_init` keeps the shape and draws the weights from `seed` instead: the baseline every
    probe is read against."""
    path = Path(path)
    if path.is_file():
        weights, _ = convert_released_encoder(read_released(path))
        cfg, grid = released_encoder_config(weights)
    elif (path / CONFIG).is_file():
        if not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} holds {CONFIG} but no {WEIGHTS}")
        meta = json.loads((path / CONFIG).read_text())
        weights = None if random_init else load_file(str(path / WEIGHTS))
        cfg, grid = EncoderConfig(**meta["encoder"]), tuple(meta["grid"])
    elif (path / "state.pt").is_file():
        weights, meta = _checkpoint_encoder(path)
        cfg, grid = EncoderConfig(**meta["encoder"]), tuple(meta["grid"])
    else:
        raise FileNotFoundError(f"{path} is neither a released checkpoint file, an exported encoder ({CONFIG}) "
                                "nor a checkpoint (state.pt)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = VideoEncoder(cfg, grid)
    if not random_init:
        encoder.load_state_dict(weights)
    return encoder.to(device).eval()


def load_predictor(path: str | Path, device: str | torch.device = "cpu", *, random_init: bool = False,
                   seed: int = 0) -> Predictor:
    """The predictor of a training checkpoint of either stage, in eval mode (`random_init`: its shape
    with weights drawn from `seed`). Exported and released encoders hold none: a ValueError says so."""
    path = Path(path)
    if not (path / "state.pt").is_file():
        raise ValueError(f"{path} is not a training checkpoint (step_XXXXXXXX): only those hold the predictor")
    weights = load_full(path, "model", "predictor.")
    if not weights:
        raise ValueError(f"{path} holds no predictor (its run trained no reconstruction)")
    cfg = from_dict(load_meta(path)["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = build_predictor(cfg.model, token_grid(cfg), init=False)
    if not random_init:
        predictor.load_state_dict(weights)
    return predictor.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a step_XXXXXXXX checkpoint directory of either stage")
    parser.add_argument("--out", required=True,
                        help="directory to write (an earlier export there is replaced; any other directory is refused)")
    args = parser.parse_args(argv)
    try:
        out = export_encoder(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"ivn_fast.export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported encoder to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
