"""Video-text evaluation of a frozen encoder by LiT (locked-image tuning): the paper's zero-shot
retrieval and zero-shot classification.

    python -m ivn_fast.lit --checkpoint CKPT --train-list synthetic:captions --val-list synthetic:captions \\
        --zero-shot-list synthetic:direction [--plot PNG] [--json OUT]
    torchrun --nproc-per-node 8 -m ivn_fast.lit --checkpoint CKPT --text-model /models/mobileclip-b-text \\
        --train-list webvid.jsonl,cc3m.jsonl --val-list msrvtt_1k_test.json --root /data \\
        --zero-shot-list k400_val.txt --class-names k400_classes.txt --epochs 5 --batch 4096

The encoder stays frozen. A video head (the attentive probe's block, or a LayerNorm of the mean
token, then a projection into the joint space) and a text tower (`--text-model`: a transformers
text model and tokenizer saved in a local directory, such as MobileCLIP-B's text encoder in CLIP's
layout, which the paper starts from; `builtin`: a small random CLIP-style transformer over the
synthetic captions' words and the run's own) train with CLIP's symmetric contrastive loss and a learned temperature.
The paper does not say how the frozen tokens are pooled; the head here is ours.

Caption lists are JSON or JSONL records of a video and its caption(s) (`ivn_fast.data.captions`);
several comma-separated lists are read as one. `synthetic:captions[:CLIPS]` captions the built-in
clips by their shape, colour, size, direction and speed (training draws one of three phrasings per
clip and epoch; validation uses the first).

After each epoch the validation videos and captions are embedded (a video's views averaged) and
ranked both ways: text-to-video and video-to-text recall at 1, 5 and 10 and the median rank (a
video with several captions counts as found by any of them). `--zero-shot-list` (a labelled video
list, or `synthetic:LABEL`) is classified at the end without training on it: each class name goes
through the prompts (`--prompt`, averaged; on the synthetic set, by default, the captions' first
phrasing with every value of the words the label leaves open) and each clip takes the nearest
class, its views' softmax averaged.

Training clips take no horizontal flip unless `--flip` (captions may say left or right). Under
torchrun the tokens are streamed, every process encodes its share of each batch, and the loss
contrasts each process's pairs against the whole batch's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ivn_fast.data.captions import read_captions, synthetic_captions, synthetic_prompts, vocabulary
from ivn_fast.data.lists import ListError
from ivn_fast.data.synthetic import LABELS
from ivn_fast.data.transforms import denormalize
from ivn_fast.features import Source, gather_rows
from ivn_fast.fit import Batches, fit
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.probe import PROBE_KINDS, build_probe
from ivn_fast.models.text import TextTower, builtin_text_model, load_text_model
from ivn_fast.probe import (SEEDS, SyntheticViews, Task, add_clip_options, add_device_options, add_feature_options,
                            add_fit_options, add_input_options, check_at_least_one, clip_shape, load_task,
                            open_encoder, parse_synthetic, report, sources, start_processes, topk_accuracy,
                            video_task)
from ivn_fast.train.distributed import World, data_parallel, gather_keeping_grad, mean_over_ranks, shutdown
from ivn_fast.train.optim import param_groups
from ivn_fast.viz import save_clip_grid, save_curves

log = logging.getLogger("ivn_fast")

# LiT's recipe at toy scale: AdamW, cosine; CLIP's initial temperature 0.07 and its cap of 100 on the scale
LR, WEIGHT_DECAY, BATCH, EPOCHS = 5e-4, 0.05, 64, 20
INIT_TEMPERATURE, MAX_SCALE = 0.07, 100.0
LIST_PROMPT = "a video of {}."
CAPTION_LISTS = "synthetic:captions[:CLIPS] or caption files (.json / .jsonl, comma-separated)"
RECALLS = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class ZeroShot:
    """The zero-shot task, its class names and its prompts."""

    task: Task
    names: list[str]
    prompts: list[str]

    def texts(self) -> list[str]:
        """Every prompt of every class, class by class."""
        return [p.format(n) for n in self.names for p in self.prompts]


@dataclasses.dataclass(frozen=True)
class Captioned:
    """A split of captioned clips: the task (its items' task.label key holds the clip's caption row) and
    every row's captions."""

    task: Task
    captions: list[list[str]]


