"""Where one benchmark case spends its GPU time: the top kernels of a few profiled passes.

    python -m bench.profile_op gather_C768 merge_C1024 [--dtype bfloat16] [--variant triton] [--forward]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench.bench_cases import VARIANTS, decoder_cases, decoder_model, runner, token_cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help="case names as in gpu_check's table")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--variant", default="triton", choices=VARIANTS)
    parser.add_argument("--forward", action="store_true", help="forward only (default: forward + backward)")
    parser.add_argument("--rows", type=int, default=12, help="kernels listed per case")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    cases = {c.name: c for c in token_cases(device, dtype) + decoder_cases(device, dtype)}
    cases["decoder_loss"] = decoder_model(device, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for name in args.cases:
        run = runner(cases[name], args.variant, backward=not args.forward)
        for _ in range(3):
            run()
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(5):
                run()
            if device == "cuda":
                torch.cuda.synchronize()
        key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        print(f"=== {name} {args.dtype} {args.variant} {'fwd' if args.forward else 'fwd_bwd'} (5 passes)")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
