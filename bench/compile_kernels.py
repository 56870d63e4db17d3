"""Compile every Triton kernel the ops launch, for a GPU architecture, on a machine without one.

    python -m bench.compile_kernels [--arch 90] [--json OUT]

The interpreter that runs the parity tests on CPU accepts code the compiler rejects; this finds
that without a GPU. The ops run once on CPU tensors with every kernel launch captured
instead of run, in float32 and bfloat16, forward and backward, under the shipped token tiling
and a cut one with prefetch (the options bench.tune_tokens sweeps). Each distinct launch is then
compiled to a cubin with the ptxas that ships with triton, and its registers, spills and shared
memory are listed: with the warps, they bound how many programs an SM holds at once. Integer
arguments compile as generic i32 / i64: a launch specialises those equal to 1 and adds alignment
hints, so its build can differ a little from the one listed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("bench.compile_kernels compiles kernels: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402

try:
    import triton
except ImportError:
    sys.exit("bench.compile_kernels needs triton: pip install -e \".[dev]\"")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from bench.bench_cases import FREQ, TARGET, TOKEN_WIDTHS, WIDTH, token_tiling  # noqa: E402
from ivn_fast.models.diffusion import GaussianDiffusion  # noqa: E402
from ivn_kernels import diffusion as kd  # noqa: E402
from ivn_kernels import tokens as kt  # noqa: E402

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
          torch.int64: "i64"}
REGISTERS_PER_SM, MAX_WARPS_PER_SM, MAX_PROGRAMS_PER_SM = 65536, 64, 32  # sm_80 and sm_90


@contextlib.contextmanager
def captured_launches() -> Iterator[list[tuple[JITFunction, dict, int]]]:
    """Every kernel launch in the block, as (kernel, argument by name, warps); nothing runs, so
    outputs are left as allocated. The ops take their Triton path on CPU tensors meanwhile."""
    launches: list[tuple[JITFunction, dict, int]] = []

    def record(self: JITFunction, *args, grid, warmup, **kwargs):
        warps = kwargs.pop("num_warps", 4)
        launches.append((self, {**dict(zip(self.arg_names, args)), **kwargs}, warps))

    saved = JITFunction.run, kt.use_triton, kd.use_triton
    JITFunction.run = record
    kt.use_triton = kd.use_triton = lambda x: True
    try:
        yield launches
    finally:
        JITFunction.run, kt.use_triton, kd.use_triton = saved


def run_ops(dtype: torch.dtype) -> None:
    """Each public op forward and backward at the ViT-B Stage 1 widths (the tiles follow the
    widths alone, so few rows do)."""
    def leaf(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, dtype=dt).requires_grad_(True)

    b, n, k, m = 2, 64, 16, 32
    idx = torch.rand(b, n).argsort(1)[:, :k]
    for c in TOKEN_WIDTHS:
        for out in (kt.gather_tokens(leaf(b, n, c), idx, leaf(n, c)), kt.gather_tokens(leaf(b, n, c), idx),
                    kt.merge_tokens(leaf(b, k, c), idx, leaf(c), leaf(n, c), n)):
            out.sum().backward()
    w = WIDTH
    shift, scale, gate = leaf(m, 3 * w).chunk(3, dim=-1)
    x = leaf(m, w, dt=torch.float32)  # the residual stream stays float32
    kd.layer_norm_modulate(x, leaf(w, dt=torch.float32), leaf(w, dt=torch.float32), shift, scale, 1e-6,
                           dtype).sum().backward()
    kd.layer_norm_modulate(x, None, None, shift, scale, 1e-6, dtype).sum().backward()
    kd.gated_residual(x, gate, leaf(m, w)).sum().backward()
    tables = torch.tensor(GaussianDiffusion.cosine(1000)._stacked[:2], dtype=torch.float32)
    t = torch.randint(0, 1000, (m,))
    kd.q_sample_at(torch.randn(m, TARGET), torch.randn(m, TARGET), t, tables[0], tables[1])
    kd.timestep_embedding(t, FREQ)


def signature(kernel: JITFunction, args: dict) -> tuple[dict[str, str], dict[str, object]]:
    types, constants = {}, {}
    for p in kernel.params:
        value = args[p.name]
        if p.is_constexpr:
            types[p.name], constants[p.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            types[p.name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, bool):
            types[p.name] = "i1"
        elif isinstance(value, int):
            types[p.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif isinstance(value, float):
            types[p.name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: cannot type argument {p.name}={value!r}")
    return types, constants


def resources(cubin: bytes) -> dict[str, int]:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", text)
    return {"registers": int(found[1]), "stack": int(found[2]), "shared": int(found[3])}


def programs_per_sm(registers: int, warps: int) -> int:
    """Resident programs an SM holds by registers (allocated per warp in 256s) and warps."""
    per_program = -(-registers * 32 // 256) * 256 * warps
    return min(REGISTERS_PER_SM // per_program, MAX_WARPS_PER_SM // warps, MAX_PROGRAMS_PER_SM)


def compile_all(arch: int) -> list[dict]:
    launches = []
    cut = kt.Tiling(rows=4, block_c=256, warps=4, prefetch=True)
    for choose in (kt._tiling, lambda width, kernel: cut):
        for dtype in (torch.float32, torch.bfloat16):
            with captured_launches() as found, token_tiling(choose):
                run_ops(dtype)
            launches += found
    target, rows, seen = GPUTarget("cuda", arch, 32), [], set()
    for kernel, args, warps in launches:
        types, constants = signature(kernel, args)
        key = (kernel.fn.__name__, tuple(types.items()), tuple(constants.items()), warps)
        if key in seen:
            continue
        seen.add(key)
        row = {"kernel": kernel.fn.__name__, "warps": warps,
               "types": ",".join(t for t in types.values() if t != "constexpr"),
               "constexprs": {name: value for name, value in constants.items()}}
        try:
            compiled = triton.compile(ASTSource(kernel, types, constants), target=target,
                                      options={"num_warps": warps})
        except Exception as e:  # reported with the launch that failed, then the next one
            rows.append({**row, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}"})
            continue
        use = resources(compiled.asm["cubin"])
        rows.append({**row, **use, "programs_per_sm": programs_per_sm(use["registers"], warps)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    rows = compile_all(args.arch)
    print(f"sm_{args.arch}, triton {triton.__version__}: {len(rows)} distinct launches")
    print(f"{'kernel':26s} {'warps':>5s} {'regs':>5s} {'spill':>6s} {'smem':>6s} {'progs/SM':>8s}  constexprs")
    for r in rows:
        consts = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        if "error" in r:
            print(f"{r['kernel']:26s} {r['warps']:5d}  FAILED {r['error']}  ({consts})")
        else:
            print(f"{r['kernel']:26s} {r['warps']:5d} {r['registers']:5d} {r['stack']:6d} {r['shared']:6d} "
                  f"{r['programs_per_sm']:8d}  {r['types']} {consts}")
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "triton": triton.__version__, "launches": rows},
                                        indent=1, default=str))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
