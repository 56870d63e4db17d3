"""Probe a frozen encoder on a labelled task: the number pretraining is judged by.

    python -m ivn_fast.probe --checkpoint CKPT --train-list synthetic:shape --val-list synthetic:shape \\
        [--head attentive|linear] [--epochs N] [--segments S --crops C] [--cache-dir DIR] [--json OUT] \\
        [--plot PNG]
    python -m ivn_fast.probe --checkpoint CKPT --train-list k400_train.txt --val-list k400_val.txt \\
        --root /data/k400 --segments 4 --crops 3

The encoder (a training checkpoint of either stage, a directory written by
`python -m ivn_fast.export`, or a released InternVideo-Next checkpoint file) stays frozen: its
tokens are computed once per view and kept (or, for sets too large to keep, encoded as they are
read: `--features`), then a probe head is trained on them with AdamW and a cosine schedule.
`--random-init` probes an encoder of the same shape with random weights, the baseline every result
is read against. On a GPU, attention follows the training run's measured
table (see `--train.attention` of `ivn_fast.pretrain`), timed on the first run on a new GPU.

Multi-view testing: each validation clip is seen as segments x crops views and the probe's
softmax is averaged over them (the reported top-1 / top-5; `view_top1` is the mean single-view
accuracy); training takes one view per clip, drawn at random, as a training-time crop would.

Lists of real videos (`path label` per line, the formats and mixing of `ivn_fast.data.lists`)
give their clips through `ivn_fast.data.dataset.VideoClips`: a sparsely sampled clip with the
multi-scale crop and flip per training video, segments x crops test views per validation video.

Tasks on the built-in synthetic set: `synthetic:shape` (appearance), `synthetic:direction`
(dynamics) and `synthetic:speed`, optionally with a clip count (`synthetic:direction:1440`);
train and validation clips come from different seeds. For several views a synthetic clip is
rendered `segments` times longer and, with several crops, 1.25 times wider, then cut into
consecutive windows of the probe's frame count and evenly spaced crops (left to right) of its
frame size, so the views differ the way a long real video's do: in time, and in what the frame
cuts off.

`--head linear` reads mean-pooled tokens; `--cache-dir DIR` keeps those on disk, keyed by the
encoder's weights and the data, so later probes of the same encoder skip the encoder.

Dense tasks, one view per window, each with its own readout:
- object tracking (the paper's Waymo probe; `ivn_fast.tracking`): `synthetic:track[:CLIPS]`, or box
  lists (`.jsonl`, one window of frames and boxes per line). Given each object's first-frame box,
  a readout predicts its box in every later frame; the result is the mean IoU, beside the IoU of
  keeping the first box (`static_miou`), which the readout starts from.
- depth (the paper's ScanNet / KITTI probe; `ivn_fast.depth`): `synthetic:depth[:CLIPS]`, or depth
  lists (`.jsonl`, frames and depth maps per line). One query per output patch (or, `--head vda`,
  Video Depth Anything's DPT head with temporal modules on four blocks); AbsRel and delta1, beside
  those of the training windows' mean depth map (`mean_absrel`, `mean_delta1`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ivn_fast.config import DataConfig
from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.health import encode_skips
from ivn_fast.data.lists import ListError, VideoList, load_lists, parse_spec
from ivn_fast.data.synthetic import LABELS, SyntheticVideos
from ivn_fast.data.transforms import denormalize
from ivn_fast.depth import TARGET_KEYS as DEPTH_KEYS
from ivn_fast.depth import DepthList, synthetic_depth, train_depth
from ivn_fast.features import Kept, LayerTokens, Source, Streamed, cached_encode, encode, gather_rows
from ivn_fast.fit import fit
from ivn_fast.models.attention_table import configure as configure_attention
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.depth_head import TemporalDepthHead, dpt_layers
from ivn_fast.models.probe import PROBE_KINDS, DepthProbe, build_probe
from ivn_fast.tracking import TARGET_KEYS as TRACK_KEYS
from ivn_fast.tracking import BoxList, later_frames, synthetic_tracks, train_tracker
from ivn_fast.train.distributed import (World, broadcast_object, data_parallel, init_distributed, mean_over_ranks,
                                        shutdown, sum_over_ranks)
from ivn_fast.viz import draw_boxes, save_clip_grid, save_curves

log = logging.getLogger("ivn_fast")

# every split of the synthetic set has its own seed (the video-text evaluations' zero-shot and MCQ sets too)
SEEDS = {"train": 1_000, "val": 2_000, "zero-shot": 3_000, "mcq": 4_000}
DEFAULT_CLIPS = {"train": 720, "val": 288, "zero-shot": 288, "mcq": 288}
# V-JEPA-style probe recipe: AdamW at this peak rate and decay, cosine, batches of this many clips
LR, WEIGHT_DECAY, BATCH, EPOCHS = 1e-3, 0.05, 32, 20
CROP_CANVAS = 1.25  # rendered frame side / view side when a clip is cut into several crops

# the dense tasks: their synthetic clips and their lists (.jsonl, told apart by the key of their targets)
DENSE = {"track": (synthetic_tracks, BoxList, "boxes"), "depth": (synthetic_depth, DepthList, "depths")}


@dataclasses.dataclass(frozen=True)
class Task:
    """One split of a probe task: the clips, which of their labels to read, and what they are."""

    data: Dataset
    label: str
    num_classes: int
    spec: dict  # what the clips are: recorded in the JSON, and the feature cache's key


def parse_synthetic(spec: str, split: str, kinds: Sequence[str]) -> tuple[str, int]:
    """The kind and clip count of 'synthetic:KIND[:CLIPS]' (given for --SPLIT-list)."""
    parts = spec.split(":")
    if parts[0] != "synthetic" or len(parts) not in (2, 3) or parts[1] not in kinds:
        raise ValueError(f"--{split}-list {spec!r}: expected synthetic:KIND[:CLIPS] with KIND one of "
                         f"{', '.join(kinds)}")
    try:
        clips = int(parts[2]) if len(parts) == 3 else DEFAULT_CLIPS[split]
    except ValueError:
        clips = 0
    if clips < 1:
        raise ValueError(f"--{split}-list {spec!r}: the clip count must be a positive number")
    return parts[1], clips


def synthetic_task(spec: str, split: str, *, frames: int, size: int, segments: int, crops: int) -> Task:
    """'synthetic:LABEL[:CLIPS]' on the built-in set (each split from its own seed); LABEL 'track' or
    'depth' is the tracking or depth task on the same clips."""
    kind, clips = parse_synthetic(spec, split, (*LABELS, *DENSE))
    train = split == "train"
    described = {"data": "synthetic", "clips": clips, "seed": SEEDS[split], "frames": frames, "size": size,
                 "segments": segments, "crops": crops, "train": train}
    if kind in DENSE:
        return Task(DENSE[kind][0](clips, frames, size, seed=SEEDS[split]), kind, 0, described)
    data = SyntheticViews(clips, frames, size, seed=SEEDS[split], segments=segments, crops=crops, train=train)
    return Task(data, kind, len(LABELS[kind]), described)


def list_task(spec: str, split: str, *, frames: int, size: int, segments: int, crops: int, root: str, sampling: str,
              stride: int, seed: int, flip: bool = True) -> Task:
    """Labelled video lists (a list spec as ivn_fast.data.lists reads it); `flip` off mirrors no
    training clip (on, the lists' no-flip sources are still never mirrored)."""
    no_flip = tuple(s.strip() for s in DataConfig().no_flip_sources.split(","))
    try:
        videos = load_lists(spec, root=root, no_flip_sources=no_flip, seed=seed)
    except ListError as e:
        raise ValueError(f"--{split}-list: {e}") from None
    unlabelled = int((videos.labels < 0).sum())
    if unlabelled:
        raise ValueError(f"--{split}-list {spec!r}: {unlabelled} of {len(videos)} videos have no label")
    files = [(p, w, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p, w in parse_spec(spec)]
    described = {"data": "list", "lists": files, "root": root}
    return video_task(videos, split, "label", int(videos.labels.max()) + 1, described, frames=frames, size=size,
                      segments=segments, crops=crops, sampling=sampling, stride=stride, seed=seed, flip=flip)


def video_task(videos: VideoList, split: str, label: str, num_classes: int, described: dict, *, frames: int,
               size: int, segments: int, crops: int, sampling: str, stride: int, seed: int, flip: bool) -> Task:
    """Clips of listed videos: one sampled, cropped clip per training video, segments x crops views per
    validation video; `described` (what the videos are) goes into the task's spec with the clip settings."""
    train = split == "train"
    clips = VideoClips(videos, num_frames=frames, size=size, sampling=sampling, stride=stride,
                       min_frames=DataConfig().min_frames, flip=flip, seed=seed, train=train, segments=segments,
                       crops=crops)
    return Task(clips if train else GroupedViews(clips, segments * crops), label, num_classes, {
        **described, "videos": len(videos), "frames": frames, "size": size, "sampling": sampling, "stride": stride,
        "segments": segments, "crops": crops, "train": train, "seed": seed})


class SyntheticViews(Dataset):
    """Synthetic clips as segments x crops views of `num_frames` frames of `size` pixels:
    items hold video [V, 3, T, H, W] and every label. With one segment and one crop a view is
    exactly the SyntheticVideos clip. `train` keeps one view per clip, drawn from (seed, index)."""

    def __init__(self, num_videos: int, num_frames: int, size: int, *, seed: int, segments: int = 1,
                 crops: int = 1, train: bool = False):
        if segments < 1 or crops < 1:
            raise ValueError(f"segments and crops must be >= 1, got {segments} and {crops}")
        canvas = size if crops == 1 else round(size * CROP_CANVAS)
        self.clips = SyntheticVideos(num_videos, num_frames * segments, canvas, seed=seed)
        self.num_frames, self.size, self.seed, self.train = num_frames, size, seed, train
        self.windows = [(s * num_frames, (canvas - size) // 2, round(c * (canvas - size) / max(crops - 1, 1)))
                        for s in range(segments) for c in range(crops)]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int) -> dict[str, torch.Tensor | int]:
        """key = index + epoch * len(self): a streamed probe draws each epoch's training view anew."""
        epoch, index = divmod(int(key), len(self))
        item = self.clips[index]
        windows = self.windows
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index + epoch * 1_000_000_007)
            windows = [windows[int(torch.randint(len(windows), (), generator=g))]]
        t, s = self.num_frames, self.size
        video = torch.stack([item["video"][:, t0:t0 + t, y:y + s, x:x + s] for t0, y, x in windows])
        return {"video": video, "index": index, **{k: item[k] for k in LABELS}}


class GroupedViews(Dataset):
    """Items i*V .. i*V+V-1 of a dataset that lists each test view as its own item (VideoClips
    at test time) as one item of V views."""

    def __init__(self, data: Dataset, views: int):
        self.data, self.views = data, views

    def __len__(self) -> int:
        return len(self.data) // self.views

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | str]:
        items = [self.data[index * self.views + v] for v in range(self.views)]
        return {"video": torch.stack([it["video"] for it in items]), "label": items[0]["label"],
                "skipped": encode_skips(s for it in items for s in json.loads(it["skipped"]))}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, scores.shape[-1])
    return (scores.topk(k, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()


@torch.no_grad()
def predict(probe: torch.nn.Module, source: Source, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, V, K] of every view of every clip, and the labels [N]."""
    probe.eval()
    probs, labels = [], []
    for tokens, y in source.batches():
        probs.append(probe(tokens.flatten(0, 1).to(device)).float().softmax(-1).cpu().unflatten(0, tokens.shape[:2]))
        labels.append(y)
    return gather_rows(torch.cat(probs), source.world), gather_rows(torch.cat(labels), source.world)


def evaluate(probe: torch.nn.Module, source: Source, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 of the softmax averaged over each clip's views, and the mean single-view top-1."""
    probs, labels = predict(probe, source, device)
    clip = probs.mean(1)
    return {"top1": topk_accuracy(clip, labels, 1), "top5": topk_accuracy(clip, labels, 5),
            "view_top1": (probs.argmax(-1) == labels[:, None]).float().mean().item()}


def train_probe(train: Source, val: Source, *, head: str, num_classes: int, num_heads: int, epochs: int, batch: int,
                lr: float, weight_decay: float, seed: int, device: torch.device) -> dict:
    """Train a probe on kept tokens (every training view a sample) or streamed clips (a fresh view of
    each per epoch); the per-epoch validation top-1 is the probe curve, beside each epoch's mean
    training loss. `train_top1` scores the kept training views after training; streamed, it is the
    last epoch's running top-1 (on the views it trained on, while it trained)."""
    torch.manual_seed(seed)
    running = torch.zeros(2, device=device)  # the current epoch's right answers and clips
    base = train.epochs(batch, seed)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        running.zero_()  # train_top1 reads the last epoch's
        return base(epoch)

    probe = build_probe(head, train.width, num_classes, num_heads).to(device)

    def loss(p: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = p(x)
        running[0] += (logits.argmax(-1) == y).sum()
        running[1] += len(y)
        return F.cross_entropy(logits, y)

    scores = []  # each epoch's validation: the last one is the result

    def validate(_: torch.nn.Module) -> float:
        scores.append(evaluate(probe, val, device))
        return scores[-1]["top1"]

    curve, losses = fit(data_parallel(probe, train.world), batches, train.steps(batch), loss, validate, epochs=epochs,
                        lr=lr, weight_decay=weight_decay, device=device)
    losses = mean_over_ranks(torch.tensor(losses, device=device)).tolist()
    if isinstance(train, Streamed):
        right, seen = sum_over_ranks([int(v) for v in running.tolist()])
        train_top1 = right / max(seen, 1)
    else:
        train_top1 = evaluate(probe, train, device)["top1"]
    return {"curve": curve, "train_loss": losses, **scores[-1], "train_top1": train_top1}


def add_input_options(parser: argparse.ArgumentParser, lists: str) -> None:
    """The encoder and the two lists of clips (`lists`: what they may be): shared by the probe and fine-tuning."""
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint (step_XXXXXXXX), exported encoder, or released checkpoint file")
    parser.add_argument("--random-init", action="store_true",
                        help="an encoder of the checkpoint's shape with random weights (drawn from --seed) instead: "
                             "the baseline results are read against")
    parser.add_argument("--train-list", required=True, help=f"training clips: {lists}")
    parser.add_argument("--val-list", required=True, help="validation clips of the same task, as --train-list")


def add_clip_options(parser: argparse.ArgumentParser) -> None:
    """The clip shape and how list videos are read: shared by the probe and fine-tuning."""
    parser.add_argument("--frames", type=int, default=0, help="frames per view (0: the encoder's training clip)")
    parser.add_argument("--size", type=int, default=0, help="view side in pixels (0: the encoder's training clip)")
    parser.add_argument("--root", default="", help="prefix joined onto relative paths in the video lists")
    parser.add_argument("--sampling", default=DataConfig().sampling, choices=("sparse", "dense"),
                        help="frames of a list clip: one per equal segment of the video, or --stride apart")
    parser.add_argument("--stride", type=int, default=DataConfig().stride, help="frame step of dense sampling")


def add_fit_options(parser: argparse.ArgumentParser, what: str, *, epochs: int, batch: int, lr: float,
                    weight_decay: float) -> None:
    """--epochs, --batch, --lr and --weight-decay of what trains (`what`) on frozen features."""
    parser.add_argument("--epochs", type=int, default=epochs, help=f"training epochs of {what}")
    parser.add_argument("--batch", type=int, default=batch,
                        help="clips per step, over all processes (and per encoding batch)")
    parser.add_argument("--lr", type=float, default=lr, help=f"peak AdamW learning rate of {what} (cosine to 0)")
    parser.add_argument("--weight-decay", type=float, default=weight_decay, help=f"AdamW weight decay of {what}")


def add_feature_options(parser: argparse.ArgumentParser) -> None:
    """--features and --workers: how frozen features are made (sources)."""
    parser.add_argument("--features", default="auto", choices=("auto", "memory", "stream"),
                        help="encode every view once and keep the tokens (memory: fast, one fixed training view "
                             "per clip), or encode clips as they are read (stream: each epoch samples and crops "
                             "training clips afresh, for sets too large to keep; always under torchrun); auto keeps "
                             "them while they take at most a quarter of this machine's memory")
    parser.add_argument("--workers", type=int, default=1,
                        help="DataLoader processes that render or decode clips (0: in the main process)")


def add_device_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--device and --precision, read by start_processes."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help=f"bf16 autocast (auto on a GPU) or float32 (auto on CPU): {what}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser, "synthetic:LABEL[:CLIPS] (LABEL shape, direction, speed, track or depth), video "
                              "lists ('path label' per line), or a box or depth list (.jsonl)")
    parser.add_argument("--head", default="attentive", choices=(*PROBE_KINDS, "vda"),
                        help="attentive (V-JEPA's) or linear on mean-pooled tokens; for depth, attentive (one "
                             "query per patch) or vda (Video Depth Anything's head: a DPT decoder on four blocks "
                             "with temporal modules, plus its temporal gradient loss)")
    add_fit_options(parser, "the probe", epochs=EPOCHS, batch=BATCH, lr=LR, weight_decay=WEIGHT_DECAY)
    parser.add_argument("--heads", type=int, default=0, help="attention heads of the attentive probe "
                                                             "(0: the encoder's)")
    parser.add_argument("--segments", type=int, default=1, help="temporal segments per clip at test time")
    parser.add_argument("--crops", type=int, default=1, help="spatial crops per segment at test time")
    add_clip_options(parser)
    add_feature_options(parser)
    parser.add_argument("--cache-dir", type=Path, help="keep the linear probe's pooled features here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's initialisation and data order")
    add_device_options(parser, "the frozen encoder's forward; the probe head trains in float32 either way")
    parser.add_argument("--json", type=Path, help="write the result, with the settings it ran, here")
    parser.add_argument("--plot", type=Path, help="draw the probe curve here (PNG): validation top-1 (tracking: "
                                                  "mean IoU; depth: AbsRel and delta1) and training loss per "
                                                  "epoch; tracking also draws validation boxes, true and "
                                                  "predicted, in PLOT-boxes.png, depth the true and predicted "
                                                  "maps in PLOT-depth.png")
    return parser


def check_at_least_one(args: argparse.Namespace, names: Sequence[str]) -> None:
    """Each named option is 1 or more, else a ValueError naming it."""
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def _check_args(args: argparse.Namespace) -> None:
    check_at_least_one(args, ("epochs", "batch", "segments", "crops", "stride"))
    if args.cache_dir and args.head != "linear":
        raise ValueError("--cache-dir keeps mean-pooled features, which only --head linear reads")
    if args.cache_dir and args.features == "stream":
        raise ValueError("--cache-dir keeps features, which --features stream never does")


def load_task(spec: str, split: str, args: argparse.Namespace, frames: int, size: int, flip: bool = True) -> Task:
    views = {"segments": args.segments, "crops": args.crops}
    if spec.split(":")[0] == "synthetic":
        return synthetic_task(spec, split, frames=frames, size=size, **views)
    if spec.endswith(".jsonl"):
        return window_task(spec, split, frames=frames, size=size, root=args.root)
    return list_task(spec, split, frames=frames, size=size, root=args.root, sampling=args.sampling,
                     stride=args.stride, seed=args.seed, flip=flip, **views)


def window_task(spec: str, split: str, *, frames: int, size: int, root: str) -> Task:
    """A box list or a depth list, by the key of its first window's targets."""
    try:
        with open(spec, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        keys = json.loads(first).keys()
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"--{split}-list {spec}: not a box or depth list ({e})") from None
    kind = next((k for k, (_, _, key) in DENSE.items() if key in keys), None)
    if kind is None:
        raise ValueError(f"--{split}-list {spec}: a window needs 'boxes' (tracking) or 'depths' (depth)")
    stat = os.stat(spec)
    return Task(DENSE[kind][1](spec, num_frames=frames, size=size, root=root), kind, 0, {
        "data": DENSE[kind][2], "list": spec, "mtime_ns": stat.st_mtime_ns, "bytes": stat.st_size, "root": root,
        "frames": frames, "size": size})


def _check_dense(args: argparse.Namespace, tasks: dict[str, Task]) -> None:
    kind = tasks["train"].label
    heads = ("attentive", "vda") if kind == "depth" else ("attentive",)
    if kind in DENSE and (args.segments * args.crops > 1 or args.head not in heads or args.cache_dir):
        raise ValueError(f"the {kind} probe reads one view per window with its own readout: leave --segments, "
                         f"--crops and --cache-dir at their defaults, and --head at {' or '.join(heads)}")
    if kind not in DENSE and args.head == "vda":
        raise ValueError("--head vda is a depth head: classification takes attentive or linear")


def task_labels(task: Task) -> list[int]:
    """The labels a classification task's clips carry, read from its list or the synthetic set's plan."""
    data = task.data.data if isinstance(task.data, GroupedViews) else task.data
    if isinstance(data, VideoClips):
        return data.videos.labels.tolist()
    return [data.clips.labels(i)[task.label] for i in range(len(data))]


def feature_bytes(encoder: VideoEncoder, tasks: dict[str, Task], frames: int, size: int, pool: bool) -> int:
    """What keeping every view's float32 tokens would take."""
    tokens = 1 if pool else encoder.cfg.num_cls + frames * (size // encoder.cfg.patch_size) ** 2
    views = sum(len(t.data) * (1 if split == "train" else t.spec.get("segments", 1) * t.spec.get("crops", 1))
                for split, t in tasks.items())
    return 4 * encoder.width * tokens * views


def feature_mode(choice: str, need: int, *, cached: bool = False) -> str:
    """memory or stream: `choice` (--features), or with auto, memory while the tokens (`need` bytes) take
    at most a quarter of RAM or are `cached` on disk."""
    if choice != "auto":
        return choice
    budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    mode = "memory" if cached or need <= budget else "stream"
    log.info("probe features: %s (keeping every view's tokens would take %.1f GB; a quarter of memory is %.1f GB)",
             mode, need / 1e9, budget / 1e9)
    return mode


def sources(args: argparse.Namespace, encoder: VideoEncoder, tasks: dict[str, Task], device: torch.device,
            world: World, *, keys: Sequence[str] = (), pool: bool = False) -> tuple[dict[str, Source], str, dict]:
    """Each split's tokens (mean-pooled with `pool`) and its targets: those under `keys`, or its task's
    own label; kept (from --cache-dir when given) or streamed, as --features says (always streamed under
    torchrun). Also the mode, and which kept splits came from the cache."""
    spec = tasks["train"].spec
    need = feature_bytes(encoder, tasks, spec["frames"], spec["size"], pool)
    cache = getattr(args, "cache_dir", None)
    mode = "stream" if world.size > 1 else feature_mode(args.features, need, cached=cache is not None)
    out, cached = {}, {}
    for split, task in tasks.items():
        read = tuple(keys) or (task.label,)
        if mode == "stream":
            out[split] = Streamed(encoder, task.data, read, batch=max(1, args.batch // world.size), device=device,
                                  workers=args.workers, pool=pool, world=world, amp=args.amp)
            continue
        if cache:
            (tokens, targets), cached[split] = cached_encode(cache, task.spec, encoder, task.data, read, args.batch,
                                                             device, workers=args.workers, amp=args.amp)
        else:
            tokens, targets = encode(encoder, task.data, read, args.batch, device, pool=pool, workers=args.workers,
                                     amp=args.amp)
        out[split] = Kept(tokens, *(targets[k] for k in read), batch=args.batch)
    return out, mode, cached


def classify(args: argparse.Namespace, encoder: VideoEncoder, tasks: dict[str, Task], device: torch.device,
             world: World) -> dict:
    """Train the classification probe on kept or streamed tokens; the record and what to print and draw."""
    label = tasks["train"].label
    source, mode, cached = sources(args, encoder, tasks, device, world, pool=args.head == "linear")
    unseen = sorted(set(task_labels(tasks["val"])) - set(task_labels(tasks["train"])))
    if unseen and world.is_main:
        log.warning("validation label(s) %s never occur in the training clips: the probe cannot learn them "
                    "(do both lists use one label map?)", ", ".join(map(str, unseen)))
    num_classes = max(t.num_classes for t in tasks.values())
    result = train_probe(source["train"], source["val"], head=args.head, num_classes=num_classes,
                         num_heads=args.heads or encoder.cfg.num_heads, epochs=args.epochs, batch=args.batch,
                         lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=device)
    views_note = f", {args.segments}x{args.crops} views" if args.segments * args.crops > 1 else ""
    summary = (f"{label} probe ({args.head}{', random encoder' if args.random_init else ''}{views_note}): "
               f"top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f} (single view {result['view_top1']:.3f}, "
               f"train top-1 {result['train_top1']:.3f})")
    if args.plot and world.is_main:
        save_curves({"validation top-1": {"top-1": result["curve"]}, "training loss": {"cross-entropy":
                     result["train_loss"]}}, args.plot, f"{label} probe ({args.head}), {_encoder_name(args)}",
                    baseline={"validation top-1": 1 / num_classes})
    return {"task": label, "classes": num_classes, **result, "features": mode, "cached": cached, "summary": summary}


def track(args: argparse.Namespace, encoder: VideoEncoder, tasks: dict[str, Task], device: torch.device,
          world: World) -> dict:
    """Train the tracking readout on kept or streamed tokens; the record and what to print and draw. With
    --plot, PLOT-boxes.png shows validation windows with true (green) and predicted (red) boxes."""
    source, mode, _ = sources(args, encoder, tasks, device, world, keys=TRACK_KEYS)
    result = train_tracker(source["train"], source["val"], num_frames=tasks["train"].spec["frames"],
                           num_heads=args.heads or encoder.cfg.num_heads, epochs=args.epochs, batch=args.batch,
                           lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=device)
    probe = result.pop("probe")
    summary = (f"tracking probe{' (random encoder)' if args.random_init else ''}: mean IoU {result['miou']:.3f} "
               f"(first box kept: {result['static_miou']:.3f}; training windows {result['train_miou']:.3f})")
    if args.plot and world.is_main:
        save_curves({"validation mean IoU": {"probe": result["curve"]}, "training loss": {"smooth L1 + GIoU":
                     result["train_loss"]}}, args.plot, f"tracking probe, {_encoder_name(args)}",
                    baseline={"validation mean IoU": result["static_miou"]}, baseline_label="first box kept")
        save_box_grid(probe, source["val"], tasks["val"].data, args.plot.with_name(f"{args.plot.stem}-boxes.png"))
    return {"task": "track", **result, "features": mode, "summary": summary}


def depth(args: argparse.Namespace, encoder: VideoEncoder, tasks: dict[str, Task], device: torch.device,
          world: World) -> dict:
    """Train the depth readout on kept or streamed tokens; the record and what to print and draw. With
    --plot, PLOT-depth.png shows validation windows' frames, true and predicted depth."""
    patch = encoder.cfg.patch_size
    frames, size = tasks["train"].spec["frames"], tasks["train"].spec["size"]
    grid = (frames, size // patch, size // patch)
    if args.head == "vda":  # four blocks' tokens, a DPT decoder with temporal modules, temporal gradient loss
        features = LayerTokens(encoder, dpt_layers(len(encoder.blocks)))
        make, temporal = (lambda: TemporalDepthHead(encoder.width, grid, patch, encoder.num_cls)), 1.0
    else:
        features = encoder
        make, temporal = (lambda: DepthProbe(encoder.width, grid, patch, args.heads or encoder.cfg.num_heads)), 0.0
    source, mode, _ = sources(args, features, tasks, device, world, keys=DEPTH_KEYS)
    result = train_depth(source["train"], source["val"], make, epochs=args.epochs, batch=args.batch, lr=args.lr,
                         weight_decay=args.weight_decay, seed=args.seed, device=device, temporal=temporal)
    probe = result.pop("probe")
    head = "temporal DPT head" if args.head == "vda" else "query head"
    summary = (f"depth probe ({head}{', random encoder' if args.random_init else ''}): AbsRel {result['absrel']:.3f}, "
               f"delta1 {result['delta1']:.3f} (training mean depth map: AbsRel {result['mean_absrel']:.3f}, "
               f"delta1 {result['mean_delta1']:.3f}; training windows AbsRel {result['train_absrel']:.3f})")
    if args.plot and world.is_main:
        save_curves({"validation AbsRel": {"probe": result["curve"]}, "validation delta1": {"probe":
                     result["delta1_curve"]}, "training loss": {"L1 (m)": result["train_loss"]}}, args.plot,
                    f"depth probe ({head}), {_encoder_name(args)}",
                    baseline={"validation AbsRel": result["mean_absrel"], "validation delta1": result["mean_delta1"]},
                    baseline_label="mean depth map")
        save_depth_grid(probe, source["val"], tasks["val"].data, args.plot.with_name(f"{args.plot.stem}-depth.png"))
    return {"task": "depth", "head": args.head, **result, "features": mode, "summary": summary}


@torch.no_grad()
def save_depth_grid(probe: torch.nn.Module, source: Source, data: Dataset, path: Path, clips: int = 4) -> Path:
    """The first validation windows: frames, true depth, predicted depth (near bright, far dark, on the
    true depth's scale; unscored pixels black)."""
    tokens, true, valid = (t.cpu() for t in source.first(clips))
    n = len(tokens)
    pred = probe.eval()(tokens[:, 0])

    def shade(d: torch.Tensor, i: int) -> torch.Tensor:
        scored = true[i][valid[i]]
        lo, hi = (scored.min(), scored.max()) if len(scored) else (0.0, 1.0)
        near = ((hi - d) / (hi - lo).clamp(min=1e-6)).clamp(0, 1) * valid[i]
        return near[None].expand(3, -1, -1, -1)

    rows = {"frames": torch.stack([denormalize(data[i]["video"], channel_dim=0) for i in range(n)]),
            "true depth": torch.stack([shade(true[i], i) for i in range(n)]),
            "predicted depth": torch.stack([shade(pred[i], i) for i in range(n)])}
    return save_clip_grid(rows, path, clips=n)


@torch.no_grad()
def save_box_grid(probe: torch.nn.Module, source: Source, data: Dataset, path: Path, clips: int = 4) -> Path:
    """The first validation windows with the true boxes (green) and the readout's (red)."""
    tokens, boxes, seen = (t.cpu() for t in source.first(clips))
    n = len(tokens)
    first, _, _ = later_frames({"boxes": boxes, "seen": seen})
    pred = torch.cat([first[:, :, None], probe.eval()(tokens[:, 0], first)], 2)
    seen = seen & seen[:, :, :1]
    video = torch.stack([draw_boxes(denormalize(data[i]["video"], channel_dim=0),
                                    {(40, 200, 60): boxes[i], (230, 40, 40): pred[i]}, seen[i])
                         for i in range(n)])
    return save_clip_grid({"true / predicted": video}, path, clips=n)


def _encoder_name(args: argparse.Namespace) -> str:
    return "random encoder" if args.random_init else str(args.checkpoint)


def settings(args: argparse.Namespace) -> dict:
    """The options a run was given, as JSON can hold them: recorded with its result."""
    return {k: str(v) if isinstance(v, (Path, torch.dtype)) else v for k, v in vars(args).items()}


def start_processes(args: argparse.Namespace) -> tuple[torch.device, World]:
    """This process's device and place among torchrun's processes, from --device; sets args.amp
    (the encoder's autocast dtype, from --precision)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.amp = torch.bfloat16 if args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda") \
        else None
    world = init_distributed(device.type)
    return (torch.device("cuda", world.local_rank) if device.type == "cuda" else device), world


def open_encoder(args: argparse.Namespace, device: torch.device, world: World) -> VideoEncoder:
    """The frozen encoder of --checkpoint (--random-init: random weights of its shape) on `device`, with
    attention configured as the training run measured it."""
    from ivn_fast.export import load_encoder

    log.info(configure_attention("auto", device, is_main=world.is_main, share=broadcast_object))
    return load_encoder(args.checkpoint, device, random_init=args.random_init, seed=args.seed)


def clip_shape(args: argparse.Namespace, encoder: VideoEncoder) -> tuple[int, int]:
    """Frames and side of the clips, from --frames and --size (0: the encoder's own)."""
    frames = args.frames or encoder.grid[0]
    size = args.size or encoder.grid[1] * encoder.cfg.patch_size
    if size % encoder.cfg.patch_size:
        raise ValueError(f"--size {size} is not a multiple of the patch size {encoder.cfg.patch_size}")
    return frames, size


def load_tasks(args: argparse.Namespace, encoder: VideoEncoder, flip: bool = True) -> tuple[dict[str, Task], int, int]:
    """The training and validation tasks of --train-list / --val-list at the clip shape (clip_shape);
    their labels must be the same kind."""
    frames, size = clip_shape(args, encoder)
    tasks = {split: load_task(spec, split, args, frames, size, flip=flip)
             for split, spec in (("train", args.train_list), ("val", args.val_list))}
    if tasks["train"].label != tasks["val"].label:
        raise ValueError(f"--train-list labels {tasks['train'].label!r} but --val-list labels "
                         f"{tasks['val'].label!r}")
    return tasks, frames, size


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        device, world = start_processes(args)
        encoder = open_encoder(args, device, world)
        tasks, frames, size = load_tasks(args, encoder)
        _check_dense(args, tasks)
        if world.size > 1 and (args.features == "memory" or args.cache_dir):
            raise ValueError("several processes share a probe through streamed features (--features stream or "
                             "auto, no --cache-dir)")
    except (ValueError, FileNotFoundError) as e:
        print(f"ivn_fast.probe: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        run = {"track": track, "depth": depth}.get(tasks["train"].label, classify)
        record = run(args, encoder, tasks, device, world)
    except ValueError as e:  # a task with nothing to learn from, found once its clips were read
        print(f"ivn_fast.probe: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if not world.is_main:
        return 0
    summary = record.pop("summary")
    record.update({"clips": {split: len(t.data) for split, t in tasks.items()}, "frames": frames, "size": size,
                   "views": {"segments": args.segments, "crops": args.crops},
                   "data": {s: t.spec for s, t in tasks.items()}})
    report(args, record, summary, start)
    return 0


def report(args: argparse.Namespace, record: dict, summary: str, start: float) -> None:
    """Print the summary with the seconds since `start`; with --json, write the record with them and the
    settings."""
    record.update({"seconds": round(time.perf_counter() - start, 1), "settings": settings(args)})
    print(f"{summary} in {record['seconds']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
