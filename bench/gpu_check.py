"""One-call GPU check of the fused kernels: parity tests, the two ceilings, every op's timings,
decoder loss parity, a compact table and a JSON record.

    python bench/gpu_check.py [--out PATH]        # on a CUDA machine, from the repo root
    python bench/gpu_check.py --cpu-smoke         # tiny sizes through the Triton interpreter
    python bench/gpu_check.py --variants reference,triton   # skip compiling: a quick kernel timing

Each op runs as reference (eager PyTorch), compiled (torch.compile of the reference), triton
(the custom op, eager) and compiled_triton (the custom op inside a compiled graph, as the
trainer runs it), forward and forward + backward, in bf16 and fp32. Token and elementwise ops
are timed as CUDA-graph replays (kernel time, the number to hold against copy bandwidth) and
as one eager call (what Python and launches add); the decoder loss with triton.testing.do_bench.
Works from an editable install or straight from a checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "--cpu-smoke" in sys.argv
if SMOKE:  # the interpreter is chosen when triton is first imported
    os.environ["TRITON_INTERPRET"] = "1"


def _importable() -> None:
    """Run from a checkout without `pip install -e .`: the repository root (for ivn_fast and
    bench) and kernels/ (for ivn_kernels) on the path, for this process and its pytest run."""
    paths = [str(ROOT), str(ROOT / "kernels")]
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


_importable()

import torch  # noqa: E402

import ivn_kernels  # noqa: E402
from bench.bench_cases import VARIANTS, decoder_cases, decoder_model, runner, token_cases  # noqa: E402


def median_ms(fn, device: str, graph: bool = False) -> float:
    """Median milliseconds of fn. graph=True replays a CUDA graph of many calls, so the time is
    the kernels' alone, without Python and launch overhead (which dominates ops this small)."""
    if device == "cuda":
        import triton.testing

        if graph:
            return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"))
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


def ceilings(device: str) -> dict:
    """Copy bandwidth (read + write bytes) and bf16 matmul rate, measured on random data."""
    n = (1 << 28) if device == "cuda" else (1 << 20)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), device)
    k = 8192 if device == "cuda" else 256
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(k, k, device=device, dtype=dtype), torch.randn(k, k, device=device, dtype=dtype)
    mm_ms = median_ms(lambda: a @ b, device)
    return {"copy_GBps": 2 * src.numel() * 4 / copy_ms / 1e6, "matmul_TFLOPs": 2 * k**3 / mm_ms / 1e9,
            "matmul_dtype": str(dtype)}


def run_tests(device: str) -> dict:
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_kernels_*.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not gpu_check", *files]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-400:]
    print(f"kernel tests ({device}): {tail}")
    return {"command": " ".join(cmd), "returncode": proc.returncode, "summary": tail,
            "seconds": time.perf_counter() - start}


def time_cases(device: str, scale: int, variants: tuple[str, ...]) -> list[dict]:
    rows = []
    dtypes = (torch.bfloat16, torch.float32) if device == "cuda" else (torch.float32,)
    for dtype in dtypes:
        for case in token_cases(device, dtype, scale) + decoder_cases(device, dtype, scale):
            for backward in (False, True) if case.differentiable else (False,):
                moved = case.bytes_fwd + (case.bytes_bwd if backward else 0)
                row = {"op": case.name, "dtype": str(dtype).split(".")[-1], "pass": "fwd_bwd" if backward else "fwd",
                       "bytes": moved}
                for variant in variants:
                    ms = median_ms(runner(case, variant, backward), device, graph=True)
                    row[f"{variant}_ms"] = ms
                    row[f"{variant}_GBps"] = moved / ms / 1e6
                    # one eager call as a user sees it, Python and launches included
                    row[f"{variant}_call_ms"] = median_ms(runner(case, variant, backward), device)
                rows.append(row)
    return rows


def decoder(device: str, scale: int, variants: tuple[str, ...], **size) -> list[dict]:
    rows = []
    dtypes = (torch.bfloat16, torch.float32) if device == "cuda" else (torch.float32,)
    for dtype in dtypes:
        case = decoder_model(device, dtype, scale, **size)
        row = {"op": case.name, "dtype": str(dtype).split(".")[-1], "pass": "fwd_bwd", "flops": case.flops_fwd_bwd}
        for variant in variants:
            ms = median_ms(runner(case, variant, True), device)
            row[f"{variant}_ms"] = ms
            row[f"{variant}_TFLOPs"] = case.flops_fwd_bwd / ms / 1e9
        rows.append(row)
        del case
    return rows