def caption_task(spec: str, split: str, args: argparse.Namespace, frames: int, size: int) -> Captioned:
    """'synthetic:captions[:CLIPS]' or caption files (comma-separated)."""
    views = {"segments": args.segments, "crops": args.crops}
    if spec.split(":")[0] == "synthetic":
        _, clips = parse_synthetic(spec, split, ("captions",))
        train = split == "train"
        data = SyntheticViews(clips, frames, size, seed=SEEDS[split], train=train, **views)
        captions = [synthetic_captions(data.clips, i) for i in range(clips)]
        described = {"data": "synthetic captions", "clips": clips, "seed": SEEDS[split], "frames": frames,
                     "size": size, "train": train, **views}
        return Captioned(Task(data, "index", 0, described), captions if train else [c[:1] for c in captions])
    try:
        table = read_captions(spec.split(","), args.root)
    except ListError as e:
        raise ValueError(f"--{split}-list: {e}") from None
    task = video_task(table.videos, split, "label", 0, {"data": "captions", "lists": spec.split(",")},
                      frames=frames, size=size, sampling=args.sampling, stride=args.stride, seed=args.seed,
                      flip=args.flip, **views)
    return Captioned(task, table.captions)


class VideoEmbedding(nn.Module):
    """Frozen tokens [B, S, C] -> L2-normalised [B, dim]: a probe head whose classes are the joint space."""

    def __init__(self, head: str, width: int, dim: int, num_heads: int):
        super().__init__()
        self.head = build_probe(head, width, dim, num_heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(tokens), dim=-1)


