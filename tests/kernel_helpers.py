"""Shared by the kernel parity tests: relative error, the forced-Triton poisoned-buffer mode."""

import pytest
import torch

import ivn_kernels
from ivn_kernels import _triton


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not out.isnan().any(), "NaN: an element the kernel should write was left unwritten"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def triton_mode(monkeypatch):
    """Force the Triton path and fill every kernel buffer with junk before the kernel writes it: NaN,
    or 0 in index maps (a valid index, so an entry left unwritten gives a wrong result)."""

    def poisoned(shape, dtype, device):
        junk = float("nan") if dtype.is_floating_point else 0
        return torch.full(shape, junk, dtype=dtype, device=device)

    monkeypatch.setattr(_triton, "empty", poisoned)
    with ivn_kernels.using("triton"):
        yield


def check_device(device: str) -> None:
    if device == "cpu" and not ivn_kernels.INTERPRET:
        pytest.skip("CPU runs of Triton kernels need TRITON_INTERPRET=1")
