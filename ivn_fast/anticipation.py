"""Action anticipation probe: the paper's EPIC-KITCHENS-100 evaluation (after V-JEPA 2's). From a
context clip that ends `--anticipation` seconds before an action starts, predict the action's
verb, noun and (verb, noun) pair; scored by mean class recall at 5.

    python -m ivn_fast.anticipation --checkpoint RUN/checkpoints/step_XXXXXXXX \\
        --train-list synthetic:anticipation --val-list synthetic:anticipation --plot anticipation.png
    torchrun --nproc-per-node 8 -m ivn_fast.anticipation --checkpoint CKPT \\
        --train-list EPIC_100_train.csv --val-list EPIC_100_validation.csv --root /data/EPIC-KITCHENS-100

The encoder and the predictor stay frozen, as pretraining left them. The clip's token grid is the
encoder's training grid (`--frames`): its first frames are the context, sampled at `--fps`, and
the last round(anticipation x fps) frames are the future between the context and the action. The
encoder sees the context tokens only, at their places in the grid, as it saw visible tokens in
pretraining; the predictor fills in the future frames' tokens as it filled in masked ones. Its
tokens, projected to the encoder's width, follow the encoder's, and three learned queries of one
attentive block read them all, one per classifier (verb, noun, action), trained with the sigmoid
focal loss (V-JEPA 2's) summed over the three. `--without-predictor` reads the context tokens alone:
the ablation the predictor is judged by. `--random-init` gives both random weights.

Mean class recall at 5 (EPIC-KITCHENS-100's anticipation metric): the share of each class's
validation clips whose true class is among the five highest scores, averaged over the classes
that occur in validation. Action classes are the (verb, noun) pairs of the training clips; a
validation action outside them counts for its verb and noun only.

Data: EPIC-KITCHENS-100's annotation CSVs (videos found at `--root` / `--video-pattern`), or the
built-in set, `synthetic:anticipation[:CLIPS]`, where the verb is the direction of motion and the
noun the shape. One view per clip: a multi-scale crop (and flip) in training, the centre crop in
validation.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.data.anticipation import (TARGET_KEYS, VIDEO_PATTERN, AnticipationClips, SyntheticAnticipation,
                                        class_counts, read_segments)
from ivn_fast.export import load_predictor
from ivn_fast.features import Source, gather_rows
from ivn_fast.fit import fit
from ivn_fast.models.encoder import EncoderOutput, VideoEncoder
from ivn_fast.models.predictor import Predictor
from ivn_fast.models.probe import AnticipationProbe
from ivn_fast.probe import (BATCH, EPOCHS, LR, SEEDS, WEIGHT_DECAY, Task, add_device_options, add_feature_options,
                            add_fit_options, add_input_options, check_at_least_one, clip_shape, open_encoder,
                            parse_synthetic, report, sources, start_processes)
from ivn_fast.train.distributed import data_parallel, mean_over_ranks, shutdown
from ivn_fast.viz import save_curves

log = logging.getLogger("ivn_fast")

HEADS = ("verb", "noun", "action")


class Anticipator(nn.Module):
    """Frozen features of a context clip [B, 3, T, H, W]: the encoder's tokens of its T frames, placed at
    the start of a grid of T + `future` frames, then the predictor's tokens of the `future` frames,
    each zero-padded to the wider of the two widths (`width`)."""

    def __init__(self, encoder: VideoEncoder, predictor: Predictor | None, future: int):
        super().__init__()
        self.encoder, self.predictor, self.future = encoder, predictor, future
        self.cfg = encoder.cfg

    @property
    def width(self) -> int:
        return max(self.cfg.embed_dim, self.predictor.width if self.predictor is not None else 0)

    def forward(self, video: torch.Tensor) -> EncoderOutput:
        b, _, t, height, width = video.shape
        p = self.cfg.patch_size
        grid = (t + self.future, height // p, width // p)
        k = t * grid[1] * grid[2]
        context = torch.arange(k, device=video.device).repeat(b, 1)
        # the future frames' pixels are zeros the encoder never reads: only the context tokens are visible
        tokens = self.encoder(F.pad(video, (0, 0, 0, 0, 0, self.future)), context).tokens
        parts = [tokens]
        if self.predictor is not None:
            parts.append(self.predictor(tokens, context, grid)[:, k:])
        return EncoderOutput(torch.cat([F.pad(x, (0, self.width - x.shape[-1])) for x in parts], 1), [], grid)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss, summed over classes, averaged over the rows with a label (>= 0)."""
    keep = labels >= 0
    logits = logits[keep].float()
    target = F.one_hot(labels[keep], logits.shape[-1]).float()
    p = logits.sigmoid()
    p_true = p * target + (1 - p) * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * (1 - p_true) ** gamma
    loss = weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return loss.sum() / keep.sum().clamp(min=1)


