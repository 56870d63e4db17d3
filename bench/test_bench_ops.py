"""Memory-bound fused ops (token gather / merge, the decoder's elementwise fusions): reference,
torch.compile(reference), Triton eager and Triton inside compile; GB/s against copy bandwidth."""

import pytest
from bench.bench_cases import VARIANTS, decoder_cases, runner, token_cases
from bench.harness import DEVICE, DTYPES, SCALE, skip_on_cpu, timed

CASES = {(str(dtype).split(".")[-1], case.name): case for dtype in DTYPES
         for case in token_cases(DEVICE, dtype, SCALE) + decoder_cases(DEVICE, dtype, SCALE)}


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("key", list(CASES), ids="-".join)
def test_op(benchmark, copy_gbps, key, variant, backward):
    skip_on_cpu(variant)
    case = CASES[key]
    if backward and not case.differentiable:
        pytest.skip(f"{case.name} has no backward (its inputs carry no gradient)")
    seconds = timed(benchmark, runner(case, variant, backward))
    moved = case.bytes_fwd + (case.bytes_bwd if backward else 0)
    benchmark.extra_info.update(GBps=moved / seconds / 1e9, copy_GBps=copy_gbps,
                                of_copy=moved / seconds / 1e9 / copy_gbps)
