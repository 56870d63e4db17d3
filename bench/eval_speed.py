"""Evaluation throughput at the paper's evaluation clips (16 frames of 224 px), random weights:
the frozen encoder as the probes run it (float32, and bf16 autocast: `--precision`), and one
fine-tuning step (encoder and linear head under bf16 autocast, forward, backward and AdamW with
layer-wise decay; `--finetune-batch` clips, fewer than the encodings' since it keeps every
activation for the backward pass). Clips/s, TFLOP/s and MFU against the measured matrix rate, peak memory; the
float32 and bf16 encodings side by side from one run.

    python -m bench.eval_speed [--models vit-b,vit-l] [--batch 16] [--finetune-batch 8] [--steps 10] [--json OUT]
    python -m bench.eval_speed --cpu-smoke      # a tiny encoder on CPU: checks the tool runs
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.report import matmul_peak, sync
from ivn_fast.config import EncoderConfig, build_config
from ivn_fast.finetune import Classifier, layer_of
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.probe import build_probe
from ivn_fast.features import view_tokens
from ivn_fast.train.optim import layer_decay_groups

NUM_CLASSES = 400


def timed(run: Callable[[], None], device: torch.device, steps: int, warmup: int) -> dict:
    """Seconds per call of `run` over `steps` calls after `warmup`, its FLOPs and the peak memory."""
    for _ in range(warmup):
        run()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    sync(device)
    seconds = (time.perf_counter() - t0) / steps
    with FlopCounterMode(display=False) as counter:
        run()
    out = {"s": seconds, "flops": counter.get_total_flops()}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return out


def measure(name: str, cfg: EncoderConfig, grid: tuple[int, int, int], batch: int, finetune_batch: int,
            steps: int, warmup: int, device: torch.device, peak: float) -> list[dict]:
    encoder = VideoEncoder(cfg, grid).to(device)
    video = torch.randn(batch, 3, grid[0], grid[1] * cfg.patch_size, grid[2] * cfg.patch_size, device=device)
    rows = []
    encoder.eval()
    for label, amp in (("encode fp32", None), ("encode bf16", torch.bfloat16)):
        with torch.no_grad():
            r = timed(lambda amp=amp: view_tokens(encoder, video, device, amp=amp), device, steps, warmup)
        rows.append({"model": name, "path": label, "batch": batch, **r})
    video = video[:finetune_batch]
    model = Classifier(encoder, build_probe("linear", cfg.embed_dim, NUM_CLASSES, cfg.num_heads)).to(device)
    model.train()
    opt = torch.optim.AdamW(layer_decay_groups(model, 0.05, 0.75, cfg.depth, layer_of(cfg.depth)), lr=1e-4,
                            fused=device.type == "cuda")
    labels = torch.randint(NUM_CLASSES, (len(video),), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(video)
        F.cross_entropy(logits.float(), labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows.append({"model": name, "path": "fine-tune step bf16", "batch": len(video),
                 **timed(step, device, steps, warmup)})
    for r in rows:
        r.update(clips_per_s=r["batch"] / r["s"], tflops=r["flops"] / r["s"] / 1e12, mfu=r["flops"] / r["s"] / peak)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<8}{'path':<22}{'batch':>6}{'ms':>9}{'clips/s':>10}{'TFLOP/s':>9}{'MFU':>7}{'peak GB':>9}"]
    for r in rows:
        mem = f"{r['peak_mem_gb']:>9.1f}" if "peak_mem_gb" in r else f"{'-':>9}"
        lines.append(f"{r['model']:<8}{r['path']:<22}{r['batch']:>6}{1e3 * r['s']:>9.1f}{r['clips_per_s']:>10.1f}"
                     f"{r['tflops']:>9.1f}{100 * r['mfu']:>6.1f}%{mem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit-b,vit-l", help="presets whose encoder is timed")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--size", type=int, default=224, help="clip side in pixels")
    parser.add_argument("--batch", type=int, default=16, help="clips per encoding call")
    parser.add_argument("--finetune-batch", type=int, default=8,
                        help="clips per fine-tuning step (at most --batch; 16 ViT-L clips of 16 frames overflow 80 GB)")
    parser.add_argument("--steps", type=int, default=10, help="timed calls per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--json", type=Path, help="write the rows, the device and the versions here")
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny encoder on CPU, to check the tool")
    args = parser.parse_args(argv)
    if not 0 < args.finetune_batch <= args.batch:
        parser.error(f"--finetune-batch must be in 1..--batch ({args.batch}), got {args.finetune_batch}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    if args.cpu_smoke:
        models = {"tiny": EncoderConfig(embed_dim=64, depth=2, num_heads=2)}
        args.frames, args.size, args.batch, args.finetune_batch, args.steps, args.warmup = 2, 28, 2, 2, 2, 1
    else:
        models = {name: build_config(name).model.encoder for name in args.models.split(",")}
    peak = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {name} | torch {torch.__version__} | matmul {peak / 1e12:.1f} TFLOP/s "
          f"({'bf16' if device.type == 'cuda' else 'fp32'}) | {args.frames} frames of {args.size} px", flush=True)
    rows = []
    for model, cfg in models.items():
        side = args.size // cfg.patch_size
        rows += measure(model, cfg, (args.frames, side, side), args.batch, args.finetune_batch, args.steps,
                        args.warmup, device, peak)
        gc.collect()  # the model of this row is gone: its memory goes back before the next one
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "matmul_flops": peak,
                                         "command": " ".join(["python -m bench.eval_speed", *(argv or sys.argv[1:])]),
                                         "frames": args.frames, "size": args.size, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
