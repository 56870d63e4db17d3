"""Diffusion decoder: each fused op (GB/s against copy) and the whole loss forward + backward
(TFLOP/s of its matmuls), as reference, torch.compile(reference) and Triton."""

import pytest
from bench.bench_cases import VARIANTS, decoder_cases, decoder_model, runner
from bench.harness import DEVICE, DTYPES, SCALE, skip_on_cpu, timed

OPS = {(str(dtype).split(".")[-1], case.name): case for dtype in DTYPES
       for case in decoder_cases(DEVICE, dtype, SCALE)}


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("key", list(OPS), ids="-".join)
def test_op(benchmark, copy_gbps, key, variant, backward):
    skip_on_cpu(variant)
    case = OPS[key]
    if backward and not case.differentiable:
        pytest.skip(f"{case.name} has no backward (its inputs carry no gradient)")
    seconds = timed(benchmark, runner(case, variant, backward))
    moved = case.bytes_fwd + (case.bytes_bwd if backward else 0)
    benchmark.extra_info.update(GBps=moved / seconds / 1e9, copy_GBps=copy_gbps,
                                of_copy=moved / seconds / 1e9 / copy_gbps)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_decoder_loss(benchmark, variant, dtype):
    skip_on_cpu(variant)
    case = decoder_model(DEVICE, dtype, SCALE * 64 if DEVICE == "cpu" else SCALE)
    seconds = timed(benchmark, runner(case, variant, True))
    benchmark.extra_info["TFLOPs"] = case.flops_fwd_bwd / seconds / 1e12
