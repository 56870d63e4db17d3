"""Sweep the token kernels' tiling on a GPU: rows per program x warps x column block x prefetch,
each timed as CUDA-graph replays and held against the measured copy bandwidth, each checked
against the shipped tiling.

    python -m bench.tune_tokens [--rows 2,4,8] [--warps 4,8] [--block-c 0,256] [--prefetch 0,1] [--json OUT]
    python -m bench.tune_tokens --cpu-smoke      # tiny sizes through the Triton interpreter

The shipped tiling is `ivn_kernels.tokens._tiling`, chosen per kernel; it is timed first, as
"shipped". Each candidate then runs every kernel of an op, so the backward pass's best is its
fwd_bwd time less the fwd time of the same candidate. A column block of 0 means the whole row;
256 cuts C = 768 into three unpadded blocks. Prefetch only changes the kernels that walk the batch
(the backward passes). Outputs and gradients of every tiling must match the shipped one's
(norm-relative 1e-5 in fp32, 1e-2 in bf16: only the order of the mask-token gradient's partial
sums changes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from bench.gpu_check import ceilings, median_ms  # first: it picks the interpreter for --cpu-smoke

import torch  # noqa: E402

import ivn_kernels  # noqa: E402
from bench.bench_cases import Case, runner, token_cases, token_tiling  # noqa: E402
from ivn_kernels import tokens as kt  # noqa: E402
from ivn_kernels._triton import next_power_of_2, triton  # noqa: E402


Candidate = tuple[int, int, int, bool]
"""(rows, warps, column block or 0 for the whole row, prefetch)."""


def resolve(candidate: Candidate, c: int) -> kt.Tiling:
    rows, warps, block_c, prefetch = candidate
    return kt.Tiling(rows, block_c or next_power_of_2(c), warps, prefetch)


def uniform(candidate: Candidate) -> Callable[[int, str], kt.Tiling]:
    """Every kernel of the token ops on the candidate's tiling."""
    return lambda c, kernel: resolve(candidate, c)


def label(candidate: Candidate) -> str:
    rows, warps, block_c, prefetch = candidate
    return f"r{rows} w{warps} c{block_c or 'row'}{' pf' if prefetch else ''}"


def outputs(case: Case, seed: torch.Tensor) -> list[torch.Tensor]:
    """The forward output and every input gradient of one Triton pass."""
    leaves = [a for a in case.inputs if isinstance(a, torch.Tensor) and a.requires_grad]
    with ivn_kernels.using("triton"):
        out = case.fn(*case.inputs)
        grads = torch.autograd.grad(out, leaves, seed)
    return [out.detach(), *grads]


def max_rel_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(((g.double() - w.double()).norm() / w.double().norm().clamp_min(1e-30)).item()
               for g, w in zip(got, want))


def sweep(device: str, scale: int, tried: list[Candidate]) -> list[dict]:
    dtypes = (torch.bfloat16, torch.float32) if device == "cuda" else (torch.float32,)
    results = []
    for dtype in dtypes:
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
        for case in token_cases(device, dtype, scale):
            c = case.inputs[0].shape[-1]
            with ivn_kernels.using("triton"):
                seed = torch.randn_like(case.fn(*case.inputs))
            shipped = outputs(case, seed)
            for candidate in [None, *tried]:  # None: the shipped per-kernel tiling
                if candidate is None:
                    choose, name, passes = kt._tiling, "shipped", (False, True)
                else:
                    t = resolve(candidate, c)
                    if t.rows * t.block_c < 32 * t.warps:  # threads left without an element
                        continue
                    choose = uniform(candidate)
                    # forwards never prefetch: a prefetching candidate's forward is its twin's
                    name, passes = label(candidate), (True,) if t.prefetch else (False, True)
                row = {"op": case.name, "dtype": str(dtype).split(".")[-1], "tiling": name,
                       "shipped": candidate is None}
                with token_tiling(choose):
                    err = max_rel_error(outputs(case, seed), shipped)
                    if err > tol:  # a wrong tiling is reported, never timed
                        print(f"MISMATCH {case.name} {dtype} {name}: rel error {err:.2e}")
                        results.append({**row, "rel_error": err, "error": "outputs differ"})
                        continue
                    for backward in passes:
                        moved = case.bytes_fwd + (case.bytes_bwd if backward else 0)
                        ms = median_ms(runner(case, "triton", backward), device, graph=True)
                        results.append({**row, "pass": "fwd_bwd" if backward else "fwd", "ms": ms,
                                        "GBps": moved / ms / 1e6, "rel_error": err})
    return results


def best_table(results: list[dict], copy_gbps: float) -> str:
    """Per case and pass: the shipped tiling beside the best one, as GB/s and share of copy."""
    lines = [f"{'op':14s} {'dtype':9s} {'pass':8s} {'shipped':>18s} {'GB/s':>7s} {'copy':>5s} "
             f"{'best':>18s} {'GB/s':>7s} {'copy':>5s}"]
    timed = [r for r in results if "error" not in r]
    for key in dict.fromkeys((r["op"], r["dtype"], r["pass"]) for r in timed):
        group = [r for r in timed if (r["op"], r["dtype"], r["pass"]) == key]
        cells = [f"{r['tiling']:>18s} {r['GBps']:7.0f} "
                 f"{r['GBps'] / copy_gbps:5.0%}"
                 for r in (next(r for r in group if r["shipped"]), max(group, key=lambda r: r["GBps"]))]
        lines.append(f"{key[0]:14s} {key[1]:9s} {key[2]:8s} " + " ".join(cells))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU through the Triton interpreter")
    parser.add_argument("--rows", default="2,4,8", help="rows per program to try (comma-separated)")
    parser.add_argument("--warps", default="4,8", help="warps per program to try (comma-separated)")
    parser.add_argument("--block-c", default="0,256", help="column blocks to try; 0: the whole padded row")
    parser.add_argument("--prefetch", default="0,1", help="1: the batch-walking kernels keep two clips in flight")
    parser.add_argument("--json", type=Path, default=None, help="write every timing here")
    args = parser.parse_args()
    if not ivn_kernels.HAS_TRITON:
        parser.error('needs triton: pip install -e ".[dev]"')
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("no CUDA device; use --cpu-smoke for the CPU interpreter run")
    device, scale = ("cpu", 512) if args.cpu_smoke else ("cuda", 1)
    rows, warps, block_c, prefetch = ([int(v) for v in text.split(",")]
                                      for text in (args.rows, args.warps, args.block_c, args.prefetch))
    tried = [(r, w, c, bool(p)) for r in rows for w in warps for c in block_c for p in prefetch]
    copy_gbps = ceilings(device)["copy_GBps"]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu-interpreter"
    results = sweep(device, scale, tried)
    print(f"{name}: copy {copy_gbps:.0f} GB/s")
    print(best_table(results, copy_gbps))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": name, "torch": torch.__version__, "triton": triton.__version__, "copy_GBps": copy_gbps,
            "command": " ".join(["python -m bench.tune_tokens", *sys.argv[1:]]),
            "results": results}, indent=1))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
