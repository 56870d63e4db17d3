"""Every kernel launch the ops make compiles for an H100 (sm_90), checked on CPU: the parity tests
run the kernels through the interpreter, which accepts code the compiler rejects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ivn_kernels

pytestmark = pytest.mark.skipif(not ivn_kernels.HAS_TRITON, reason="triton is not installed")


def test_every_launch_compiles_for_sm90(tmp_path):
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file():
        pytest.skip("this triton build ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "compiled.json"
    proc = subprocess.run([sys.executable, "-m", "bench.compile_kernels", "--arch", "90", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    launches = json.loads(out.read_text())["launches"]
    assert {r["kernel"] for r in launches} == {
        "_gather_kernel", "_invert_kernel", "_spread_kernel", "_merge_backward_kernel", "_ln_modulate_fwd_kernel",
        "_ln_modulate_bwd_kernel", "_gated_residual_kernel", "_gated_residual_bwd_kernel", "_q_sample_kernel",
        "_timestep_kernel"}
    # both token tilings (the shipped one and a cut one with prefetch) and both dtypes were compiled
    merge_bwd = [r for r in launches if r["kernel"] == "_merge_backward_kernel"]
    assert {(r["constexprs"]["PREFETCH"], r["types"].split(",")[0]) for r in merge_bwd} == {
        (False, "*fp32"), (False, "*bf16"), (True, "*fp32"), (True, "*bf16")}
    assert all(r["registers"] > 0 and r["programs_per_sm"] >= 1 for r in launches)
