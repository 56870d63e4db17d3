"""What the pytest-benchmark suites share: device, sizes, CPU skips, timing, copy bandwidth.

On CUDA every variant runs at the ViT-B Stage 1 sizes; on CPU only the eager references run,
at sizes divided by CPU_SCALE (compiled and Triton variants are GPU measurements).
"""

import time

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
CPU_SCALE = 16
SCALE = 1 if CUDA else CPU_SCALE
DTYPES = [torch.bfloat16, torch.float32] if CUDA else [torch.float32]


def skip_on_cpu(variant: str) -> None:
    if not CUDA and variant != "reference":
        pytest.skip(f"{variant}: GPU-only measurement (Triton and inductor kernels); CPU runs the reference")


def timed(benchmark, run) -> float:
    """Median seconds of `run`, synchronising the device so each round times finished work."""

    def once() -> None:
        run()
        if CUDA:
            torch.cuda.synchronize()

    once()  # compile / autotune / allocator warm-up stay out of the rounds
    benchmark.pedantic(once, rounds=20 if CUDA else 3, iterations=1, warmup_rounds=2 if CUDA else 0)
    return benchmark.stats.stats.median


def copy_bandwidth_gbps() -> float:
    """Device copy bandwidth (bytes read + written per second): the ceiling for token movement."""
    n = (1 << 28) if CUDA else (1 << 24)
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    if CUDA:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3 / 20
    else:
        t0 = time.perf_counter()
        for _ in range(5):
            dst.copy_(src)
        seconds = (time.perf_counter() - t0) / 5
    return 2 * src.numel() * src.element_size() / seconds / 1e9