def decoder_parity(device: str, scale: int, **size) -> dict:
    """fp32 loss and gradient of the same draw on both paths: they must agree to 1e-3."""
    case = decoder_model(device, torch.float32, scale, **size)
    z = case.inputs[0]
    results = {}
    for mode in ("torch", "triton"):
        with ivn_kernels.using(mode):
            loss = case.fn(*case.inputs)
            (grad,) = torch.autograd.grad(loss, [z])
        results[mode] = (loss.detach().double(), grad.double())
    (ref_loss, ref_grad), (loss, grad) = results["torch"], results["triton"]
    loss_rel = ((loss - ref_loss).abs() / ref_loss.abs()).item()
    grad_rel = ((grad - ref_grad).norm() / ref_grad.norm()).item()
    ok = loss_rel < 1e-3 and grad_rel < 1e-3
    print(f"decoder fp32 parity: loss rel {loss_rel:.2e}, grad(z) rel {grad_rel:.2e} -> {'ok' if ok else 'FAIL'}")
    return {"loss_rel": loss_rel, "grad_z_rel": grad_rel, "ok": ok}


def table(rows: list[dict], variants: tuple[str, ...], unit: str) -> str:
    head = f"{'op':22s} {'dtype':9s} {'pass':8s}" + "".join(f"{v + ' ms':>14s}" for v in variants)
    head += "".join(f"{v + ' ' + unit:>18s}" for v in variants) + f"{'vs comp.':>9s}"
    lines = [head]
    for r in rows:
        line = f"{r['op']:22s} {r['dtype']:9s} {r['pass']:8s}"
        line += "".join(f"{r[v + '_ms']:14.3f}" for v in variants)
        line += "".join(f"{r[v + '_' + unit]:18.4g}" for v in variants)
        base = r.get("compiled_ms", r.get("reference_ms"))
        best = min(r[v + "_ms"] for v in variants if v.endswith("triton"))
        line += f"{base / best:9.2f}" if base else f"{'-':>9s}"
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU through the Triton interpreter")
    parser.add_argument("--out", help="JSON path (default bench/results/kernels-<device>.json)")
    parser.add_argument("--no-tests", action="store_true", help="skip the kernel parity tests")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated variants to time (default all: {','.join(VARIANTS)}); "
                             "leaving out the compiled ones saves their compile time")
    args = parser.parse_args()
    asked = set(args.variants.split(","))
    chosen = tuple(v for v in VARIANTS if v in asked)
    unknown = asked - set(VARIANTS)
    if unknown or not any(v.endswith("triton") for v in chosen):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}, at least one Triton variant")
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --cpu-smoke for the CPU interpreter run", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu_smoke else "cuda"
    scale = 512 if args.cpu_smoke else 1
    # torch.compile on CPU would build C++ for every case: the smoke run skips that variant
    variants = tuple(v for v in chosen if not v.startswith("compiled")) if args.cpu_smoke else chosen
    record_timing = ("token and elementwise ops: median of CUDA-graph replays (kernel time); *_call_ms: one eager "
                     "call with Python and launch overhead; decoder: median of eager calls (do_bench)")
    import triton

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu-interpreter"
    record = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
              "command": " ".join([sys.executable, *sys.argv]), "sizes_divided_by": scale, "variants": variants, "timing": record_timing}
    if not args.no_tests:
        record["tests"] = run_tests(device)
    record["ceilings"] = ceilings(device)
    print(f"{name}: copy {record['ceilings']['copy_GBps']:.0f} GB/s, "
          f"{record['ceilings']['matmul_dtype']} matmul {record['ceilings']['matmul_TFLOPs']:.1f} TFLOP/s")
    torch.manual_seed(0)
    record["ops"] = time_cases(device, scale, variants)
    size = {"width": 64, "depth": 2} if args.cpu_smoke else {}
    record["decoder"] = decoder(device, scale, variants, **size)
    record["decoder_parity"] = decoder_parity(device, scale, **size)
    out = Path(args.out or ROOT / "bench" / "results" / f"kernels-{name.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(table(record["ops"], variants, "GBps"))
    print(table(record["decoder"], variants, "TFLOPs"))
    print(f"written {out}")
    failed = record.get("tests", {}).get("returncode", 0) != 0 or not record["decoder_parity"]["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
