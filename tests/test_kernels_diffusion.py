"""Fused diffusion-decoder kernels against their PyTorch references, and the whole Stage 1 loss
with the Triton path against the reference path."""

import pytest
import torch

import ivn_kernels
from ivn_fast.config import build_config
from ivn_fast.models.diffusion import GaussianDiffusion
from ivn_fast.models.stage1 import Stage1Model
from ivn_fast.train.stage1 import token_grid
from kernel_helpers import check_device, rel, triton_mode  # noqa: F401 (triton_mode: autouse fixture)
from ivn_kernels.diffusion import (
    gated_residual,
    gated_residual_reference,
    layer_norm_modulate,
    layer_norm_modulate_reference,
    q_sample_at,
    q_sample_at_reference,
    timestep_embedding,
    timestep_embedding_reference,
)

pytestmark = pytest.mark.skipif(not ivn_kernels.HAS_TRITON, reason="triton is not installed")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (rows, width): rows not a multiple of the row block, widths not powers of two, the decoder's 1536
SHAPES = [(37, 48), (5, 200), (19, 1536)]


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def compare(fused, reference, inputs: list[torch.Tensor], args: tuple, tol: float, ref_dtype=None) -> None:
    """Forward and every input gradient of fused(*args) against reference(*args); with ref_dtype
    the reference runs on upcast copies (how bf16 is judged)."""
    out = fused(*args)
    ref_args = args if ref_dtype is None else tuple(
        a.to(ref_dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    ref = reference(*ref_args)
    assert out.shape == ref.shape
    assert rel(out, ref) < tol
    if not inputs:
        return
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, inputs, g.to(out.dtype))
    want = torch.autograd.grad(ref, inputs, g)
    for a, w in zip(got, want):
        assert rel(a, w) < tol


def adaln_chunks(m: int, w: int, k: int, device: str, dtype=torch.float32) -> tuple[torch.Tensor, list]:
    """A [m, k*w] adaLN projection and its k column slices (strided views, as .chunk gives)."""
    ada = leaf(torch.randn(m, k * w, device=device, dtype=dtype) * 0.5)
    return ada, list(ada.chunk(k, dim=-1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_modulate(device, shape, affine):
    check_device(device)
    m, w = shape
    x = leaf(torch.randn(m, w, device=device) * 3 + 1)
    ada, (shift, scale) = adaln_chunks(m, w, 2, device)
    weight = leaf(torch.randn(w, device=device)) if affine else None
    bias = leaf(torch.randn(w, device=device)) if affine else None
    inputs = [x, ada] + ([weight, bias] if affine else [])
    compare(layer_norm_modulate, layer_norm_modulate_reference, inputs, (x, weight, bias, shift, scale, 1e-6), 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_residual(device, shape):
    check_device(device)
    m, w = shape
    x, h = leaf(torch.randn(m, w, device=device)), leaf(torch.randn(m, w, device=device))
    ada, (_, _, gate) = adaln_chunks(m, w, 3, device)
    compare(gated_residual, gated_residual_reference, [x, ada, h], (x, gate, h), 1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [256, 6, 100])
def test_timestep_embedding(device, dim):
    check_device(device)
    t = torch.randint(0, 1000, (77,), device=device)
    compare(timestep_embedding, timestep_embedding_reference, [], (t, dim, 10000.0), 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(37, 588), (50, 3)])
def test_q_sample(device, shape):
    check_device(device)
    m, c = shape
    process = GaussianDiffusion.cosine(1000)
    tables = torch.tensor(process._stacked, dtype=torch.float32, device=device)
    x0 = leaf(torch.randn(m, c + 2, device=device)[:, 1:-1])  # rows of a wider buffer
    noise = leaf(torch.randn(m, c, device=device))
    t = torch.randint(0, 1000, (m,), device=device)
    compare(q_sample_at, q_sample_at_reference, [x0, noise], (x0, noise, t, tables[0], tables[1]), 1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes_of_the_bf16_decoder(device):
    """float32 residual stream, bf16 adaLN projection and MLP output: each output and gradient in
    its own input's dtype, against the reference in float32 rounded the same way."""
    check_device(device)
    m, w, bf = 37, 200, torch.bfloat16
    x = leaf(torch.randn(m, w, device=device) * 3 + 1)
    ada, (shift, scale, gate) = adaln_chunks(m, w, 3, device, bf)
    weight, bias = leaf(torch.randn(w, device=device)), leaf(torch.randn(w, device=device))
    h = leaf(torch.randn(m, w, device=device, dtype=bf))

    def both(fn):
        norm = fn(layer_norm_modulate, layer_norm_modulate_reference)(x, weight, bias, shift, scale, 1e-6, bf)
        out = fn(gated_residual, gated_residual_reference)(x, gate, h)
        return norm, out

    fused, ref = both(lambda f, r: f), both(lambda f, r: r)
    assert (fused[0].dtype, fused[1].dtype) == (bf, torch.float32)
    traced = torch.compile(lambda: both(lambda f, r: f), fullgraph=True, backend="aot_eager")()
    assert all(torch.equal(a, b) for a, b in zip(traced, fused))  # the fake kernels give the same dtypes
    assert rel(fused[0], ref[0]) < 1e-2 and rel(fused[1], ref[1]) < 1e-6
    g = (torch.randn(m, w, device=device, dtype=bf), torch.randn(m, w, device=device))
    inputs = [x, ada, weight, bias, h]
    got = torch.autograd.grad(fused, inputs, g)
    want = torch.autograd.grad(ref, inputs, g)
    for a, b, inp in zip(got, want, inputs):
        assert a.dtype == inp.dtype
        assert rel(a, b) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 kernels are checked on CUDA")
def test_bf16_on_cuda():
    m, w, bf = 4099, 1536, torch.bfloat16
    x = leaf(torch.randn(m, w, device="cuda", dtype=bf))
    ada, (shift, scale, gate) = adaln_chunks(m, w, 3, "cuda", bf)
    weight, bias = leaf(torch.randn(w, device="cuda")), leaf(torch.randn(w, device="cuda"))
    compare(layer_norm_modulate, layer_norm_modulate_reference, [x, ada, weight, bias],
            (x, weight, bias, shift, scale, 1e-6), 1e-2, torch.float32)
    h = leaf(torch.randn(m, w, device="cuda", dtype=bf))
    compare(gated_residual, gated_residual_reference, [x, ada, h], (x, gate, h), 1e-2, torch.float32)
    noise = leaf(torch.randn(m, w, device="cuda", dtype=bf))
    tables = torch.rand(2, 1000, device="cuda")
    t = torch.randint(0, 1000, (m,), device="cuda")
    compare(q_sample_at, q_sample_at_reference, [x, noise], (x, noise, t, tables[0], tables[1]), 1e-2,
            torch.float32)


def test_compile_fullgraph_traces_the_ops():
    """One adaLN block step through every op under torch.compile(fullgraph=True), against eager."""
    device = DEVICES[-1]
    check_device(device)
    m, w = 21, 40
    x, h = leaf(torch.randn(m, w, device=device)), leaf(torch.randn(m, w, device=device))
    ada = leaf(torch.randn(m, 3 * w, device=device))
    weight, bias = leaf(torch.randn(w, device=device)), leaf(torch.randn(w, device=device))
    t = torch.randint(0, 1000, (m,), device=device)
    tables = torch.rand(2, 1000, device=device)

    def step(x, h, ada, weight, bias):
        shift, scale, gate = ada.chunk(3, dim=-1)
        y = layer_norm_modulate(x, weight, bias, shift, scale) + timestep_embedding(t, w)
        y = layer_norm_modulate(y, None, None, shift, scale)
        return gated_residual(q_sample_at(x, h, t, tables[0], tables[1]), gate, y).square().mean()

    inputs = [x, h, ada, weight, bias]
    backend = "inductor" if device == "cuda" else "aot_eager"  # CPU: trace without a C++ build
    got = torch.compile(step, fullgraph=True, backend=backend)(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    with ivn_kernels.using("torch"):
        want = step(*inputs)
    want_grads = torch.autograd.grad(want, inputs)
    assert rel(got.detach(), want.detach()) < 1e-5
    for a, b in zip(got_grads, want_grads):
        assert rel(a, b) < 1e-5


def test_stage1_loss_same_on_both_paths():
    """Tiny preset, one forward + backward: the model routes its token movement and decoder
    elementwise ops through the switch, and both paths give the same loss and gradients."""
    device = DEVICES[-1]
    check_device(device)
    cfg = build_config("tiny", {"data": {"num_frames": 4}})
    grid = token_grid(cfg)
    torch.manual_seed(0)
    model = Stage1Model(cfg.model, grid, teacher_width=64, teacher_final_width=32).to(device)
    b, n = 2, grid[0] * grid[1] * grid[2]
    video = torch.randn(b, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size, device=device)
    vis_idx = torch.rand(b, n, device=device).argsort(dim=1)[:, : n // 5].sort(dim=1).values
    probe_mid, probe_final = torch.randn(64, device=device), torch.randn(32, device=device)

    def loss_and_grads(mode: str):
        torch.manual_seed(1)  # the decoder draws t and noise
        with ivn_kernels.using(mode):
            out = model(video, vis_idx)
            loss = out.recon + (out.mid @ probe_mid).mean() + (out.final @ probe_final).mean()
            params = [p for p in model.parameters() if p.requires_grad]
            return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    fused, fused_grads = loss_and_grads("triton")
    ref, ref_grads = loss_and_grads("torch")
    assert rel(fused, ref) < 1e-5
    for a, r in zip(fused_grads, ref_grads):
        if r is not None and r.norm() > 0:
            assert rel(a, r) < 1e-4
