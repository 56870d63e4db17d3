"""ivn_kernels: fused Triton kernels for masked-token movement and the diffusion decoder.

Each op module (`tokens`, `diffusion`) holds the plain PyTorch reference, the Triton kernels
and the `torch.library` custom op side by side, plus the one public function the models call.
That function asks `use_triton` which path to take, so a single switch (`set_kernels`, fed from
the config field `train.kernels`) selects Triton or the reference everywhere.

Triton is optional: without it the package imports and every op takes the PyTorch path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from ivn_kernels._triton import HAS_TRITON

MODES = ("auto", "triton", "torch")
# The interpreter runs kernels on CPU tensors; it must be chosen before triton is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_mode = "auto"


def set_kernels(mode: str) -> None:
    """Choose the path for every later op call: ``auto`` (Triton on CUDA when triton imports,
    else PyTorch), ``triton`` (Triton wherever it can run) or ``torch`` (the references)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"kernels must be one of {MODES}, got {mode!r}")
    if mode == "triton" and not HAS_TRITON:
        raise ValueError("kernels 'triton' requested but triton is not installed")
    _mode = mode


def get_kernels() -> str:
    return _mode


@contextlib.contextmanager
def using(mode: str) -> Iterator[None]:
    """Run a block under another mode (tests and benchmarks compare the paths this way)."""
    previous = _mode
    set_kernels(mode)
    try:
        yield
    finally:
        set_kernels(previous)


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on tensors living with `x` takes the Triton path under the current mode.

    CUDA tensors can take it whenever triton imports; CPU tensors only under the interpreter,
    and only when asked for explicitly (``triton``), since the interpreter is for testing.
    """
    if _mode == "torch" or not HAS_TRITON:
        return False
    if x.is_cuda:
        return True
    return _mode == "triton" and INTERPRET and x.device.type == "cpu"
