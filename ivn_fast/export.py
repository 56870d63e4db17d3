"""Export a trained encoder for downstream use.

    python -m ivn_fast.export --checkpoint OUTPUT_DIR/checkpoints/step_XXXXXXXX --out DIR

DIR receives `encoder.safetensors` and `encoder.json` (the encoder config and the token grid
its position table was trained at); `ivn_fast.load_encoder(DIR)` rebuilds the encoder for
feature extraction, at any clip size. Works for Stage 1 and Stage 2 checkpoints alike.
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
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.train.checkpoint import load_checkpoint
from ivn_fast.train.stage1 import token_grid

WEIGHTS, CONFIG = "encoder.safetensors", "encoder.json"


def export_encoder(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the checkpoint's encoder to `out` (replaced atomically if it exists)."""
    state = load_checkpoint(checkpoint)
    cfg = from_dict(state["config"])
    weights = {k[len("encoder."):]: v.contiguous() for k, v in state["model"].items() if k.startswith("encoder.")}
    if not weights:
        raise ValueError(f"{checkpoint} holds no encoder weights")
    out = Path(out)
    tmp = out.with_name(f".tmp_{out.name}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / WEIGHTS))
    meta = {"encoder": dataclasses.asdict(cfg.model.encoder), "grid": list(token_grid(cfg)),
            "stage": cfg.train.stage, "step": state["step"], "source": str(checkpoint)}
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> VideoEncoder:
    """An exported encoder in eval mode: `encoder(video).tokens` gives [B, num_cls + N, C] features
    for video [B, 3, T, H, W] (ImageNet-normalised, H and W multiples of the patch size)."""
    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} holds no {name}: export one with python -m ivn_fast.export")
    meta = json.loads((path / CONFIG).read_text())
    encoder = VideoEncoder(EncoderConfig(**meta["encoder"]), tuple(meta["grid"]))
    encoder.load_state_dict(load_file(str(path / WEIGHTS)))
    return encoder.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a step_XXXXXXXX checkpoint directory of either stage")
    parser.add_argument("--out", required=True, help="directory to write (replaced if it exists)")
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
