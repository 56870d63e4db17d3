"""Stage 1 step report: the fast path beside the eager baseline of the same step, in one process.

    python -m bench.report [--rows NAME,...] [--batch 32] [--steps 10] [--set KEY=VALUE]
                           [--fast KEY=VALUE,...] [--json OUT]

Each row builds the real trainer for a paper setting (teacher and predictor with random
weights of the real shapes, so nothing is downloaded), times `Trainer.train_step` on a fixed
batch, counts the step's FLOPs with FlopCounterMode, and projects the paper's schedule onto
the measured clips/s. The baseline is eager PyTorch with the reference ops and default SDPA;
the fast path is per-block torch.compile with the Triton kernels and the best attention.
Each `--fast` gives one more fast-path variant (activation checkpointing, a bf16 diffusion head,
...), all timed against the same eager baseline:

    python -m bench.report --rows b8-align-diffusion --fast "" \
        --fast train.activation_checkpointing=budget,train.ac_budget=0.3,model.decoder.fp32=false

A variant that runs out of memory or fails is reported as such (the trace on stderr) and the
report goes on.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ivn_fast.config import Config, ConfigError, build_config, set_dotted, validate
from ivn_fast.models.attention_table import configure as configure_attention
from ivn_fast.train import checkpoint as ckpt
from ivn_fast.train.distributed import World
from ivn_fast.train.trainer import Trainer, resolve_device
from ivn_kernels import set_kernels
from ivn_kernels._triton import HAS_TRITON, triton

# The A100's dense bf16 datasheet rate: the default divisor of the A100-hour conversion. The
# numerator is this device's measured rate, and an A100 measures below its datasheet on the same
# product, so the default errs low; --a100-tflops takes a measured A100 rate for one basis.
A100_BF16_PEAK = 312e12
K_MASH_VIDEOS, K710_VIDEOS = 1_100_000, 660_000

# name: (preset, overrides, paper schedule in clips, paper figures)
ROWS: dict[str, tuple[str, dict, int, dict[str, float]]] = {
    "b8-align": ("vit-b-ablation", {"loss": {"terms": "align"}}, 30 * K710_VIDEOS, {"paper_mem_gb": 22}),
    "b8-align-linear": ("vit-b-ablation", {"model": {"decoder": {"kind": "linear"}}}, 30 * K710_VIDEOS,
                        {"paper_mem_gb": 41}),
    "b8-align-diffusion": ("vit-b-ablation", {}, 30 * K710_VIDEOS, {"paper_mem_gb": 48}),
    "b16-stage1": ("vit-b", {}, 50 * K_MASH_VIDEOS, {"paper_a100_hours": 1500}),
    "l16-stage1": ("vit-l", {}, 50 * K_MASH_VIDEOS, {"paper_a100_hours": 3600}),
    "b32-stage2": ("vit-b", {"train": {"stage": 2}}, 100 * K_MASH_VIDEOS, {"paper_a100_hours": 3400 - 1500}),
    "l32-stage2": ("vit-l", {"train": {"stage": 2}}, 100 * K_MASH_VIDEOS, {"paper_a100_hours": 9700 - 3600}),
    "tiny": ("tiny", {}, 50 * K_MASH_VIDEOS, {}),
    "tiny-stage2": ("tiny", {"train": {"stage": 2}}, 100 * K_MASH_VIDEOS, {}),
}

# teacher directories of the presets -> (transformers class name, config kwargs) of that shape
TEACHER_SHAPES = {
    "siglip2-large-patch16-256": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                      num_attention_heads=16),
    "siglip2-giant-opt-patch16-256": dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=40,
                                          num_attention_heads=16),
}


def random_teacher(name: str, root: Path, device: torch.device) -> str:
    """A Siglip2 vision tower of the named shape with random weights, saved once under root."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    out = root / name
    if not (out / "config.json").is_file():
        cfg = Siglip2VisionConfig(patch_size=16, num_patches=256, vision_use_head=True, **TEACHER_SHAPES[name])
        with torch.device(device):
            model = Siglip2VisionModel(cfg).to(torch.bfloat16)
        model.save_pretrained(str(out))
        del model
    return str(out)


