"""Without a GPU, Triton kernels run through the interpreter; it is chosen from the environment
when triton is first imported, so set it before any test module imports ivn_kernels."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
