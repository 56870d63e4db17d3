"""Gather / merge of masked tokens: reference, torch.compile(reference), Triton; GB/s against copy."""

import pytest
from bench.bench_cases import VARIANTS, runner, token_cases
from bench.harness import DEVICE, DTYPES, SCALE, skip_on_cpu, timed

CASES = {(str(dtype).split(".")[-1], case.name): case for dtype in DTYPES
         for case in token_cases(DEVICE, dtype, SCALE)}


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("key", list(CASES), ids="-".join)
def test_tokens(benchmark, copy_gbps, key, variant, backward):
    skip_on_cpu(variant)
    case = CASES[key]
    seconds = timed(benchmark, runner(case, variant, backward))
    moved = case.bytes_fwd + (case.bytes_bwd if backward else 0)
    benchmark.extra_info.update(GBps=moved / seconds / 1e9, copy_GBps=copy_gbps,
                                of_copy=moved / seconds / 1e9 / copy_gbps)
