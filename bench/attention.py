"""The attention table: every installed backend timed at our sequence lengths (head dim 64, bf16),
with and without backward, full and windowed; achieved TFLOP/s against the measured bf16 matmul
rate, and peak memory. It is the measurement ``--train.attention auto`` makes and follows.

    python -m bench.attention [--seq 256,512,1024,2048,4096,8192] [--heads 16] [--json OUT]
    python -m bench.attention --cpu-smoke      # fixed tiny sizes, SDPA on CPU: checks the tool runs

FLOPs count the products a kernel must do: 4·S·keys·D per head forward (keys = S, or the
window's share of it), 2.5 times that backward.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from ivn_fast.models.attention import choices_from, installed
from ivn_fast.models.attention_table import KINDS, SEQ_LENS, TOKENS, measure, package_versions


def pairs(seq: int, window: int | None) -> int:
    """Query-key pairs attended: S² for full attention, the band |i - j| <= window otherwise."""
    if window is None or window >= seq:
        return seq * seq
    return seq * (2 * window + 1) - window * (window + 1)


def flops(row: dict) -> float:
    """Multiply-adds x 2 a row's call must do (backward counted as 2.5 forwards)."""
    fwd = 4 * row["batch"] * row["heads"] * pairs(row["seq"], row["window"]) * row["head_dim"]
    return fwd * (3.5 if row["grad"] else 1.0)


def matmul_tflops(device: str) -> float:
    """Measured bf16 matrix-product rate: the ceiling the attention rates are read against."""
    from bench.gpu_check import ceilings

    return ceilings(device)["matmul_TFLOPs"]


def table(rows: list[dict], peak_tflops: float) -> str:
    """The rows as text: one block per kind, one column per backend, auto's pick starred."""
    names = sorted({n for r in rows for n in r["ms"]}, key=lambda n: (n != "sdpa", n))
    picks = choices_from(rows)
    lines = []
    for window, grad in dict.fromkeys((r["window"], r["grad"]) for r in rows):
        kind = f"{'windowed ' + str(window) if window is not None else 'full'}, {'fwd+bwd' if grad else 'fwd'}"
        lines.append(f"\n{kind}; each backend: ms (* = auto's pick), TFLOP/s, share of matmul rate, peak MiB")
        lines.append(f"{'seq':>6s} {'batch':>5s} " + " ".join(f"{n:>28s}" for n in names))
        for r in (r for r in rows if (r["window"], r["grad"]) == (window, grad)):
            pick = picks[(window is not None, grad)].at(r["seq"]) if (window is not None, grad) in picks else None
            cells = []
            for n in names:
                ms = r["ms"].get(n, "absent")
                if ms == "absent":
                    cells.append(f"{'-':>28s}")
                elif ms is None:
                    cells.append(f"{'failed':>28s}")
                else:
                    tf = flops(r) / ms / 1e9
                    mark = "*" if n == pick else " "
                    mib = f"{r['peak_mb'][n]:6.0f}" if n in r["peak_mb"] else f"{'-':>6s}"
                    cells.append(f"{ms:8.3f}{mark} {tf:6.1f} {tf / peak_tflops:4.0%} {mib}")
            lines.append(f"{r['seq']:6d} {r['batch']:5d} " + " ".join(cells))
    errors = {(r["seq"], r["window"], r["grad"], n): e for r in rows for n, e in r["errors"].items()}
    for (seq, window, grad, n), e in errors.items():
        lines.append(f"left out: {n} at seq {seq}, window {window}, grad {grad}: {e}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", default=",".join(map(str, SEQ_LENS)), help="sequence lengths (comma-separated)")
    parser.add_argument("--heads", type=int, default=16, help="attention heads (head dim 64)")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="batch x sequence per measurement")
    parser.add_argument("--json", type=Path, default=None, help="write the device, versions and every row here")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (SDPA only)")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("no CUDA device; use --cpu-smoke to check the tool on CPU")
    device = "cpu" if args.cpu_smoke else "cuda"
    try:
        seqs = [32, 64] if args.cpu_smoke else [int(s) for s in args.seq.split(",")]
    except ValueError:
        parser.error(f"--seq takes comma-separated lengths, got {args.seq!r}")
    kinds = [(8 if w is not None else None, g) for w, g in KINDS] if args.cpu_smoke else KINDS
    have = installed()
    rows = measure(seqs, kinds, backends=have, heads=2 if args.cpu_smoke else args.heads,
                   dtype=torch.float32 if args.cpu_smoke else torch.bfloat16,
                   tokens=256 if args.cpu_smoke else args.tokens, reps=2 if args.cpu_smoke else 10, device=device)
    peak = matmul_tflops(device)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or 'unknown'})"
    print(f"{name} | torch {torch.__version__} | matmul {peak:.1f} TFLOP/s | "
          + ", ".join(f"{n}: {b.impl}" for n, b in have.items()))
    print(table(rows, peak))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": name, "capability": torch.cuda.get_device_capability() if device == "cuda" else None,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device == "cuda" else None, "packages": package_versions(),
            "impls": {n: b.impl for n, b in have.items()}, "matmul_TFLOPs": peak,
            "command": " ".join(["python -m bench.attention", *sys.argv[1:]]), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
