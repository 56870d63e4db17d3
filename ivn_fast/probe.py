"""Probe a frozen encoder on a labelled task: the number pretraining is judged by.

    python -m ivn_fast.probe --checkpoint runs/tiny/checkpoints/step_00000300 \\
        --train-list synthetic:shape --val-list synthetic:shape [--head attentive|linear] [--json OUT]

The encoder (a training checkpoint of either stage, or a directory written by
`python -m ivn_fast.export`) stays frozen: its tokens are computed once per clip and cached,
then a probe head is trained on them with AdamW and a cosine schedule. `--random-init` probes an
encoder of the same shape with random weights, the baseline every result is read against.
Tasks on the built-in synthetic set: `synthetic:shape` (appearance), `synthetic:direction`
(dynamics) and `synthetic:speed`, optionally with a clip count (`synthetic:direction:1440`);
train and validation clips come from different seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ivn_fast.data.synthetic import LABELS, SyntheticVideos
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.probe import PROBE_KINDS, build_probe

SEEDS = {"train": 1_000, "val": 2_000}
DEFAULT_CLIPS = {"train": 720, "val": 288}


def parse_task(spec: str, split: str) -> tuple[str, int]:
    """'synthetic:LABEL[:N]' -> (label, clips)."""
    parts = spec.split(":")
    if parts[0] != "synthetic" or len(parts) not in (2, 3) or parts[1] not in LABELS:
        raise ValueError(f"--{split}-list {spec!r}: expected synthetic:LABEL[:CLIPS] with LABEL one of "
                         f"{', '.join(LABELS)}")
    clips = int(parts[2]) if len(parts) == 3 else DEFAULT_CLIPS[split]
    if clips < 1:
        raise ValueError(f"--{split}-list {spec!r}: the clip count must be positive")
    return parts[1], clips


@torch.no_grad()
def encode(encoder: VideoEncoder, data: SyntheticVideos, label: str, batch: int,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen tokens [N, S, C] (CPU, float32) and labels [N] for every clip of `data`."""
    tokens, labels = [], []
    for start in range(0, len(data), batch):
        items = [data[i] for i in range(start, min(start + batch, len(data)))]
        video = torch.stack([it["video"] for it in items]).to(device)
        tokens.append(encoder(video).tokens.float().cpu())
        labels.append(torch.tensor([it[label] for it in items]))
    return torch.cat(tokens), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()


def train_probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], *,
                head: str, num_classes: int, num_heads: int, epochs: int, batch: int, lr: float,
                weight_decay: float, seed: int, device: torch.device) -> dict:
    """Train a probe on cached tokens; the per-epoch validation top-1 is the probe curve."""
    torch.manual_seed(seed)
    x_train, y_train = train
    probe = build_probe(head, x_train.shape[-1], num_classes, num_heads).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x_train) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    curve, scores = [], {}
    for _ in range(epochs):
        probe.train()
        for idx in torch.randperm(len(x_train), generator=g).split(batch):
            loss = F.cross_entropy(probe(x_train[idx].to(device)), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        scores = evaluate(probe, val, batch, device)
        curve.append(scores["top1"])
    return {"curve": curve, **scores, "train_top1": evaluate(probe, train, batch, device)["top1"]}


@torch.no_grad()
def evaluate(probe: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch: int,
             device: torch.device) -> dict[str, float]:
    probe.eval()
    x, y = data
    logits = torch.cat([probe(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
    return {"top1": topk_accuracy(logits, y, 1), "top5": topk_accuracy(logits, y, 5)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (step_XXXXXXXX) or exported encoder")
    parser.add_argument("--train-list", required=True, help="training task, e.g. synthetic:shape")
    parser.add_argument("--val-list", required=True, help="validation task with the same label, e.g. synthetic:shape")
    parser.add_argument("--head", default="attentive", choices=PROBE_KINDS,
                        help="attentive (V-JEPA's) or linear on mean-pooled tokens")
    parser.add_argument("--random-init", action="store_true", help="probe a random encoder of the same shape")
    parser.add_argument("--epochs", type=int, default=20, help="probe training epochs")
    parser.add_argument("--batch", type=int, default=32, help="clips per probe step (and per encoding batch)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate of the probe")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay of the probe")
    parser.add_argument("--heads", type=int, default=0, help="attention heads of the attentive probe "
                                                             "(0: the encoder's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's initialisation and data order")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    parser.add_argument("--json", type=Path, help="write the result, with the settings it ran, here")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ivn_fast.export import load_encoder

    args = build_parser().parse_args(argv)
    try:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        label, n_train = parse_task(args.train_list, "train")
        val_label, n_val = parse_task(args.val_list, "val")
        if val_label != label:
            raise ValueError(f"--train-list labels {label!r} but --val-list labels {val_label!r}")
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        encoder = load_encoder(args.checkpoint, device, random_init=args.random_init)
    except (ValueError, FileNotFoundError) as e:
        print(f"ivn_fast.probe: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    t, h, w = encoder.grid
    size = h * encoder.cfg.patch_size
    data = {split: SyntheticVideos(n, t, size, seed=SEEDS[split]) for split, n in (("train", n_train), ("val", n_val))}
    cached = {split: encode(encoder, ds, label, args.batch, device) for split, ds in data.items()}
    result = train_probe(cached["train"], cached["val"], head=args.head, num_classes=len(LABELS[label]),
                         num_heads=args.heads or encoder.cfg.num_heads, epochs=args.epochs, batch=args.batch,
                         lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=device)
    record = {"task": label, **result, "seconds": round(time.perf_counter() - start, 1),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "clips": {"train": n_train, "val": n_val}, "frames": t, "size": size}
    print(f"{label} probe ({args.head}{', random encoder' if args.random_init else ''}): top-1 {record['top1']:.3f}, "
          f"top-5 {record['top5']:.3f} (train top-1 {record['train_top1']:.3f}) in {record['seconds']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