def mean_class_recall(hits: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over the classes present in `labels` (>= 0) of the share of their rows with a hit."""
    keep = labels >= 0
    hits, labels = hits[keep].float(), labels[keep]
    classes, index = labels.unique(return_inverse=True)
    if not len(classes):
        return 0.0
    per_class = torch.zeros(len(classes)).index_add_(0, index, hits) / torch.bincount(index, minlength=len(classes))
    return per_class.mean().item()


@torch.no_grad()
def score(probe: nn.Module, source: Source, device: torch.device) -> dict[str, float]:
    """Mean class recall at 5 and top-1 accuracy of each head over every validation clip."""
    probe.eval()
    rows = []
    for tokens, *targets in source.batches():
        labels = torch.stack([torch.as_tensor(t) for t in targets], 1)
        logits = probe(tokens[:, 0].to(device))
        top5 = torch.stack([(lg.topk(min(5, lg.shape[-1]), -1).indices.cpu() == labels[:, i, None]).any(-1)
                            for i, lg in enumerate(logits)], 1)
        top1 = torch.stack([lg.argmax(-1).cpu() == labels[:, i] for i, lg in enumerate(logits)], 1)
        rows.append(torch.stack([labels, top5.long(), top1.long()], 1))
    labels, top5, top1 = gather_rows(torch.cat(rows), source.world).unbind(1)
    out = {}
    for i, head in enumerate(HEADS):
        scored = labels[:, i] >= 0
        out[f"{head}_recall5"] = mean_class_recall(top5[:, i], labels[:, i])
        out[f"{head}_top1"] = top1[scored, i].float().mean().item() if scored.any() else 0.0
    return out


def train_anticipation(train: Source, val: Source, *, dim: int, future_dim: int, context: int,
                       classes: tuple[int, int, int], num_heads: int, epochs: int, batch: int, lr: float,
                       weight_decay: float, seed: int, device: torch.device) -> dict:
    """Train the readout on kept or streamed features; the curve is the action's mean class recall at 5
    after each epoch, the result the last epoch's scores (`scores`: every epoch's)."""
    torch.manual_seed(seed)
    probe = AnticipationProbe(dim, future_dim, context, classes, num_heads).to(device)

    def loss(p: nn.Module, x: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        return sum(focal_loss(logits, y) for logits, y in zip(p(x), labels))

    scores = []

    def validate(_: nn.Module) -> float:
        scores.append(score(probe, val, device))
        return scores[-1]["action_recall5"]

    curve, losses = fit(data_parallel(probe, train.world), train.epochs(batch, seed), train.steps(batch), loss,
                        validate, epochs=epochs, lr=lr, weight_decay=weight_decay, device=device)
    losses = mean_over_ranks(torch.tensor(losses, device=device)).tolist()
    return {"curve": curve, "train_loss": losses, **scores[-1], "scores": scores}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.anticipation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser, "synthetic:anticipation[:CLIPS] or an EPIC-KITCHENS-100 annotation CSV "
                              "(--checkpoint must be a training checkpoint: it holds the predictor)")
    parser.add_argument("--root", default="", help="the folder the CSV's videos are found in (--video-pattern)")
    parser.add_argument("--video-pattern", default=VIDEO_PATTERN,
                        help="a video's path under --root, from the CSV's participant_id and video_id")
    parser.add_argument("--frames", type=int, default=0,
                        help="frames of the token grid, context and future (0: the encoder's training clip)")
    parser.add_argument("--size", type=int, default=0, help="frame side in pixels (0: the encoder's training clip)")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second of the context clip")
    parser.add_argument("--anticipation", type=float, default=1.0,
                        help="seconds between the end of the context and the start of the action (the "
                             "benchmark's 1 s); round(anticipation x fps) future frames of the grid lie there")
    parser.add_argument("--without-predictor", action="store_true",
                        help="read the encoder's context tokens alone (the ablation)")
    parser.add_argument("--heads", type=int, default=0, help="attention heads of the readout (0: the encoder's)")
    add_fit_options(parser, "the readout", epochs=EPOCHS, batch=BATCH, lr=LR, weight_decay=WEIGHT_DECAY)
    add_feature_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the readout's initialisation and data order")
    add_device_options(parser, "the frozen encoder's and predictor's forward; the readout trains in float32")
    parser.add_argument("--json", type=Path, help="write the result, with the settings it ran, here")
    parser.add_argument("--plot", type=Path, help="draw the curves here (PNG): each head's validation mean class "
                                                  "recall at 5 and the training loss per epoch")
    return parser


def load_split(spec: str, split: str, args: argparse.Namespace, frames: int, future: int, size: int) -> Task:
    """One split's context clips of `frames` frames (the grid's `future` frames after them are predicted)."""
    described = {"frames": frames + future, "size": size, "fps": args.fps, "anticipation": args.anticipation}
    if spec.split(":")[0] == "synthetic":
        _, clips = parse_synthetic(spec, split, ("anticipation",))
        data = SyntheticAnticipation(clips, frames, future, size, seed=SEEDS[split])
        return Task(data, "anticipation", 0, {"data": "synthetic", "clips": clips, "seed": SEEDS[split], **described})
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"--{split}-list {spec}: no such file")
    data = AnticipationClips(read_segments(spec, root=args.root, pattern=args.video_pattern), frames=frames,
                             size=size, fps=args.fps, anticipation=args.anticipation, train=split == "train",
                             seed=args.seed)
    return Task(data, "anticipation", 0, {"data": "epic-kitchens", "list": spec, "root": args.root, **described})


def run(args: argparse.Namespace) -> tuple[dict, str]:
    """Open the models and data, train the readout; the record and its summary line."""
    device, world = start_processes(args)
    encoder = open_encoder(args, device, world)
    predictor = None if args.without_predictor else load_predictor(args.checkpoint, device,
                                                                   random_init=args.random_init, seed=args.seed)
    frames, size = clip_shape(args, encoder)
    future = round(args.anticipation * args.fps)
    if not 1 <= future < frames:
        raise ValueError(f"--anticipation {args.anticipation} s at --fps {args.fps} puts {future} of the grid's "
                         f"{frames} frames in the future: it must be 1 to {frames - 1}")
    if world.size > 1 and args.features == "memory":
        raise ValueError("several processes share the readout through streamed features (--features stream or auto)")
    tasks = {split: load_split(spec, split, args, frames - future, future, size)
             for split, spec in (("train", args.train_list), ("val", args.val_list))}
    train_data, val_data = tasks["train"].data, tasks["val"].data
    val_data.actions = train_data.actions
    unseen = sum(val_data.actions.index(*pair) < 0 for pair in val_data.pairs)
    if unseen and world.is_main:
        log.warning("%d of %d validation actions are (verb, noun) pairs no training clip has: scored for verb and "
                    "noun only", unseen, len(val_data))
    classes = (*class_counts(train_data, val_data), len(train_data.actions))
    model = Anticipator(encoder, predictor, future)
    source, mode, _ = sources(args, model, tasks, device, world, keys=TARGET_KEYS)
    context = encoder.num_cls + (frames - future) * (size // encoder.cfg.patch_size) ** 2
    result = train_anticipation(source["train"], source["val"], dim=encoder.cfg.embed_dim,
                                future_dim=predictor.width if predictor is not None else 0, context=context,
                                classes=classes, num_heads=args.heads or encoder.cfg.num_heads, epochs=args.epochs,
                                batch=args.batch, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                                device=device)
    what = "encoder only" if predictor is None else "encoder + predictor"
    summary = (f"anticipation probe ({what}{', random weights' if args.random_init else ''}, {future} of {frames} "
               f"frames ahead): mean class recall@5 verb {result['verb_recall5']:.3f}, noun "
               f"{result['noun_recall5']:.3f}, action {result['action_recall5']:.3f}")
    if args.plot and world.is_main:
        curves = {head: [s[f"{head}_recall5"] for s in result["scores"]] for head in HEADS}
        save_curves({"validation mean class recall@5": curves, "training loss": {"focal": result["train_loss"]}},
                    args.plot, f"anticipation probe ({what}), "
                               f"{'random weights' if args.random_init else args.checkpoint}")
    record = {"task": "anticipation", "classes": dict(zip(HEADS, classes)), "future_frames": future, "frames": frames,
              "size": size, "predictor": predictor is not None, **result, "features": mode,
              "clips": {split: len(t.data) for split, t in tasks.items()}, "unseen_val_actions": unseen,
              "data": {s: t.spec for s, t in tasks.items()}}
    return record, summary if world.is_main else ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        check_at_least_one(args, ("epochs", "batch"))
        if not (args.fps > 0 and args.anticipation > 0):
            raise ValueError(f"--fps and --anticipation must be > 0, got {args.fps} and {args.anticipation}")
        record, summary = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ivn_fast.anticipation: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if summary:
        report(args, record, summary, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