class LiT(nn.Module):
    """The trained parts: the video head, the text tower and the temperature."""

    def __init__(self, video: VideoEmbedding, text: TextTower):
        super().__init__()
        self.video, self.text = video, text
        self.log_scale = nn.Parameter(torch.tensor(-np.log(INIT_TEMPERATURE), dtype=torch.float32))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=float(np.log(MAX_SCALE))).exp()

    def forward(self, tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.video(tokens), self.text(ids, mask), self.scale


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the whole batch: every process's pairs [b, D] (pair i matches i).
    Each process computes the whole batch's loss with gradients through its own pairs only; the loss
    keeps its value and takes W times its gradient, so that DDP's mean over the W processes is the
    whole batch's gradient. The temperature's gradient comes from the first process alone (zero on the
    others), so the mean counts it once."""
    all_video, all_text = gather_keeping_grad(torch.cat([video, text], -1)).split(video.shape[-1], -1)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world > 1:
        first = float(dist.get_rank() == 0)
        scale = scale * first + scale.detach() * (1 - first)
    logits = scale * all_video @ all_text.T
    target = torch.arange(len(logits), device=logits.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss + (world - 1) * (loss - loss.detach())


def draw_caption(options: Sequence[str], seed: int, epoch: int, row: int) -> str:
    """One of a clip's captions, a pure function of (seed, epoch, row)."""
    return options[int(np.random.default_rng([seed, epoch, row]).integers(len(options)))]


def with_captions(batches: Batches, captions: list[list[str]], text: TextTower, seed: int) -> Batches:
    """Batches of (tokens, rows) as (tokens, caption ids, caption mask), one caption drawn per clip and epoch."""

    def epoch(e: int) -> Iterator[tuple[torch.Tensor, ...]]:
        for tokens, rows in batches(e):
            ids, mask = text.tokenize([draw_caption(captions[r], seed, e, r) for r in rows.tolist()])
            yield tokens, ids, mask

    return epoch


@torch.no_grad()
def embed_videos(video: nn.Module, source: Source, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [N, V, D] of every view of every clip (CPU, float32), and the clips' labels [N]."""
    video.eval()
    out, labels = [], []
    for tokens, y in source.batches():
        out.append(video(tokens.flatten(0, 1).to(device)).float().cpu().unflatten(0, tokens.shape[:2]))
        labels.append(y)
    return gather_rows(torch.cat(out), source.world), gather_rows(torch.cat(labels), source.world)


@torch.no_grad()
def embed_texts(text: TextTower, texts: Sequence[str], batch: int, device: torch.device) -> torch.Tensor:
    text.eval()
    out = []
    for i in range(0, len(texts), batch):
        ids, mask = text.tokenize(texts[i:i + batch])
        out.append(text(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)


def retrieval_metrics(video: torch.Tensor, text: torch.Tensor, owner: torch.Tensor, chunk: int = 1024) -> dict:
    """Recall at 1, 5, 10 and median rank, text to video and video to text, of embeddings video [V, D]
    and text [M, D] where caption m belongs to video owner[m]; a video is found by text when any of its
    captions is (ties count in its favour)."""
    sim = text @ video.T  # [M, V]
    own = sim.gather(1, owner[:, None])[:, 0]
    t2v = (sim > own[:, None]).sum(1)
    each = torch.cat([(sim[:, owner[i:i + chunk]].T > own[i:i + chunk, None]).sum(1)
                      for i in range(0, len(owner), chunk)])  # caption m's rank among all captions, for its video
    v2t = torch.full((len(video),), len(owner), dtype=each.dtype).scatter_reduce(0, owner, each, "amin")
    out = {}
    for name, ranks in (("t2v", t2v), ("v2t", v2t)):
        out.update({f"{name}_r{k}": (ranks < k).float().mean().item() for k in RECALLS})
        out[f"{name}_medr"] = ranks.float().add(1).median().item()
    out["mean_r1"] = (out["t2v_r1"] + out["v2t_r1"]) / 2
    return out


def retrieval(model: LiT, source: Source, captions: list[list[str]], batch: int,
              device: torch.device) -> tuple[dict, torch.Tensor, list[int]]:
    """The validation split ranked both ways; and the videos' embeddings [V, D] and caption rows. A row
    seen twice (a bad video replaced by another) counts once."""
    views, rows = embed_videos(model.video, source, device)
    first: dict[int, int] = {}
    for i, r in enumerate(rows.tolist()):
        first.setdefault(r, i)
    kept = list(first)
    video = F.normalize(views[list(first.values())].mean(1), dim=-1)
    texts = [c for r in kept for c in captions[r]]
    owner = torch.tensor([j for j, r in enumerate(kept) for _ in captions[r]])
    metrics = retrieval_metrics(video, embed_texts(model.text, texts, batch, device), owner)
    return {**metrics, "videos": len(kept), "captions": len(texts)}, video, kept


def zero_shot(model: LiT, source: Source, zero: ZeroShot, batch: int, device: torch.device) -> dict:
    """Top-1 / top-5 of the nearest class text (each class's prompts averaged), views' softmax averaged."""
    names = zero.names
    per_class = embed_texts(model.text, zero.texts(), batch, device)
    classes = F.normalize(per_class.view(len(names), len(zero.prompts), -1).mean(1), dim=-1)
    views, labels = embed_videos(model.video, source, device)
    probs = (model.scale.detach().cpu() * views @ classes.T).softmax(-1).mean(1)
    return {"top1": topk_accuracy(probs, labels, 1), "top5": topk_accuracy(probs, labels, 5), "classes": len(names)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.lit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser, CAPTION_LISTS)
    parser.add_argument("--text-model", default="builtin",
                        help="local directory of a transformers text model and its tokenizer (of a CLIP or SigLIP "
                             "checkpoint, its text side), or builtin: a small random one over the synthetic words "
                             "and the run's own")
    parser.add_argument("--head", default="attentive", choices=PROBE_KINDS,
                        help="video head: the attentive probe's block, or linear (LayerNorm of the mean token)")
    parser.add_argument("--embed-dim", type=int, default=0, help="joint embedding width (0: the encoder's width)")
    parser.add_argument("--heads", type=int, default=0, help="attention heads of the attentive head (0: the encoder's)")
    add_fit_options(parser, "the heads and text tower (--batch clips and captions: one contrastive batch)",
                    epochs=EPOCHS, batch=BATCH, lr=LR, weight_decay=WEIGHT_DECAY)
    parser.add_argument("--zero-shot-list", default="",
                        help="classify these clips zero-shot after training: synthetic:LABEL[:CLIPS] (LABEL shape, "
                             "direction or speed) or a labelled video list")
    parser.add_argument("--class-names", type=Path,
                        help="the zero-shot list's class names, one per line (line i names label i)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="zero-shot prompt with {} for the class name; repeat to average several (default: "
                             f"{LIST_PROMPT!r} for lists; for a synthetic label, the first caption phrasing with "
                             "every value of the other words, averaged)")
    parser.add_argument("--segments", type=int, default=1, help="temporal segments per validation clip")
    parser.add_argument("--crops", type=int, default=1, help="spatial crops per segment of a validation clip")
    add_clip_options(parser)
    parser.add_argument("--flip", action="store_true", help="mirror training clips at random (off: captions may "
                                                            "name left and right)")
    add_feature_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the heads, the text tower and the data order")
    add_device_options(parser, "the frozen encoder's forward and the training forward of the heads and the text "
                               "tower (their weights, optimiser and the loss stay float32)")
    parser.add_argument("--json", type=Path, help="write the result, with the settings it ran, here")
    parser.add_argument("--plot", type=Path,
                        help="draw the curves here (PNG): validation mean R@1 and training loss per epoch; and "
                             "PLOT-retrieval.png, the first validation captions with their clip and the three "
                             "clips retrieved for them")
    return parser


def class_names(args: argparse.Namespace, task: Task) -> list[str]:
    """Names of the zero-shot task's classes: the synthetic set's, or --class-names (one per label)."""
    if task.label in LABELS:
        return list(LABELS[task.label])
    if args.class_names is None:
        raise ValueError("--zero-shot-list of videos needs --class-names (one class name per line)")
    try:
        names = [line.strip() for line in args.class_names.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise ValueError(f"--class-names: {e}") from None
    if len(names) < task.num_classes:
        raise ValueError(f"--class-names {args.class_names} names {len(names)} classes; the list has labels up to "
                         f"{task.num_classes - 1}")
    return names


def prompts(args: argparse.Namespace, task: Task) -> list[str]:
    chosen = args.prompt or (synthetic_prompts(task.label) if task.label in LABELS else [LIST_PROMPT])
    for p in chosen:
        if p.count("{}") != 1:
            raise ValueError(f"--prompt {p!r}: a prompt holds the class name as one {{}}")
    return chosen


def text_tower(args: argparse.Namespace, dim: int, texts: Iterable[str]) -> TextTower:
    """--text-model's tower; the built-in one's words are the synthetic ones and those of `texts`."""
    torch.manual_seed(args.seed)
    if args.text_model == "builtin":
        return TextTower(*builtin_text_model(vocabulary(texts)), dim)
    return TextTower(*load_text_model(args.text_model), dim)


def train_lit(args: argparse.Namespace, encoder: VideoEncoder, splits: dict[str, Captioned],
              zero: ZeroShot | None, device: torch.device, world: World) -> dict:
    """Train the video head and text tower on the training pairs; validation retrieval after each epoch,
    zero-shot classification at the end; with --plot, the curves and the retrieval picture."""
    tasks = {split: c.task for split, c in splits.items()} | ({"zero-shot": zero.task} if zero else {})
    source, mode, _ = sources(args, encoder, tasks, device, world, pool=args.head == "linear")
    dim = args.embed_dim or encoder.cfg.embed_dim
    torch.manual_seed(args.seed)
    video = VideoEmbedding(args.head, encoder.cfg.embed_dim, dim, args.heads or encoder.cfg.num_heads)
    texts = [c for split in splits.values() for captions in split.captions for c in captions]
    model = LiT(video, text_tower(args, dim, texts + (zero.texts() if zero else []))).to(device)
    train = source["train"]
    batches = with_captions(train.epochs(args.batch, args.seed), splits["train"].captions, model.text, args.seed)
    val = splits["val"].captions

    def loss(m: nn.Module, tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=args.amp or torch.float32, enabled=args.amp is not None):
            video, text, scale = m(tokens, ids, mask)
        return contrastive_loss(video.float(), text.float(), scale)

    ranks = []  # each epoch's retrieval: the last one is the result

    def validate(_: nn.Module) -> float:
        ranks.append(retrieval(model, source["val"], val, args.batch, device))
        return ranks[-1][0]["mean_r1"]

    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    curve, losses = fit(data_parallel(model, world), batches, train.steps(args.batch), loss, validate,
                        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, device=device, optimizer=opt)
    ranked, video_emb, rows = ranks[-1]
    record = {"curve": curve, "train_loss": mean_over_ranks(torch.tensor(losses, device=device)).tolist(),
              "retrieval": ranked, "features": mode, "temperature": 1 / model.scale.item()}
    if zero is not None:
        record["zero_shot"] = {"task": zero.task.label, **zero_shot(model, source["zero-shot"], zero, args.batch,
                                                                    device)}
    if args.plot and world.is_main:
        save_curves({"validation mean R@1": {"text and video": curve},
                     "training loss": {"contrastive": record["train_loss"]}}, args.plot,
                    f"LiT, {'random encoder' if args.random_init else args.checkpoint}",
                    baseline={"validation mean R@1": 1 / ranked["videos"]})
        save_retrieval_grid(model, video_emb, rows, splits["val"], args.plot.with_name(
            f"{args.plot.stem}-retrieval.png"), device)
    return record


def save_retrieval_grid(model: LiT, video: torch.Tensor, rows: list[int], val: Captioned, path: Path,
                        device: torch.device, queries: int = 4, top: int = 3) -> Path:
    """The first validation captions, each with its own clip and the `top` clips it retrieves (first
    view); video [V, D] are the ranked videos' embeddings, rows their caption rows (= dataset items)."""
    n = min(queries, len(rows))
    texts = [val.captions[r][0] for r in rows[:n]]
    found = (embed_texts(model.text, texts, n, device) @ video.T).topk(min(top, len(rows)), dim=1).indices

    def clip(row: int) -> torch.Tensor:
        v = val.task.data[row]["video"]
        return denormalize(v if v.dim() == 4 else v[0], channel_dim=0)

    grid = {"its clip": torch.stack([clip(r) for r in rows[:n]])}
    for k in range(found.shape[1]):
        grid[f"retrieved {k + 1}"] = torch.stack([clip(rows[int(found[i, k])]) for i in range(n)])
    return save_clip_grid(grid, path, clips=n, titles=[f'"{t}"' for t in texts])


def summarise(args: argparse.Namespace, record: dict) -> str:
    r = record["retrieval"]
    text = (f"LiT ({args.head} head, text model {args.text_model}{', random encoder' if args.random_init else ''}): "
            f"text-to-video R@1 {r['t2v_r1']:.3f} R@5 {r['t2v_r5']:.3f} R@10 {r['t2v_r10']:.3f}, video-to-text "
            f"R@1 {r['v2t_r1']:.3f} R@5 {r['v2t_r5']:.3f} R@10 {r['v2t_r10']:.3f} ({r['videos']} videos, "
            f"{r['captions']} captions; chance R@1 {1 / r['videos']:.3f})")
    if "zero_shot" in record:
        z = record["zero_shot"]
        text += (f"; zero-shot {z['task']} top-1 {z['top1']:.3f}, top-5 {z['top5']:.3f} "
                 f"(chance {1 / z['classes']:.3f})")
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_at_least_one(args, ("epochs", "batch", "segments", "crops", "stride"))
        if args.embed_dim < 0:
            raise ValueError(f"--embed-dim must be >= 0, got {args.embed_dim}")
        if args.text_model != "builtin" and not Path(args.text_model).is_dir():
            raise ValueError(f"--text-model {args.text_model}: not a directory (save_pretrained writes one)")
        device, world = start_processes(args)
        encoder = open_encoder(args, device, world)
        frames, size = clip_shape(args, encoder)
        splits = {split: caption_task(spec, split, args, frames, size)
                  for split, spec in (("train", args.train_list), ("val", args.val_list))}
        zero = None
        if args.zero_shot_list:
            task = load_task(args.zero_shot_list, "zero-shot", args, frames, size)
            if task.num_classes == 0:
                raise ValueError(f"--zero-shot-list {args.zero_shot_list}: not a classification task")
            zero = ZeroShot(task, class_names(args, task), prompts(args, task))
    except (ValueError, FileNotFoundError) as e:
        print(f"ivn_fast.lit: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        record = train_lit(args, encoder, splits, zero, device, world)
    finally:
        shutdown()
    if not world.is_main:
        return 0
    record.update({"frames": frames, "size": size, "data": {s: c.task.spec for s, c in splits.items()} |
                   ({"zero-shot": zero.task.spec} if zero else {})})
    report(args, record, summarise(args, record), start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
