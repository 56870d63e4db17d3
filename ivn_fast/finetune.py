"""Fine-tune a pretrained encoder end to end for classification: the paper's action-recognition
recipe (appendix B.2).

    python -m ivn_fast.finetune --checkpoint ENCODER --train-list k400_train.txt --val-list k400_val.txt \\
        --root /data/k400 --recipe kinetics --output-dir runs/ft-k400
    torchrun --nproc-per-node 8 -m ivn_fast.finetune ... --batch 1024 --resume

The encoder (a training checkpoint of either stage, an exported encoder or a released checkpoint)
gets a classification head (`--head linear`: LayerNorm of the mean token and a linear layer, or
the attentive probe's block) and trains whole, with the recipe of `--recipe`:

| recipe   | lr (per 1024 clips) | epochs | flip | test views |
|----------|---------------------|--------|------|------------|
| kinetics | 3e-4                | 20     | yes  | 4 x 3      |
| ssv2     | 1e-3                | 30     | no   | 2 x 3      |
| coin     | 2e-4                | 20     | yes  | 4 x 3      |

and for all: AdamW (weight decay 0.05, betas 0.9 / 0.999), 5 warmup epochs then a cosine,
layer-wise learning-rate decay 0.75 (12 blocks or fewer) or 0.85 (deeper), label smoothing 0.1,
drop-path 0.1 (ours: the paper's table leaves it out), CutMix 1.0, RandAugment (2 operations, magnitude 9, std 0.5) on top of the
multi-scale crop, and repeated augmentation 2 (each clip twice per epoch, cropped and augmented
differently, the epoch kept at one pass's length). Every value can be overridden.
`--activation-checkpointing` and `--compile` trade memory and start-up time for batch size and
speed, as in pretraining; neither changes what is computed.

Each epoch ends with the multi-view validation (top-1 / top-5 of the softmax averaged over
segments x crops views) and a checkpoint in OUTPUT_DIR/checkpoints (written atomically; the two
newest kept); `--resume` continues after the newest at the same data order, augmentation and
learning rate. The data order, crops, augmentation and mixing are pure functions of (seed,
epoch, step), whatever the number of processes; CutMix and Mixup pair the clips within each
process's share of a batch. Outputs: train.log, metrics.jsonl (one line per
epoch), finetune.json (the result and its settings) and, with --plot, the curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ivn_fast.config import AC_MODES, DataConfig, OptimConfig
from ivn_fast.data.health import SkipCounter, TooManyBadSamples
from ivn_fast.data.loader import split_batches
from ivn_fast.data.mixing import mix, soft_targets
from ivn_fast.data.randaug import rand_augment
from ivn_fast.data.transforms import denormalize, normalize
from ivn_fast.features import Streamed
from ivn_fast.fit import fit
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.probe import PROBE_KINDS, build_probe
from ivn_fast.probe import (Task, add_clip_options, add_device_options, add_input_options, check_at_least_one,
                            evaluate, load_tasks, open_encoder, settings, start_processes, task_labels)
from ivn_fast.train.checkpoint import save_file_atomic
from ivn_fast.train.distributed import World, barrier, mean_over_ranks, shutdown
from ivn_fast.train.metrics import setup_logging
from ivn_fast.train.optim import LRSchedule, layer_decay_groups
from ivn_fast.train.parallelize import checkpoint_blocks, compile_blocks
from ivn_fast.viz import save_curves

log = logging.getLogger("ivn_fast")

RECIPES = {
    "kinetics": {"lr": 3e-4, "epochs": 20, "flip": True, "segments": 4, "crops": 3},
    "ssv2": {"lr": 1e-3, "epochs": 30, "flip": False, "segments": 2, "crops": 3},
    "coin": {"lr": 2e-4, "epochs": 20, "flip": True, "segments": 4, "crops": 3},
}
LR_BATCH = 1024  # the recipes' learning rates are for this many clips a step, scaled linearly
MIN_LR = 1e-6
# settings a resumed run must share with the run that wrote its checkpoint
RESUME_KEYS = ("checkpoint", "random_init", "train_list", "val_list", "root", "head", "frames", "size", "batch",
               "seed", "lr", "epochs", "warmup_epochs", "layer_decay", "weight_decay", "drop_path", "label_smoothing", "cutmix",
               "mixup", "randaug_ops", "randaug_magnitude", "randaug_std", "repeated_aug", "flip", "sampling",
               "stride")


class Classifier(nn.Module):
    """Encoder and head, one module: video [B, 3, T, H, W] -> logits [B, K]."""

    def __init__(self, encoder: VideoEncoder, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(video).tokens)


def layer_of(num_blocks: int) -> Callable[[str], int]:
    """Layer ids for layer-wise decay: embeddings 0, encoder block i i + 1, everything else (the head) last."""
    def layer(name: str) -> int:
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith("encoder."):
            return 0
        return num_blocks + 1
    return layer


class Augmented(Dataset):
    """Training clips through RandAugment, drawn from (seed, key): the same for any worker count."""

    def __init__(self, data: Dataset, label: str, *, seed: int, ops: int, magnitude: float, std: float):
        self.data, self.label, self.seed = data, label, seed
        self.ops, self.magnitude, self.std = ops, magnitude, std

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int) -> dict:
        item = self.data[key]
        video = item["video"][0] if item["video"].dim() == 5 else item["video"]
        if self.ops:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key) + 17)
            pixels = rand_augment(denormalize(video, channel_dim=0).clamp(0, 1), g, num_ops=self.ops,
                                  magnitude=self.magnitude, std=self.std)
            video = normalize(pixels, channel_dim=0)
        out = {"video": video, "label": item[self.label]}
        if "skipped" in item:
            out["skipped"] = item["skipped"]
        return out


def epoch_keys(num: int, epoch: int, *, batch: int, seed: int, repeats: int, world: World) -> list[list[int]]:
    """This process's batches of dataset keys for `epoch`: a seeded permutation, each clip `repeats`
    times in a row with its own key (index + (epoch * repeats + r) * num: its own crop and
    augmentation), cut back to one pass's length, in global batches split over the processes
    (a last batch too small to split is dropped)."""
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    keys = (order[:, None] + (epoch * repeats + torch.arange(repeats)) * num).flatten()[:num]
    return split_batches(keys, batch, rank=world.rank, world=world.size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser, "video lists ('path label' per line; any format of ivn_fast.data.lists) or "
                              "synthetic:LABEL[:CLIPS]")
    parser.add_argument("--recipe", default="kinetics", choices=tuple(RECIPES),
                        help="the paper's settings for Kinetics, Something-Something V2 or COIN (the table above)")
    parser.add_argument("--head", default="linear", choices=PROBE_KINDS,
                        help="linear (LayerNorm of the mean token, then a linear layer) or attentive (the probe's block)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/finetune"), help="where the run writes")
    parser.add_argument("--resume", action="store_true", help="continue after the newest checkpoint in --output-dir")
    parser.add_argument("--batch", type=int, default=32, help="clips per step over all processes")
    parser.add_argument("--lr", type=float, help="peak learning rate at --batch clips (default: the recipe's, "
                                                 f"scaled by batch / {LR_BATCH})")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    parser.add_argument("--warmup-epochs", type=float, default=5.0, help="linear warmup, in epochs")
    parser.add_argument("--layer-decay", type=float, help="layer-wise lr decay (default 0.75 for 12 blocks or "
                                                          "fewer, 0.85 for more)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on norms, "
                                                                         "biases, tables, tokens)")
    parser.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth at the last block")
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="share of each target spread over "
                                                                           "every class")
    parser.add_argument("--cutmix", type=float, default=1.0, help="CutMix Beta alpha (0: off)")
    parser.add_argument("--mixup", type=float, default=0.0, help="Mixup Beta alpha (0: off; with CutMix, even odds "
                                                                 "per batch)")
    parser.add_argument("--randaug-ops", type=int, default=2, help="RandAugment operations per clip (0: off)")
    parser.add_argument("--randaug-magnitude", type=float, default=9.0, help="RandAugment magnitude (0-10)")
    parser.add_argument("--randaug-std", type=float, default=0.5, help="standard deviation of the magnitude")
    parser.add_argument("--repeated-aug", type=int, default=2, help="times each clip is seen per epoch, "
                                                                    "augmented differently")
    parser.add_argument("--flip", choices=("recipe", "on", "off"), default="recipe",
                        help="mirror training clips at random (the lists' no-flip sources never are)")
    parser.add_argument("--segments", type=int, help="temporal test views per clip (default: the recipe's)")
    parser.add_argument("--crops", type=int, help="spatial test views per segment (default: the recipe's)")
    add_clip_options(parser)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader processes per GPU that decode clips")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head, the data order and the augmentation")
    add_device_options(parser, "the whole model's forward and backward; the loss in float32")
    parser.add_argument("--activation-checkpointing", default="none",
                        choices=tuple(m for m in AC_MODES if m != "budget"),  # budget needs compile's partitioner
                        help="recompute encoder activations in the backward pass to fit larger batches: every "
                             "block (full), every other block (selective), or every block keeping its matrix "
                             "products and attention outputs (op). 16 ViT-L clips of 16 frames need it on 80 GB")
    parser.add_argument("--compile", action="store_true", help="torch.compile each encoder block in place (one "
                                                              "graph for all); the first steps take longer")
    parser.add_argument("--log-every", type=int, default=50, help="a log line every N steps")
    parser.add_argument("--plot", action="store_true", help="draw OUTPUT_DIR/curves.png: validation top-1 and "
                                                            "training loss per epoch")
    return parser


def resolve(args: argparse.Namespace, encoder: VideoEncoder) -> argparse.Namespace:
    """The recipe's values where no option was given; bad values are a ValueError."""
    recipe = RECIPES[args.recipe]
    args.lr = args.lr if args.lr is not None else recipe["lr"] * args.batch / LR_BATCH
    args.epochs = args.epochs if args.epochs is not None else recipe["epochs"]
    args.segments = args.segments or recipe["segments"]
    args.crops = args.crops or recipe["crops"]
    args.flip = recipe["flip"] if args.flip == "recipe" else args.flip == "on"
    if args.layer_decay is None:
        args.layer_decay = 0.75 if len(encoder.blocks) <= 12 else 0.85
    check_at_least_one(args, ("batch", "epochs", "segments", "crops", "repeated_aug", "log_every", "stride"))
    for name in ("lr", "warmup_epochs", "weight_decay", "cutmix", "mixup", "randaug_ops", "randaug_std"):
        if not getattr(args, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name, hi in (("layer_decay", 1.0), ("drop_path", 1.0), ("label_smoothing", 1.0), ("randaug_magnitude", 10.0)):
        if not 0 <= getattr(args, name) <= hi:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, {hi}], got {getattr(args, name)}")
    return args


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("epoch_*.pt"))


