"""The paper's Stage 1 ablation (Table 1a) and Stage 2 in small, on the built-in synthetic set.

    python -m ivn_fast.experiments.toy_ablation [--out runs/toy_ablation] [--seeds 0 1 2] [--quick]

For every seed the tiny preset is pretrained under each variant for the same number of optimiser
steps and with the same seed (model init, data order, masks), then each frozen encoder is probed
(V-JEPA's attentive probe) for shape (appearance, the K400 stand-in) and motion direction
(dynamics, the SSv2 stand-in), beside a random-init encoder of the same shape (and config):

  (a) pixel reconstruction only, linear decoder head
  (b) alignment to the teacher only
  (c) reconstruction + alignment, linear decoder head
  (d) reconstruction + alignment, diffusion decoder (the default)
  (e) (d)'s run up to its last `stage2_steps` steps, then Stage 2 for those steps: the same
      budget, with the Stage 1 learning rate not yet annealed when Stage 2 starts

Writes OUT/toy_ablation.md (mean +- sample standard deviation over seeds), OUT/toy_ablation.png
(grouped bars with those error bars and one dot per seed) and OUT/toy_ablation.json (every
number, the settings and the timings); the pretraining runs stay under OUT/seed_S/VARIANT.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ivn_fast.config import build_config, validate
from ivn_fast.data.synthetic import LABELS
from ivn_fast.export import load_encoder
from ivn_fast.features import Kept, encode
from ivn_fast.models.attention_table import configure as configure_attention
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.probe import BATCH, LR, SEEDS, WEIGHT_DECAY, SyntheticViews, train_probe
from ivn_fast.train.checkpoint import checkpoint_dir, latest_checkpoint
from ivn_fast.train.distributed import World
from ivn_fast.train.trainer import Trainer, resolve_device
from ivn_kernels import set_kernels

TASKS = ("shape", "direction")
PRESET = "tiny"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    overrides: dict | None  # Stage 1 config tree over the preset; None: no pretraining (random init)
    paper: str  # the matching row of the paper (ViT-B, linear probe on K400 / SSv2)


VARIANTS = (
    Variant("random", "random-init encoder", None, "-"),
    Variant("recon_linear", "(a) pixel recon only, linear head",
            {"loss": {"terms": "recon"}, "model": {"decoder": {"kind": "linear"}}}, "47.2 / 28.1"),
    Variant("align", "(b) alignment only", {"loss": {"terms": "align"}}, "70.7 / 32.1"),
    Variant("recon_align_linear", "(c) recon + align, linear head",
            {"model": {"decoder": {"kind": "linear"}}}, "69.8 / 31.8"),
    Variant("recon_align_diffusion", "(d) recon + align, diffusion decoder", {}, "74.2 / 35.4"),
    Variant("stage2", "(e) (d), then Stage 2", {}, "75.8 / 36.9 -> 76.9 / 56.9"),
)
STAGE2_FROM = "recon_align_diffusion"


@dataclass(frozen=True)
class Size:
    steps: int  # optimiser steps of every pretrained variant
    stage2_steps: int  # how many of them variant (e) spends in Stage 2
    train_clips: int  # probe training clips (one view each)
    val_clips: int  # probe validation clips
    probe_epochs: int
    overrides: dict = field(default_factory=dict)  # config tree over the preset, for every run


SIZES = {
    # about 30 minutes for three seeds on a 2-core CPU (per-phase times land in the JSON)
    "default": Size(steps=100, stage2_steps=20, train_clips=720, val_clips=240, probe_epochs=20),
    "quick": Size(steps=2, stage2_steps=1, train_clips=12, val_clips=8, probe_epochs=1, overrides={
        "model": {"encoder": {"depth": 2}, "teacher": {"num_layers": 2}},
        "data": {"num_frames": 4, "size": 56, "synthetic_videos": 16}, "train": {"batch_size": 4}}),
}


# Every run, over the preset: LayerScale starts at 0.1 instead of the released 1e-5, because in
# a 100-step run 1e-5 gains only grow to about 0.008 and the blocks add 0.4-13% to the output
# tokens, so every variant would probe like its initialisation; the closing reconstruction
# picture samples with 10 steps.
TOY_OVERRIDES = {"model": {"encoder": {"layerscale": 0.1}, "decoder": {"sampling_steps": 10}}}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def pretrain(tree: dict) -> dict:
    """Run the trainer on the tiny preset plus `tree`: its wall time (set-up and the closing
    picture included), final loss and the steady per-step time of its last logging window."""
    cfg = build_config(PRESET, tree)
    validate(cfg)
    configure_attention(cfg.train.attention, resolve_device(cfg.train.device))
    set_kernels(cfg.train.kernels)
    start = time.perf_counter()
    last = Trainer(cfg, World()).train()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "steps": cfg.train.max_steps, "loss": last["loss"],
            "step_s": round(last["step_time_s"], 3)}


def probe(encoder: VideoEncoder, size: Size, seed: int, device: torch.device) -> dict:
    """Attentive-probe top-1 (and the rest of train_probe's record) per task, tokens encoded once."""
    frames, side = encoder.grid[0], encoder.grid[1] * encoder.cfg.patch_size
    # clips are rendered in a worker process: single-threaded rendering is far faster than the
    # main process's multi-threaded small ops, above all on a busy machine
    features = {split: encode(encoder, SyntheticViews(n, frames, side, seed=SEEDS[split], train=split == "train"),
                              TASKS, BATCH, device, workers=1)
                for split, n in (("train", size.train_clips), ("val", size.val_clips))}
    return {task: train_probe(Kept(features["train"][0], features["train"][1][task]),
                              Kept(features["val"][0], features["val"][1][task]), head="attentive",
                              num_classes=len(LABELS[task]), num_heads=encoder.cfg.num_heads,
                              epochs=size.probe_epochs, batch=BATCH, lr=LR, weight_decay=WEIGHT_DECAY, seed=seed,
                              device=device)
            for task in TASKS}


def run_seed(seed: int, size: Size, out: Path, device: torch.device, log: logging.Logger) -> list[dict]:
    """Every variant at one seed: pretrain, then probe; one record per variant."""
    stage1_steps = size.steps - size.stage2_steps
    common = _merge(_merge(TOY_OVERRIDES, size.overrides), {"train": {
        "seed": seed, "max_steps": size.steps, "ckpt_every": stage1_steps,
        "keep_checkpoints": size.steps // stage1_steps + 1, "progress": False, "tensorboard": False}})
    records, runs = [], {}
    for variant in VARIANTS:
        record = {"seed": seed, "variant": variant.key, "pretrain": None}
        records.append(record)
        if variant.overrides is None:
            continue
        if variant.key == "stage2":  # Stage 2 writes under its Stage 1 run: OUTPUT_DIR/stage2
            runs[variant.key] = runs[STAGE2_FROM] / "stage2"
            tree = _merge(common, {"train": {"stage": 2, "max_steps": size.stage2_steps, "ckpt_every": size.steps},
                                   "stage2": {"init": str(checkpoint_dir(runs[STAGE2_FROM] / "checkpoints",
                                                                         stage1_steps))},
                                   "output_dir": str(runs[STAGE2_FROM])})
        else:
            runs[variant.key] = out / f"seed_{seed}" / variant.key
            shutil.rmtree(runs[variant.key], ignore_errors=True)  # a rerun trains each variant afresh
            tree = _merge(common, {**variant.overrides, "output_dir": str(runs[variant.key])})
        record["pretrain"] = pretrain(tree)
        loss = record["pretrain"]["loss"]
        log.info("seed %d %-22s pretrained in %6.1f s (%.2f s/step, final loss %s)", seed, variant.key,
                 record["pretrain"]["seconds"], record["pretrain"]["step_s"], "-" if loss is None else f"{loss:.4f}")
    for variant, record in zip(VARIANTS, records):
        start = time.perf_counter()
        if variant.overrides is None:  # the shape of the pretrained encoders, weights drawn from the seed
            encoder = load_encoder(latest_checkpoint(runs[STAGE2_FROM] / "checkpoints"), device, random_init=True,
                                   seed=seed)
        else:
            encoder = load_encoder(latest_checkpoint(runs[variant.key] / "checkpoints"), device)
        record["probe"] = probe(encoder, size, seed, device)
        record["probe_seconds"] = round(time.perf_counter() - start, 1)
        log.info("seed %d %-22s probed in %6.1f s: %s", seed, variant.key, record["probe_seconds"],
                 ", ".join(f"{t} {record['probe'][t]['top1']:.3f}" for t in TASKS))
    return records


def summarise(records: list[dict]) -> dict:
    """variant -> task -> mean, sample std (None for one seed), min, max and the per-seed top-1 values."""
    out = {}
    for variant in VARIANTS:
        rows = [r for r in records if r["variant"] == variant.key]
        out[variant.key] = {}
        for task in TASKS:
            values = [r["probe"][task]["top1"] for r in rows]
            out[variant.key][task] = {"mean": statistics.fmean(values),
                                      "std": statistics.stdev(values) if len(values) > 1 else None,
                                      "min": min(values), "max": max(values), "values": values}
    return out


def _mean_sd(s: dict) -> str:
    return f"{s['mean']:.3f}" if s["std"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _steps_label(variant: Variant, size: Size) -> str:
    if variant.overrides is None:
        return "0"
    if variant.key == "stage2":
        return f"{size.steps - size.stage2_steps} + {size.stage2_steps} (S2)"
    return str(size.steps)


def markdown(summary: dict, size: Size, seeds: list[int], frames: int, side: int, seconds: float) -> str:
    chance = ", ".join(f"{t} 1/{len(LABELS[t])} = {1 / len(LABELS[t]):.3f}" for t in TASKS)
    lines = [
        "# Toy ablation: Stage 1 variants and Stage 2 on the synthetic set",
        "",
        f"Tiny preset ({frames} frames of {side} px, LayerScale starting at 0.1), every variant pretrained for the "
        f"same {size.steps} optimiser "
        f"steps with the same seeds ({', '.join(map(str, seeds))}); attentive probe, {size.probe_epochs} "
        f"epoch{'s' * (size.probe_epochs != 1)} on "
        f"{size.train_clips} training clips, top-1 on {size.val_clips} held-out clips, "
        f"{'mean ± sample standard deviation over the seeds' if len(seeds) > 1 else 'one seed'} "
        f"(chance: {chance}). The paper's column is its ViT-B linear probe "
        "(K400 / SSv2, Tables 1a and 3) for comparison of the ordering only.",
        "",
        "| variant | steps | shape top-1 (appearance) | direction top-1 (dynamics) | paper K400 / SSv2 |",
        "|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        cells = [_mean_sd(summary[variant.key][t]) for t in TASKS]
        lines.append(f"| {variant.label} | {_steps_label(variant, size)} | {cells[0]} | {cells[1]} | {variant.paper} |")
    lines += ["", f"Wall time {seconds / 60:.1f} min on {torch.get_num_threads()} CPU threads "
                  f"(`python -m ivn_fast.experiments.toy_ablation`).", ""]
    return "\n".join(lines)


_COLOURS = {"shape": (66, 114, 196), "direction": (230, 130, 40)}


def bar_plot(summary: dict, path: Path, title: str) -> Path:
    """Grouped bars (one group per variant, one bar per task), error bars of one standard
    deviation, one dot per seed, dashed chance levels; drawn with PIL."""
    width, height, left, bottom, top = 1000, 520, 70, 110, 50
    plot_h, group_w = height - bottom - top, (width - left - 20) / len(VARIANTS)
    bar_w = group_w * 0.32
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)

    def y_of(v: float) -> float:
        return top + plot_h * (1 - v)

    for tick in range(6):
        v = tick / 5
        draw.line([(left, y_of(v)), (width - 20, y_of(v))], fill=(225, 225, 225))
        draw.text((left - 8, y_of(v)), f"{v:.1f}", fill="black", font=small, anchor="rm")
    draw.line([(left, top), (left, top + plot_h), (width - 20, top + plot_h)], fill="black")
    draw.text((18, top + plot_h / 2), "top-1", fill="black", font=font, anchor="mm")
    draw.text((width / 2, 20), title, fill="black", font=font, anchor="mm")
    for task in TASKS:
        y = y_of(1 / len(LABELS[task]))
        for x in range(left, width - 20, 12):
            draw.line([(x, y), (x + 6, y)], fill=_COLOURS[task], width=1)
    for i, variant in enumerate(VARIANTS):
        centre = left + group_w * (i + 0.5)
        for j, task in enumerate(TASKS):
            s = summary[variant.key][task]
            x0 = centre + (j - 1) * bar_w - 2 + 4 * j
            draw.rectangle([x0, y_of(s["mean"]), x0 + bar_w, y_of(0)], fill=_COLOURS[task])
            mid = x0 + bar_w / 2
            if s["std"] is not None:  # one seed has no spread to draw
                lo, hi = y_of(max(0.0, s["mean"] - s["std"])), y_of(min(1.0, s["mean"] + s["std"]))
                draw.line([(mid, lo), (mid, hi)], fill="black", width=2)
                for y in (lo, hi):
                    draw.line([(mid - 6, y), (mid + 6, y)], fill="black", width=2)
            for v in s["values"]:
                draw.ellipse([mid - 3, y_of(v) - 3, mid + 3, y_of(v) + 3], outline="black", fill="white")
        words, line, rows = variant.label.split(), "", []
        for word in words:
            if len(line) + len(word) > 18:
                rows.append(line)
                line = ""
            line = f"{line} {word}".strip()
        rows.append(line)
        for k, row in enumerate(rows):
            draw.text((centre, top + plot_h + 14 + 16 * k), row, fill="black", font=small, anchor="mt")
    for j, task in enumerate(TASKS):
        x = width - 330 + 160 * j
        draw.rectangle([x, height - 24, x + 14, height - 10], fill=_COLOURS[task])
        draw.text((x + 20, height - 17), f"{task} (chance dashed)", fill="black", font=small, anchor="lm")
    img.save(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.experiments.toy_ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/toy_ablation"), help="where runs and results go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining and probe seeds")
    parser.add_argument("--quick", action="store_true", help="a seconds-long run of every step (for CI)")
    parser.add_argument("--steps", type=int, help="optimiser steps per variant (overrides the size's)")
    parser.add_argument("--stage2-steps", type=int, help="of those, the Stage 2 steps of variant (e)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = SIZES["quick" if args.quick else "default"]
    size = Size(**{**asdict(base), "steps": args.steps or base.steps,
                   "stage2_steps": args.stage2_steps or base.stage2_steps})
    if not 0 < size.stage2_steps < size.steps:
        print(f"toy_ablation: error: need 0 < stage2 steps ({size.stage2_steps}) < steps ({size.steps})",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("ivn_fast.toy_ablation")
    device = resolve_device(args.device)
    start, load_before = time.perf_counter(), os.getloadavg()
    records = [r for seed in args.seeds for r in run_seed(seed, size, args.out, device, log)]
    seconds = time.perf_counter() - start
    summary = summarise(records)
    cfg = build_config(PRESET, _merge(TOY_OVERRIDES, size.overrides))
    md = markdown(summary, size, args.seeds, cfg.data.num_frames, cfg.data.size, seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toy_ablation.md").write_text(md)
    bar_plot(summary, args.out / "toy_ablation.png",
             f"Toy ablation: attentive-probe top-1, mean ± sd over {len(args.seeds)} seed(s)")
    (args.out / "toy_ablation.json").write_text(json.dumps(
        {"size": asdict(size), "seeds": args.seeds, "preset": PRESET, "seconds": round(seconds, 1),
         "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
         "load_average": {"start": load_before, "end": os.getloadavg()}, "summary": summary, "runs": records},
        indent=2) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
