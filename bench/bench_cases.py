"""Benchmark cases shared by the pytest-benchmark suites and gpu_check.py.

Sizes are the ViT-B Stage 1 ones: 16-frame clips of 4096 tokens with 1024 visible, widths 768
(encoder) and 1024 (predictor input), batch 16; the diffusion decoder (width 1536, depth 6,
588-pixel targets, 768-wide z) on 3072 masked tokens x 16 clips = 49152 rows. `scale` divides
the row counts for CPU runs. Bytes are the fewest a pass must move (each input read once, each
output written once); FLOPs count the decoder's matmuls only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

import ivn_kernels
from ivn_fast.models.decoders import DiffusionDecoder
from ivn_fast.models.diffusion import GaussianDiffusion
from ivn_kernels import diffusion as kd
from ivn_kernels import tokens as kt

BATCH, TOKENS, VISIBLE, TOKEN_WIDTHS = 16, 4096, 1024, (768, 1024)
ROWS, WIDTH, DEPTH, TARGET, Z_DIM, FREQ = 49152, 1536, 6, 3 * 14 * 14, 768, 256
VARIANTS = ("reference", "compiled", "triton", "compiled_triton")


@dataclass
class Case:
    """One op at one size: `fn(*inputs)` is the public (switch-dispatched) function."""

    name: str
    fn: Callable[..., torch.Tensor]
    inputs: tuple
    bytes_fwd: int
    bytes_bwd: int = 0  # extra bytes of the backward; 0: the op has no backward
    flops_fwd_bwd: int = 0

    @property
    def differentiable(self) -> bool:
        return self.bytes_bwd > 0


@contextlib.contextmanager
def token_tiling(choose: Callable[[int, str], kt.Tiling]) -> Iterator[None]:
    """Run the token ops with `choose(C, kernel)` in place of the shipped `ivn_kernels.tokens._tiling`."""
    shipped = kt._tiling
    kt._tiling = choose
    try:
        yield
    finally:
        kt._tiling = shipped


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.requires_grad_(True)


def token_cases(device: str, dtype: torch.dtype, scale: int = 1) -> list[Case]:
    b, n, k = BATCH // min(scale, BATCH), TOKENS // scale, VISIBLE // scale
    cases = []
    for c in TOKEN_WIDTHS:
        es = torch.finfo(dtype).bits // 8
        idx = torch.rand(b, n, device=device).argsort(dim=1)[:, :k].sort(dim=1).values
        x = _leaf(torch.randn(b, n, c, device=device, dtype=dtype))
        pos = _leaf(torch.randn(n, c, device=device, dtype=dtype))
        vis = _leaf(torch.randn(b, k, c, device=device, dtype=dtype))
        mask_token = _leaf(torch.randn(c, device=device, dtype=dtype))
        cases.append(Case(f"gather_C{c}", kt.gather_tokens, (x, idx, pos),
                          bytes_fwd=(2 * b * k * c + n * c) * es, bytes_bwd=(b * k * c + b * n * c + n * c) * es))
        cases.append(Case(f"merge_C{c}", kt.merge_tokens, (vis, idx, mask_token, pos, n),
                          bytes_fwd=(b * k * c + n * c + b * n * c) * es,
                          bytes_bwd=(b * n * c + b * k * c + n * c) * es))
    return cases


def decoder_cases(device: str, dtype: torch.dtype, scale: int = 1) -> list[Case]:
    m, w = ROWS // scale, WIDTH
    es = torch.finfo(dtype).bits // 8
    x = _leaf(torch.randn(m, w, device=device, dtype=dtype))
    h = _leaf(torch.randn(m, w, device=device, dtype=dtype))
    # adaLN slices: strided leaves of one [m, 3w] projection, as .chunk hands them to the ops
    ada = torch.randn(m, 3 * w, device=device, dtype=dtype)
    shift, scale_, gate = (_leaf(part.detach()) for part in ada.chunk(3, dim=-1))
    weight, bias = _leaf(torch.randn(w, device=device)), _leaf(torch.randn(w, device=device))
    tables = torch.tensor(GaussianDiffusion.cosine(1000)._stacked[:2], dtype=torch.float32, device=device)
    t = torch.randint(0, 1000, (m,), device=device)
    x0 = torch.randn(m, TARGET, device=device)
    noise = torch.randn(m, TARGET, device=device)
    mw = m * w * es
    return [
        Case("ln_modulate", kd.layer_norm_modulate, (x, weight, bias, shift, scale_, 1e-6),
             bytes_fwd=4 * mw, bytes_bwd=6 * mw),  # fwd: x, shift, scale, out; bwd: +g, x, scale -> gx, gscale
        Case("gated_residual", kd.gated_residual, (x, gate, h), bytes_fwd=4 * mw, bytes_bwd=5 * mw),
        Case("q_sample", kd.q_sample_at, (x0, noise, t, tables[0], tables[1]), bytes_fwd=3 * m * TARGET * 4),
        Case("timestep_embedding", kd.timestep_embedding, (t, FREQ), bytes_fwd=m * FREQ * 4 + m * 8),
    ]


def decoder_model(device: str, dtype: torch.dtype, scale: int = 1, width: int = WIDTH, depth: int = DEPTH) -> Case:
    """The whole diffusion loss, forward + backward, as Stage 1 runs it (bf16: autocast, fp32=False);
    a narrower, shallower net keeps CPU smoke runs short."""
    m = ROWS // scale
    torch.manual_seed(0)
    decoder = DiffusionDecoder(Z_DIM, TARGET, width, depth, fp32=dtype == torch.float32).to(device)
    for p in decoder.parameters():  # the zero-initialised adaLN would make every block trivial
        torch.nn.init.normal_(p, std=0.02)
    z = _leaf(torch.randn(m, Z_DIM, device=device))
    target = torch.rand(m, TARGET, device=device) * 2 - 1
    linear = sum(mod.in_features * mod.out_features for mod in decoder.modules() if isinstance(mod, torch.nn.Linear))

    def loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return decoder.loss(z, target)

    return Case("decoder_loss", loss, (z, target), bytes_fwd=0, bytes_bwd=1, flops_fwd_bwd=3 * 2 * m * linear)


def runner(case: Case, variant: str, backward: bool) -> Callable[[], None]:
    """A closure running one pass of `case` on the chosen path: eager or torch.compile'd, through
    the PyTorch references or the Triton ops (compiled_triton: the ops inside the compiled graph,
    as the trainer runs them)."""
    mode = "triton" if variant.endswith("triton") else "torch"
    fn = torch.compile(case.fn) if variant.startswith("compiled") else case.fn
    leaves = [a for a in case.inputs if isinstance(a, torch.Tensor) and a.requires_grad]
    if backward:
        with ivn_kernels.using(mode):
            out = case.fn(*case.inputs)
            seed = torch.randn_like(out.float()).to(out.dtype)

    def run() -> None:
        with ivn_kernels.using(mode), (contextlib.nullcontext() if backward else torch.no_grad()):
            out = fn(*case.inputs)
            if backward:
                torch.autograd.backward(out, seed)
                for a in leaves:
                    a.grad = None

    return run
