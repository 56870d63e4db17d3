"""Regenerates the small SigLIP-architecture teacher that ships in `ivn_fast/assets/tiny_siglip`.

    python -m ivn_fast.assets.build_tiny_teacher [--steps 1500] [--out DIR]

A SiglipVisionModel (128 px, patch 16, so its 8x8 grid matches the tiny student's 112 px /
14 grid) is trained from scratch to name the shape in single frames of the synthetic set,
through its attention-pooling head and a linear classifier. Learning shapes is what makes it
a *semantic* teacher: its pooling head attends to the object, which is what semantic masking
keeps visible, and its hidden states separate shapes, which is what alignment distils.
Writes config.json, model.safetensors, preprocessor_config.json, classifier.safetensors and
report.json (held-out accuracy on clips of another seed, steps, time, versions).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm
from transformers import SiglipVisionConfig, SiglipVisionModel

from ivn_fast.data.synthetic import SHAPES, SyntheticVideos
from ivn_fast.data.transforms import denormalize

HERE = Path(__file__).resolve().parent
IMAGE_SIZE = 128
MEAN = STD = (0.5, 0.5, 0.5)


def tiny_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=16, vision_use_head=True,
    )


def render_frames(num_clips: int, frames_per_clip: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames [N, 3, H, W] and shape labels [N] from synthetic clips."""
    ds = SyntheticVideos(num_clips, frames_per_clip, IMAGE_SIZE, seed=seed)
    frames, labels = [], []
    for i in tqdm(range(num_clips), desc=f"render seed {seed}", leave=False):
        item = ds[i]
        pixels = denormalize(item["video"], channel_dim=0).clamp(0, 1)  # [3, T, H, W]
        frames.append((pixels * 255).round().to(torch.uint8).permute(1, 0, 2, 3))
        labels.append(torch.full((frames_per_clip,), item["shape"]))
    return torch.cat(frames), torch.cat(labels)


def to_input(frames: torch.Tensor) -> torch.Tensor:
    return (frames.float() / 255 - MEAN[0]) / STD[0]


class Classifier(nn.Module):
    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.tower = SiglipVisionModel(cfg)
        self.fc = nn.Linear(cfg.hidden_size, len(SHAPES))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc(self.tower(pixel_values=pixels).pooler_output)


@torch.no_grad()
def accuracy(model: Classifier, frames: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(frames), batch):
        correct += (model(to_input(frames[i:i + batch])).argmax(-1) == labels[i:i + batch]).sum().item()
    model.train()
    return correct / len(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "tiny_siglip", help="output directory")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=128, help="frames per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--train-clips", type=int, default=2400, help="synthetic clips rendered for training")
    parser.add_argument("--val-clips", type=int, default=300, help="held-out clips (another seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, data and order")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    start = time.time()
    torch.manual_seed(args.seed)
    train_x, train_y = render_frames(args.train_clips, 8, seed=1000 + args.seed)
    val_x, val_y = render_frames(args.val_clips, 8, seed=2000 + args.seed)
    cfg = tiny_config()
    model = Classifier(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "position" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "position" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 15)
    g = torch.Generator().manual_seed(args.seed)
    bar = tqdm(range(args.steps), desc="train tiny teacher")
    for step in bar:
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(train_x), (args.batch,), generator=g)
        x = to_input(train_x[idx])
        flip = torch.rand(args.batch, generator=g) < 0.5  # shapes are mirror-symmetric classes
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
    val_acc = accuracy(model, val_x, val_y)
    train_acc = accuracy(model, train_x[:2400], train_y[:2400])

    args.out.mkdir(parents=True, exist_ok=True)
    model.tower.save_pretrained(str(args.out), safe_serialization=True)
    save_file({k: v.contiguous() for k, v in model.fc.state_dict().items()}, str(args.out / "classifier.safetensors"))
    (args.out / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(MEAN), "image_std": list(STD), "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}},
        indent=2) + "\n")
    report = {
        "task": "shape of single synthetic frames", "classes": list(SHAPES),
        "val_accuracy": round(val_acc, 4), "train_accuracy": round(train_acc, 4),
        "val_frames": len(val_x), "train_frames": len(train_x), "steps": args.steps, "batch": args.batch,
        "lr": args.lr, "seed": args.seed, "seconds": round(time.time() - start, 1),
        "parameters": sum(p.numel() for p in model.tower.parameters()),
        "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
        "command": "python -m ivn_fast.assets.build_tiny_teacher" + "".join(f" {a}" for a in argv),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"held-out shape accuracy {val_acc:.4f} (train {train_acc:.4f}) in {report['seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
