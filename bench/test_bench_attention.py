"""Attention at the models' sequence lengths, each installed backend: the encoder's visible tokens
(1024), the predictor's full clip (4096, and windowed as in its local layers), forward and
forward + backward; TFLOP/s of the products each must do. `python -m bench.attention` prints
the full table `auto` follows."""

import pytest
import torch
from bench.attention import flops
from bench.harness import CUDA, DEVICE, SCALE, timed

from ivn_fast.models.attention import installed
from ivn_fast.models.attention_table import WINDOW

BACKENDS = installed()
HEADS, HEAD_DIM = 16, 64
CASES = {"enc1024": (1024, None), "pred4096": (4096, None), "pred4096-window": (4096, WINDOW)}


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("case", list(CASES))
def test_attention(benchmark, case, name, backward):
    seq, window = CASES[case]
    seq = seq // SCALE
    batch = max(1, 32768 // (seq * SCALE))  # about one micro-batch's tokens on a GPU, less on CPU
    dtype = torch.bfloat16 if CUDA else torch.float32
    q, k, v = (torch.randn(batch, seq, HEADS, HEAD_DIM, device=DEVICE, dtype=dtype, requires_grad=backward)
               for _ in range(3))
    backend = BACKENDS[name]
    if not backend.takes(q, window, 0.0):
        pytest.skip(f"{name} does not take this call (window {window})")
    dout = torch.randn_like(q)

    def run():
        with torch.set_grad_enabled(backward):
            out = backend.run(q, k, v, window, 0.0)
            if backward:
                torch.autograd.grad(out, (q, k, v), dout)

    seconds = timed(benchmark, run)
    row = {"batch": batch, "heads": HEADS, "seq": seq, "window": window, "head_dim": HEAD_DIM, "grad": backward}
    benchmark.extra_info.update(TFLOPs=flops(row) / seconds / 1e12, impl=backend.impl)
