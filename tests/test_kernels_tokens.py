"""Fused gather / merge kernels against their PyTorch references (forward and backward)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ivn_kernels
from kernel_helpers import check_device, rel, triton_mode  # noqa: F401 (triton_mode: autouse fixture)
from ivn_kernels import tokens as kt
from ivn_kernels.tokens import gather_tokens, gather_tokens_reference, merge_tokens, merge_tokens_reference

pytestmark = pytest.mark.skipif(not ivn_kernels.HAS_TRITON, reason="triton is not installed")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (B, N, K, C): K not a multiple of the row block, C not a power of two, every token visible,
# one visible token, ViT-B width.
SHAPES = [(2, 37, 13, 40), (3, 24, 24, 32), (2, 19, 1, 24), (2, 20, 7, 768)]


def random_idx(b: int, n: int, k: int, device: str, strided: bool) -> torch.Tensor:
    """Unique indices per row (as masks give); `strided` hands the kernel a non-contiguous view."""
    perm = torch.rand(b, n, device=device).argsort(dim=1)
    return perm[:, : 2 * k : 2] if strided and 2 * k <= n else perm[:, :k]


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def grads(out: torch.Tensor, g: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, inputs, g))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_pos", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_gather_matches_reference(device, shape, with_pos, strided):
    check_device(device)
    b, n, k, c = shape
    # strided: x is a slice along tokens (as the predictor's x[:, num_cls:]), pos a column slice
    x = leaf(torch.randn(b, n + 3, c, device=device)[:, 3:] if strided else torch.randn(b, n, c, device=device))
    pos = leaf(torch.randn(n, c + 5, device=device)[:, :c]) if with_pos else None
    idx = random_idx(b, n, k, device, strided)
    inputs = [x] + ([pos] if with_pos else [])
    out = gather_tokens(x, idx, pos)
    ref = gather_tokens_reference(x, idx, pos)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert rel(out, ref) < 1e-6
    g = torch.randn_like(ref)
    for got, want in zip(grads(out, g, inputs), grads(ref, g, inputs)):
        assert rel(got, want) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("strided", [False, True])
def test_merge_matches_reference(device, shape, strided):
    check_device(device)
    b, n, k, c = shape
    vis = leaf(torch.randn(b, k + 4, c, device=device)[:, 4:] if strided else torch.randn(b, k, c, device=device))
    mask_token = leaf(torch.randn(c, device=device))
    pos = leaf(torch.randn(n, c + 5, device=device)[:, :c] if strided else torch.randn(n, c, device=device))
    idx = random_idx(b, n, k, device, strided)
    inputs = [vis, mask_token, pos]
    out = merge_tokens(vis, idx, mask_token, pos, n)
    ref = merge_tokens_reference(vis, idx, mask_token, pos, n)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert rel(out, ref) < 1e-6
    g = torch.randn_like(ref)
    for got, want in zip(grads(out, g, inputs), grads(ref, g, inputs)):
        assert rel(got, want) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 37, 13, 40), (2, 20, 7, 768)])
def test_cut_tiling_matches_reference(device, shape, monkeypatch):
    """Column blocks narrower than C (the last one partial) and two clips in flight, the tiling
    options bench.tune_tokens sweeps, against the references."""
    check_device(device)
    monkeypatch.setattr(kt, "_tiling", lambda c, kernel: kt.Tiling(rows=2, block_c=16, warps=4, prefetch=True))
    b, n, k, c = shape
    x, pos = leaf(torch.randn(b, n, c, device=device)), leaf(torch.randn(n, c, device=device))
    vis, mask_token = leaf(torch.randn(b, k, c, device=device)), leaf(torch.randn(c, device=device))
    idx = random_idx(b, n, k, device, False)
    for fn, ref, inputs, leaves in (
        (gather_tokens, gather_tokens_reference, (x, idx, pos), [x, pos]),
        (merge_tokens, merge_tokens_reference, (vis, idx, mask_token, pos, n), [vis, mask_token, pos]),
    ):
        out, want = fn(*inputs), ref(*inputs)
        assert rel(out, want) < 1e-6
        g = torch.randn_like(want)
        for got, expected in zip(grads(out, g, leaves), grads(want, g, leaves)):
            assert rel(got, expected) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_inverse_index(device):
    """The one-kernel inverse map (fill, barrier, scatter) against scatter_ into a filled map."""
    check_device(device)
    b, n, k = 3, 2500, 1100  # more than one 1024-wide block for the fill and the scatter
    idx = random_idx(b, n, k, device, strided=True)
    want = torch.full((b, n), -1, dtype=torch.int32, device=device)
    want.scatter_(1, idx, torch.arange(k, dtype=torch.int32, device=device).expand(b, k))
    assert torch.equal(kt._inverse_index(idx, n), want)
    bad = idx.clone()
    bad[0, 0], bad[1, 0] = -1, n  # out of range: written nowhere, not into a neighbouring clip's row
    got = kt._inverse_index(bad, n)
    want[0, idx[0, 0]], want[1, idx[1, 0]] = -1, -1
    assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 kernels are checked on CUDA")
def test_bf16_on_cuda():
    b, n, k, c = 4, 4096 // 8, 1024 // 8, 768
    x = leaf(torch.randn(b, n, c, device="cuda", dtype=torch.bfloat16))
    pos = leaf(torch.randn(n, c, device="cuda", dtype=torch.bfloat16))
    idx = random_idx(b, n, k, "cuda", False)
    g = torch.randn(b, k, c, device="cuda", dtype=torch.bfloat16)
    out, ref = gather_tokens(x, idx, pos), gather_tokens_reference(x.float(), idx, pos.float())
    assert out.dtype == torch.bfloat16 and rel(out, ref) < 1e-2
    for got, want in zip(grads(out, g, [x, pos]), grads(ref, g.float(), [x, pos])):
        assert rel(got, want) < 1e-2
    vis, mt = leaf(torch.randn(b, k, c, device="cuda", dtype=torch.bfloat16)), leaf(torch.randn(c, device="cuda"))
    g = torch.randn(b, n, c, device="cuda", dtype=torch.bfloat16)
    out = merge_tokens(vis, idx, mt, pos, n)
    ref = merge_tokens_reference(vis.float(), idx, mt, pos.float(), n)
    assert out.dtype == torch.bfloat16 and rel(out, ref) < 1e-2
    for got, want in zip(grads(out, g, [vis, mt, pos]), grads(ref, g.float(), [vis, mt, pos])):
        assert rel(got, want) < 1e-2


def test_compile_fullgraph_traces_the_ops():
    """Dynamo must see the custom ops (no graph break) and the compiled step must match eager."""
    device = DEVICES[-1]
    check_device(device)
    b, n, k, c = 2, 24, 9, 40
    x, pos, mt = leaf(torch.randn(b, n, c, device=device)), leaf(torch.randn(n, c, device=device)), leaf(
        torch.randn(c, device=device))
    idx = random_idx(b, n, k, device, False)

    def step(x, pos, mt):
        vis = gather_tokens(x, idx, pos) * 2.0
        return merge_tokens(vis, idx, mt, pos, n).square().sum()

    backend = "inductor" if device == "cuda" else "aot_eager"  # CPU: trace without a C++ build
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    got = compiled(x, pos, mt)
    got_grads = torch.autograd.grad(got, [x, pos, mt])
    with ivn_kernels.using("torch"):
        want = step(x, pos, mt)
    want_grads = torch.autograd.grad(want, [x, pos, mt])
    assert rel(got.detach(), want.detach()) < 1e-5
    for a, w in zip(got_grads, want_grads):
        assert rel(a, w) < 1e-5


def test_switch_modes():
    x = torch.randn(2, 3)
    with ivn_kernels.using("torch"):
        assert not ivn_kernels.use_triton(x)
    with ivn_kernels.using("auto"):
        assert not ivn_kernels.use_triton(x)  # auto keeps CPU tensors on the reference
        if torch.cuda.is_available():
            assert ivn_kernels.use_triton(x.cuda())
    with pytest.raises(ValueError):
        ivn_kernels.set_kernels("cuda")


def test_package_works_without_triton():
    """No triton: the package imports, refuses 'triton', and every op runs the reference."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, ivn_kernels\n"
        "from ivn_kernels.tokens import gather_tokens\n"
        "from ivn_kernels.diffusion import gated_residual\n"
        "assert not ivn_kernels.HAS_TRITON\n"
        "try:\n    ivn_kernels.set_kernels('triton')\nexcept ValueError:\n    pass\n"
        "else:\n    raise SystemExit('triton mode accepted without triton')\n"
        "x = torch.randn(2, 5, 3)\n"
        "assert torch.equal(gather_tokens(x, torch.tensor([[1, 4], [0, 2]])), x[[[0], [1]], [[1, 4], [0, 2]]])\n"
        "torch.testing.assert_close(gated_residual(x, x, x), x + x * x)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gpu_check_cpu_smoke(tmp_path):
    """bench/gpu_check.py end to end in its CPU mode (tiny sizes, interpreter), JSON included."""
    out = tmp_path / "kernels.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(script), "--cpu-smoke", "--no-tests", "--variants", "triton",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["decoder_parity"]["ok"]
    assert {r["op"] for r in record["ops"]} >= {"gather_C768", "merge_C1024", "ln_modulate", "q_sample"}
    assert all(r["triton_ms"] > 0 and "reference_ms" not in r for r in record["ops"] + record["decoder"])
    bad = subprocess.run([sys.executable, str(script), "--cpu-smoke", "--variants", "reference"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "at least one Triton variant" in bad.stderr


def test_tiling_sweep_cpu_smoke(tmp_path):
    """bench.tune_tokens through the interpreter: every tiling tried gives the shipped tiling's
    outputs and gradients, and the shipped one is always among those timed."""
    out = tmp_path / "tune.json"
    proc = subprocess.run([sys.executable, "-m", "bench.tune_tokens", "--cpu-smoke", "--rows", "1,2", "--warps", "16",
                           "--block-c", "0,256", "--prefetch", "0,1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    results = json.loads(out.read_text())["results"]
    # 1 row of a 256-wide block would leave 16 warps idle: skipped; the rest, both prefetch forms, timed
    assert {r["tiling"] for r in results} == {"r1 w16 crow", "r1 w16 crow pf", "r2 w16 crow", "r2 w16 crow pf",
                                              "r2 w16 c256", "r2 w16 c256 pf", "shipped"}
    assert all(r["rel_error"] <= 1e-5 and r["ms"] > 0 for r in results)
    assert {r["op"] for r in results if r["shipped"]} == {"gather_C768", "gather_C1024", "merge_C768", "merge_C1024"}