def config_item(text: str) -> tuple[str, str]:
    """One `--set model.decoder.fp32=false` argument (an argparse type, so a malformed one is a
    usage error); the value is read by its field's type when the config is built."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def config_items(text: str) -> list[tuple[str, str]]:
    """One `--fast` argument: comma-separated KEY=VALUE items, or "" for the plain fast path."""
    return [config_item(item) for item in text.split(",") if item.strip()]


def config_sets(items: list[tuple[str, str]]) -> dict:
    """`--set` items -> a config tree."""
    tree: dict = {}
    for key, value in items:
        set_dotted(tree, key, value)
    return tree


SET_HELP = "a config field over the row's own settings, e.g. model.decoder.fp32=false (repeatable)"


def path_settings(fast: bool) -> dict:
    """The eager baseline (reference ops, default SDPA, no compile) or the fast path."""
    return {"train": {"compile": fast, "kernels": "auto" if fast else "torch",
                      "attention": "auto" if fast else "sdpa", "activation_checkpointing": "none"}}


def path_config(name: str, fast: bool, stage: int | None = None, sets: dict | None = None,
                fast_sets: dict | None = None) -> Config:
    """The row's settings, the path's, `sets`, then on the fast path `fast_sets`."""
    preset, overrides, _, _ = ROWS[name]
    trees = [overrides if stage is None else {"train": {"stage": stage}}, path_settings(fast), sets or {}]
    return build_config(preset, *trees, *([fast_sets or {}] if fast else []))


def row_config(name: str, batch: int, fast: bool, teacher_root: Path, device: torch.device, out_dir: str,
               stage: int | None = None, sets: dict | None = None, fast_sets: dict | None = None) -> Config:
    """The row's config on the chosen path: the row, the path's settings, `sets`, then on the fast
    path `fast_sets`; `stage=1` gives the Stage 1 run a Stage 2 row starts from."""
    cfg = path_config(name, fast, stage, sets, fast_sets)
    teacher = Path(cfg.model.teacher.path).name
    if teacher in TEACHER_SHAPES:
        cfg.model.teacher.path = random_teacher(teacher, teacher_root, device)
    if cfg.model.predictor.kind == "modernbert" and cfg.model.predictor.init:
        cfg.model.predictor.path, cfg.model.predictor.init = "", False  # built-in ModernBERT-Large shapes
    t = cfg.train
    t.batch_size, t.progress, t.tensorboard, t.device = batch, False, False, device.type
    cfg.data.num_workers, cfg.data.synthetic_videos = 0, max(batch, 8)
    cfg.output_dir = out_dir
    if cfg.train.stage == 2:
        cfg.stage2.init = stage1_checkpoint(name, batch, teacher_root, device, Path(out_dir).parent, sets)
    validate(cfg)
    return cfg


def stage1_checkpoint(name: str, batch: int, teacher_root: Path, device: torch.device, root: Path,
                      sets: dict | None = None) -> str:
    """A step-0 Stage 1 checkpoint of the row's shapes (random weights), written once per row."""
    out = root / f"stage1-of-{name}"
    if not (out / "checkpoints").is_dir():
        cfg = row_config(name, batch, False, teacher_root, device, str(out), stage=1, sets=sets)
        trainer = Trainer(cfg, World())
        trainer.save()
        del trainer
        _release(device)
    return str(ckpt.latest_checkpoint(out / "checkpoints"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(cfg: Config, steps: int, warmup: int, count_flops: bool) -> dict[str, Any]:
    """Median-free wall time of `steps` train steps after `warmup`, peak memory, optional FLOPs."""
    print(configure_attention(cfg.train.attention, resolve_device(cfg.train.device)), flush=True)
    set_kernels(cfg.train.kernels)
    trainer = Trainer(cfg, World())
    device = trainer.device
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.randn(cfg.train.batch_size, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size,
                        device=device, generator=g)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step(video)
    sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses = [trainer.train_step(video)["loss"] for _ in range(steps)]
    sync(device)
    step_s = (time.perf_counter() - t0) / steps
    result: dict[str, Any] = {"step_s": step_s, "clips_per_s": cfg.train.batch_size / step_s,
                              "warmup_s": warm_s, "loss_last": losses[-1]}
    if device.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(video)
        result["flops_per_step"] = counter.get_total_flops()
    del trainer, video
    _release(device)
    return result


def _release(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 (GPU) or fp32 (CPU) matrix-product rate in FLOP/s, the MFU denominator."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / sorted(times)[len(times) // 2]


def run_row(name: str, args: argparse.Namespace, device: torch.device, peak: float, root: Path) -> dict[str, Any]:
    """The eager baseline, then each `--fast` variant, of one row."""
    _, _, schedule_clips, paper = ROWS[name]
    row: dict[str, Any] = {"row": name, "batch": args.batch, "set": dict(args.set), **paper}
    sets = config_sets(args.set)
    variants = [("eager", False, [])] + [("fast", True, items) for items in args.fast or [[]]]
    results = []
    for i, (variant, fast, items) in enumerate(variants):
        cfg = row_config(name, args.batch, fast, root / "teachers", device, str(root / f"run-{name}-{i}"),
                         sets=sets, fast_sets=config_sets(items))
        try:
            result = measure_step(cfg, args.steps, args.warmup, count_flops=not fast)
        except torch.OutOfMemoryError as e:
            result = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            _release(device)
        except Exception as e:  # one broken variant must not cost the sweep: the trace goes to stderr
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            _release(device)
        results.append({"set": dict(items), **result} if fast else result)
        print(json.dumps({"row": name, "path": variant, **results[-1]}), flush=True)  # kept if a later one dies
    eager = row["eager"] = results[0]
    row["fast"] = results[1:]
    flops = eager.get("flops_per_step")
    for r in results:
        if "step_s" in r and flops:
            r["mfu"] = flops / r["step_s"] / peak
            hours = schedule_clips / r["clips_per_s"] / 3600
            r["gpu_hours"] = hours
            r["a100_equiv_hours"] = hours * peak / (args.a100_tflops * 1e12) if device.type == "cuda" else None
        if r is not eager and "step_s" in r and "step_s" in eager:
            r["speedup"] = eager["step_s"] / r["step_s"]
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per path; several fast variants are numbered, their settings listed under the row."""
    head = (f"{'row':<20}{'path':<7}{'step s':>9}{'clips/s':>9}{'TFLOP/step':>11}{'MFU':>7}{'peak GB':>9}"
            f"{'paper GB':>9}{'GPU-h':>9}{'A100-eq h':>10}{'paper h':>9}{'vs eager':>9}")
    lines = [head, "-" * len(head)]
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    for row in rows:
        flops = row["eager"].get("flops_per_step")
        paths = [("eager", row["eager"])] + [
            ("fast" if len(row["fast"]) == 1 else f"fast{i + 1}", r) for i, r in enumerate(row["fast"])]
        for path, r in paths:
            if "error" in r:
                lines.append(f"{row['row']:<20}{path:<7}  {r['error'][:80]}")
                continue
            lines.append(
                f"{row['row']:<20}{path:<7}{r['step_s']:>9.3f}{r['clips_per_s']:>9.1f}"
                f"{fmt(flops and flops / 1e12, '.1f'):>11}{fmt(r.get('mfu'), '.1%'):>7}"
                f"{fmt(r.get('peak_mem_gb'), '.1f'):>9}{fmt(row.get('paper_mem_gb'), '.0f'):>9}"
                f"{fmt(r.get('gpu_hours'), '.0f'):>9}{fmt(r.get('a100_equiv_hours'), '.0f'):>10}"
                f"{fmt(row.get('paper_a100_hours'), '.0f'):>9}{fmt(r.get('speedup'), '.2f'):>8}"
                f"{'x' if 'speedup' in r else ' '}")
        for path, r in paths[1:]:
            if r["set"]:
                lines.append(f"{'':<20}{path}: " + ", ".join(f"{k}={v}" for k, v in r["set"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=None, help=f"comma-separated rows (default: all but tiny on GPU, "
                                                     f"tiny on CPU); known: {', '.join(ROWS)}")
    parser.add_argument("--batch", type=int, default=32, help="clips per step (per GPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--set", action="append", default=[], type=config_item, metavar="KEY=VALUE",
                        help=SET_HELP + "; applies to both paths")
    parser.add_argument("--fast", action="append", type=config_items, metavar="KEY=VALUE,...",
                        help="one fast-path variant: comma-separated config fields over the row and --set, "
                             "e.g. train.activation_checkpointing=op; repeatable, each timed against the same "
                             "eager baseline (default: one variant, the plain fast path; \"\" names it)")
    parser.add_argument("--a100-tflops", type=float, default=A100_BF16_PEAK / 1e12,
                        help="the A100 bf16 matmul rate A100-hours are converted by (default: the datasheet "
                             "%(default)g; a measured A100 rate puts both sides of the ratio on one basis)")
    parser.add_argument("--json", type=Path, default=None, help="write the full results here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = args.rows.split(",") if args.rows else ([n for n in ROWS if n != "tiny"] if device.type == "cuda"
                                                    else ["tiny"])
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    try:  # a bad field fails here, not minutes into the sweep
        for name in names:
            for items in args.fast or [[]]:
                validate(path_config(name, True, sets=config_sets(args.set), fast_sets=config_sets(items)),
                         check_paths=False)
    except ConfigError as e:
        parser.error(str(e))
    peak = matmul_peak(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device_name}; measured matmul rate {peak / 1e12:.1f} TFLOP/s "
          f"({'bf16' if device.type == 'cuda' else 'fp32'}); torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(run_row(name, args, device, peak, Path(tmp)))
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": device_name, "torch": torch.__version__, "triton": triton.__version__ if HAS_TRITON else None,
            "matmul_flops": peak,
            "a100_bf16_rate": args.a100_tflops * 1e12, "command": "python -m bench.report " + " ".join(
                sys.argv[1:] if argv is None else argv), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
