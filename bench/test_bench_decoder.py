"""The whole diffusion-decoder loss, forward + backward: TFLOP/s of its matmuls on each path."""

import pytest
from bench.bench_cases import VARIANTS, decoder_model, runner
from bench.harness import DEVICE, DTYPES, SCALE, skip_on_cpu, timed


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_decoder_loss(benchmark, variant, dtype):
    skip_on_cpu(variant)
    case = decoder_model(DEVICE, dtype, SCALE * 64 if DEVICE == "cpu" else SCALE)
    seconds = timed(benchmark, runner(case, variant, True))
    benchmark.extra_info["TFLOPs"] = case.flops_fwd_bwd / seconds / 1e12