def save_checkpoint(out: Path, epoch: int, model: nn.Module, opt: torch.optim.Optimizer, record: dict) -> Path:
    """Written under a temporary name and renamed: a crash mid-save leaves the previous one newest."""
    path = out / "checkpoints" / f"epoch_{epoch + 1:04d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, **record}, path)
    for old in _checkpoints(out)[:-2]:
        old.unlink()
    return path


def load_resume(out: Path, args: argparse.Namespace) -> dict | None:
    """The newest checkpoint's contents, refused (ValueError) when its run had other settings."""
    found = _checkpoints(out)
    if not found:
        raise ValueError(f"--resume: no checkpoint under {out / 'checkpoints'}")
    state = torch.load(found[-1], map_location="cpu", weights_only=False)
    mine, theirs = settings(args), state["settings"]
    differ = [k for k in RESUME_KEYS if mine.get(k) != theirs.get(k)]
    if differ:
        raise ValueError(f"--resume: {found[-1]} was written with other settings: "
                         + ", ".join(f"{k} {theirs.get(k)!r} (now {mine.get(k)!r})" for k in differ))
    log.info("resuming after epoch %d from %s", state["epoch"] + 1, found[-1])
    return state


def train(args: argparse.Namespace, encoder: VideoEncoder, tasks: dict[str, Task], device: torch.device,
          world: World) -> dict:
    label, out = tasks["train"].label, args.output_dir
    num_classes = max(t.num_classes for t in tasks.values())
    torch.manual_seed(args.seed)
    head = build_probe(args.head, encoder.cfg.embed_dim, num_classes, encoder.cfg.num_heads)
    with torch.no_grad():  # a small head start, as the BEiT recipe scales it, so early steps do not upset the encoder
        head.head.weight.mul_(0.001)
        head.head.bias.zero_()
    encoder.set_drop_path(args.drop_path)
    if args.activation_checkpointing != "none":
        log.info("activation checkpointing (%s) on %d encoder blocks", args.activation_checkpointing,
                 checkpoint_blocks(encoder, args.activation_checkpointing))
    if args.compile:
        log.info("compiled %d encoder blocks", compile_blocks(encoder))
    model = Classifier(encoder, head).to(device)
    groups = layer_decay_groups(model, args.weight_decay, args.layer_decay, len(encoder.blocks),
                                layer_of(len(encoder.blocks)))
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), fused=device.type == "cuda")
    data = Augmented(tasks["train"].data, label, seed=args.seed, ops=args.randaug_ops,
                     magnitude=args.randaug_magnitude, std=args.randaug_std)
    per_epoch = len(epoch_keys(len(data), 0, batch=args.batch, seed=args.seed, repeats=args.repeated_aug,
                               world=world))
    schedule = LRSchedule(OptimConfig(lr=args.lr, scale_lr=False, min_lr=MIN_LR, warmup_lr=MIN_LR,
                                      warmup_steps=round(args.warmup_epochs * per_epoch)),
                          args.epochs * per_epoch, args.batch)
    state = load_resume(out, args) if args.resume else None
    start, history = 0, {"curve": [], "train_loss": [], "scores": []}
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"] + 1, {k: state[k] for k in history}
    trained = model if world.size == 1 else DistributedDataParallel(model)
    skips = SkipCounter(DataConfig().max_bad_fraction)
    step = [start * per_epoch]  # the global step the next loss is for: mixing draws from it
    val = Streamed(encoder, tasks["val"].data, (label,), batch=max(1, args.batch // world.size), device=device,
                   workers=args.workers, world=world, amp=args.amp)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # drop-path draws restart from (seed, epoch, rank) each epoch, so a resumed epoch draws what it would have
        torch.manual_seed(args.seed * 1_000_003 + epoch * 1_009 + world.rank)
        keys = epoch_keys(len(data), epoch, batch=args.batch, seed=args.seed, repeats=args.repeated_aug, world=world)
        loader = DataLoader(data, batch_sampler=keys, num_workers=args.workers, pin_memory=device.type == "cuda")
        for items in loader:
            skips.update(items)
            yield items["video"], torch.as_tensor(items["label"])

    def loss_fn(m: nn.Module, video: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rng = np.random.default_rng([args.seed, step[0]])  # one draw per global step: every process alike
        step[0] += 1
        targets = soft_targets(labels, num_classes, args.label_smoothing)
        video, targets, _ = mix(video, targets, rng, mixup=args.mixup, cutmix=args.cutmix)
        with torch.autocast(device.type, dtype=args.amp or torch.float32, enabled=args.amp is not None):
            logits = m(video)
        return -(targets * F.log_softmax(logits.float(), -1)).sum(-1).mean()

    def score(_: nn.Module) -> float:
        model.eval()
        history["scores"].append(evaluate(head, val, device))
        return history["scores"][-1]["top1"]

    def after_epoch(epoch: int, curve: list[float], losses: list[float]) -> None:
        loss = mean_over_ranks(torch.tensor(losses[-1], device=device)).item()  # each process saw its share
        history["curve"].append(curve[-1])
        history["train_loss"].append(loss)
        if world.is_main:
            scores = history["scores"][-1]
            line = {"epoch": epoch + 1, "loss": loss, **scores}
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            log.info("epoch %d/%d | loss %.4f | val top-1 %.4f top-5 %.4f (single view %.4f)", epoch + 1, args.epochs,
                     loss, scores["top1"], scores["top5"], scores["view_top1"])
            save_checkpoint(out, epoch, model, opt, {"settings": settings(args), **history})
        barrier()

    start_time = time.perf_counter()
    fit(trained, batches, per_epoch, loss_fn, score, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        device=device, optimizer=opt, schedule=schedule, start_epoch=start, after_epoch=after_epoch,
        log_every=args.log_every if world.is_main else 0)
    return {"task": label, "classes": num_classes, **history["scores"][-1], "curve": history["curve"],
            "train_loss": history["train_loss"], "epochs_run": args.epochs - start,
            "seconds": round(time.perf_counter() - start_time, 1)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    world = World()
    try:
        device, world = start_processes(args)
        setup_logging(world.is_main, args.output_dir)
        if not args.resume and _checkpoints(args.output_dir):
            raise ValueError(f"{args.output_dir} holds checkpoints of an earlier run: pass --resume to continue it, "
                             "or another --output-dir")
        encoder = open_encoder(args, device, world)
        resolve(args, encoder)
        tasks, frames, size = load_tasks(args, encoder, flip=args.flip)
        for split, task in tasks.items():
            if task.num_classes == 0:
                raise ValueError(f"--{split}-list: fine-tuning classifies clips; tracking and depth are probes")
        unseen = sorted(set(task_labels(tasks["val"])) - set(task_labels(tasks["train"])))
        if unseen:
            log.warning("validation label(s) %s never occur in the training clips", ", ".join(map(str, unseen)))
        record = train(args, encoder, tasks, device, world)
    except (ValueError, FileNotFoundError) as e:
        print(f"ivn_fast.finetune: error: {e}", file=sys.stderr)
        shutdown()
        return 2
    except TooManyBadSamples as e:
        print(f"ivn_fast.finetune: error: {e}", file=sys.stderr)
        shutdown()
        return 3
    shutdown()
    if world.is_main:
        record.update({"settings": settings(args), "frames": frames, "size": size,
                       "clips": {split: len(t.data) for split, t in tasks.items()},
                       "data": {s: t.spec for s, t in tasks.items()}})
        (args.output_dir / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
        if args.plot:
            save_curves({"validation top-1": {"top-1": record["curve"]}, "training loss": {"soft-target CE":
                         record["train_loss"]}}, args.output_dir / "curves.png",
                        f"fine-tuning ({args.recipe} recipe), {args.checkpoint}",
                        baseline={"validation top-1": 1 / record["classes"]})
        print(f"{record['task']} fine-tuned ({args.recipe} recipe, {args.epochs} epochs): top-1 {record['top1']:.3f}, "
              f"top-5 {record['top5']:.3f} (single view {record['view_top1']:.3f}); outputs in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
