"""The one attention entry point used by the encoder, predictor, teacher and probes.

Tensors are [B, S, H, D] (the layout a fused QKV projection produces). Backends:

- ``flash_attn``: FlashAttention, the newest generation installed that runs on this GPU: FA4
  (``flash_attn.cute``, Hopper and Blackwell), FA3 (``flash_attn_interface``, Hopper), FA2
  (``flash_attn``, Ampere and later).
- ``xformers``: ``xformers.ops.memory_efficient_attention`` (half precision).
- ``flex``: FlexAttention, compiled, for sliding windows only: the window is a block-sparse mask,
  so the blocks wholly outside it are skipped (SDPA computes them all under a dense mask).
- ``cudnn``: SDPA with cuDNN's fused attention first in its priority order.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with PyTorch's own choice of
  kernel (flash / efficient / cuDNN on GPU, math on CPU); takes every call.
- ``auto``: per call, the backend a measured table (``attention_table``) names fastest for
  the nearest sequence length of the same kind (windowed or not, with or without backward);
  for a kind the table lacks, flash_attn where it takes the call, else SDPA.

Naming a backend this process cannot run (not installed, or no CUDA device) is an error; a call
the chosen backend cannot take (float32 for the flash kernels, a window or dropout it lacks)
goes to SDPA, which takes every call (flex takes windowed calls only).
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flash_attn", "xformers", "flex", "cudnn", "sdpa")
HALF = (torch.float16, torch.bfloat16)

# (q, k, v, window, dropout_p) -> out, all [B, S, H, D]
Run = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "int | None", float], torch.Tensor]


@dataclass(frozen=True)
class Backend:
    """One implementation and the calls it takes."""

    name: str
    impl: str  # what actually runs, for logs and result files
    run: Run
    dtypes: tuple[torch.dtype, ...] = HALF
    cuda_only: bool = True
    window: bool = True  # a sliding window natively
    full: bool = True  # full attention too
    dropout: bool = True

    def takes(self, q: torch.Tensor, window: int | None, dropout_p: float) -> bool:
        return ((q.is_cuda or not self.cuda_only) and q.dtype in self.dtypes and q.shape[-1] <= 256
                and (self.window if window is not None else self.full) and (dropout_p == 0.0 or self.dropout))


def window_mask(s_q: int, s_k: int, window: int, device: torch.device) -> torch.Tensor:
    """True where key j is within `window` positions of query i, on either side."""
    i = torch.arange(s_q, device=device)[:, None]
    j = torch.arange(s_k, device=device)[None, :]
    return (i - j).abs() <= window


def _sdpa(q, k, v, window, dropout_p):
    mask = None if window is None else window_mask(q.shape[1], k.shape[1], window, q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p
    )
    return out.transpose(1, 2)


# cuDNN first; PyTorch's own kernels take what cuDNN rejects (head dims, query length 1, masks)
def _cudnn(q, k, v, window, dropout_p):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        return _sdpa(q, k, v, window, dropout_p)


_flex_attend = None  # torch.compile(flex_attention): uncompiled, FlexAttention runs a slow reference path
_bands: dict[tuple[int, int, str], object] = {}  # (length, window, device) -> BlockMask, for eager calls


def _band(seq: int, window: int, device: torch.device):
    """The block-sparse mask of |i - j| <= window: FlexAttention skips the blocks wholly outside."""
    from torch.nn.attention.flex_attention import create_block_mask

    def near(b, h, q, kv):
        return (q - kv).abs() <= window

    def build():
        return create_block_mask(near, B=None, H=None, Q_LEN=seq, KV_LEN=seq, device=device)

    if torch.compiler.is_compiling():  # built inside the graph, a few microseconds a call
        return build()
    key = (seq, window, str(device))
    if key not in _bands:
        _bands[key] = build()
    return _bands[key]


def _flex(q, k, v, window, dropout_p):
    global _flex_attend
    if _flex_attend is None:
        from torch.nn.attention.flex_attention import flex_attention

        _flex_attend = torch.compile(flex_attention, dynamic=False)
    mask = _band(q.shape[1], window, q.device)
    return _flex_attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask).transpose(1, 2)


def _xformers_bias(window: int | None):
    """The local band |i - j| <= window as xformers states it (None: full attention)."""
    if window is None:
        return None
    from xformers.ops.fmha.attn_bias import LocalAttentionFromBottomRightMask

    return LocalAttentionFromBottomRightMask(window_left=window, window_right=window)


def _xformers(q, k, v, window, dropout_p):
    from xformers.ops import memory_efficient_attention

    return memory_efficient_attention(q, k, v, attn_bias=_xformers_bias(window), p=dropout_p)


def _first(out):
    """FA3 and FA4 return (out, lse) in some releases and out alone in others."""
    return out[0] if isinstance(out, tuple) else out


_fa4 = None  # flash_attn.cute.flash_attn_func once found


def _fa4_run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
    return _first(_fa4(q, k, v, window_size=(window, window)))  # FA4 says (None, None) for no window


# FA4 launches through the CuTe DSL, which dynamo cannot trace and activation checkpointing cannot
# see: as a custom op it is one opaque node named "flash". Its backward sits behind FA4's own
# autograd function, so ours reruns the forward under autograd (the table times that cost too).
@torch.library.custom_op("ivn_attn::flash4_fwd", mutates_args=())
def _flash4_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None) -> torch.Tensor:
    return _fa4_run(q, k, v, window).contiguous()


@_flash4_fwd.register_fake
def _(q, k, v, window):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


@torch.library.custom_op("ivn_attn::flash4_bwd", mutates_args=())
def _flash4_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                window: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        grads = torch.autograd.grad(_fa4_run(*leaves, window), leaves, dout)
    return tuple(g.contiguous() for g in grads)


@_flash4_bwd.register_fake
def _(dout, q, k, v, window):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash4_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.window = inputs[3]


def _flash4_backward(ctx, dout):
    return (*_flash4_bwd(dout, *ctx.saved_tensors, ctx.window), None)


_flash4_fwd.register_autograd(_flash4_backward, setup_context=_flash4_setup)


def _flash4(q, k, v, window, dropout_p):
    return _flash4_fwd(q, k, v, window)


_unavailable: dict[str, str] = {}  # backend -> why its library would not import, for the error naming it


def unavailable() -> dict[str, str]:
    """Backends whose library is installed but would not import, with the reason."""
    installed()
    return dict(_unavailable)


def _load(backend: str, module: str, attr: str):
    """`module.attr`, or None: absent quietly, broken with the reason kept (a broken install
    should not read as a missing one)."""
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as e:  # noqa: BLE001 - whatever breaks the import leaves the backend out
        absent = (isinstance(e, ModuleNotFoundError) and e.name is not None and module.startswith(e.name)) \
            or isinstance(e, AttributeError)  # e.g. FA4's namespace package `flash_attn` without FA2
        if not absent:
            _unavailable.setdefault(backend, f"{module} failed to import ({type(e).__name__}: {e})")
        return None


def _window_size(window: int | None) -> tuple[int, int]:
    return (-1, -1) if window is None else (window, window)


def _flash_generations() -> list[tuple[str, Run, bool, Callable[[tuple[int, int]], bool]]]:
    """(impl, run, takes dropout, runs on capability) for each FlashAttention installed, newest first."""
    global _fa4
    found = []
    if (fa4 := _load("flash_attn", "flash_attn.cute", "flash_attn_func")) is not None:
        _fa4 = fa4
        found.append(("FA4 (flash_attn.cute)", _flash4, False, lambda cap: cap[0] in (9, 10, 11, 12)))
    if (fa3 := _load("flash_attn", "flash_attn_interface", "flash_attn_func")) is not None:
        def run3(q, k, v, window, dropout_p):
            return _first(fa3(q, k, v, window_size=_window_size(window)))

        found.append(("FA3 (flash_attn_interface)", run3, False, lambda cap: cap[0] == 9))
    if (fa2 := _load("flash_attn", "flash_attn", "flash_attn_func")) is not None:
        def run2(q, k, v, window, dropout_p):
            return fa2(q, k, v, dropout_p=dropout_p, window_size=_window_size(window))

        found.append(("FA2 (flash_attn)", run2, True, lambda cap: cap[0] >= 8))
    return found


def _flash_backend() -> Backend | None:
    cap = torch.cuda.get_device_capability()
    for impl, run, dropout, runs_on in _flash_generations():
        if runs_on(cap):
            return Backend("flash_attn", impl, run, dropout=dropout)
    return None


def _xformers_backend() -> Backend | None:
    if _load("xformers", "xformers.ops", "memory_efficient_attention") is None:
        return None
    # a wheel built for another PyTorch imports, warns, and then finds no kernel for any call
    failed = getattr(importlib.import_module("xformers._cpp_lib"), "_cpp_library_load_exception", None)
    if failed is not None:
        why = " ".join(str(failed).split("Please reinstall")[0].split())
        _unavailable.setdefault("xformers", "xformers' C++/CUDA kernels did not load ("
                                + why.removeprefix("xFormers can't load C++/CUDA extensions. ") + ")")
        return None
    # half precision only: float32 reaches only xformers' cutlass kernel, which has no local window
    # and stops at sm_90
    return Backend("xformers", "xformers memory_efficient_attention", _xformers)


def _flex_backend() -> Backend | None:
    if _load("flex", "torch.nn.attention.flex_attention", "flex_attention") is None:
        return None
    # windowed calls only, where block sparsity pays: full attention has faster kernels, and the
    # encoder's lengths vary (Stage 2), which would recompile FlexAttention for each. CUDA only:
    # FlexAttention has no backward on CPU.
    return Backend("flex", "FlexAttention (compiled, block-sparse windows)", _flex,
                   dtypes=(*HALF, torch.float32), full=False, dropout=False)


def _cudnn_backend() -> Backend | None:
    if not torch.backends.cudnn.is_available():
        return None
    return Backend("cudnn", "SDPA (cuDNN first)", _cudnn)


SDPA = Backend("sdpa", "SDPA", _sdpa, dtypes=(*HALF, torch.float32, torch.float64), cuda_only=False)


@functools.cache
def installed() -> dict[str, Backend]:
    """Every backend this process can run, by name; SDPA always. The GPU ones need a CUDA device
    (the current one: call after ``torch.cuda.set_device``)."""
    found = []
    if torch.cuda.is_available():
        found = [b for b in (_flash_backend(), _xformers_backend(), _flex_backend(), _cudnn_backend())
                 if b is not None]
    return {**{b.name: b for b in found}, "sdpa": SDPA}


_MISSING = {"flash_attn": "no FlashAttention for this GPU is installed (flash-attn, flash-attn-3 or flash-attn-4)",
            "xformers": "xformers is not installed", "flex": "this PyTorch has no FlexAttention",
            "cudnn": "this PyTorch has no cuDNN"}


@dataclass(frozen=True)
class Choice:
    """For calls of one kind (windowed or not, with or without backward): the backend to use up
    to each sequence length, the last entry covering everything longer."""

    upto: tuple[int, ...]
    names: tuple[str, ...]

    def at(self, seq: int) -> str:
        for bound, name in zip(self.upto, self.names):
            if seq <= bound:
                return name
        return self.names[-1]


def choices_from(rows: Sequence[dict]) -> dict[tuple[bool, bool], Choice]:
    """A measured table's rows ({seq, window, grad, ms: {backend: ms or None}}) as lookups:
    the fastest backend at each measured length, switching at the geometric midpoints."""
    kinds: dict[tuple[bool, bool], list[tuple[int, str]]] = {}
    for row in rows:
        timed = {name: ms for name, ms in row["ms"].items() if ms is not None}
        if timed:
            kinds.setdefault((row["window"] is not None, bool(row["grad"])), []).append(
                (int(row["seq"]), min(timed, key=timed.get)))
    out = {}
    for kind, points in kinds.items():
        points.sort()
        upto = tuple(int(math.sqrt(a * b)) for (a, _), (b, _) in zip(points, points[1:]))
        out[kind] = Choice(upto, tuple(name for _, name in points))
    return out


_selected = "auto"
_choices: dict[tuple[bool, bool], Choice] = {}
_have: dict[str, Backend] | None = None  # installed(), looked up outside any compiled graph


def set_backend(name: str) -> None:
    """Choose the backend for every later call; the named one must run in this process."""
    global _selected, _have
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    _have = installed()
    if name != "auto" and name not in _have:
        why = "it needs a CUDA device" if not torch.cuda.is_available() else _unavailable.get(name, _MISSING[name])
        raise ValueError(f"attention backend {name!r} requested but {why}")
    _selected = name


def use_table(rows: Sequence[dict]) -> None:
    """Let ``auto`` follow a measured table (see ``attention_table.measure``); empty: no table."""
    global _choices
    _choices = choices_from(rows)


def pick(q: torch.Tensor, window: int | None = None, dropout_p: float = 0.0) -> Backend:
    """The backend that runs this call."""
    have = _have if _have is not None else installed()
    if _selected != "auto":
        wanted = [have[_selected]]
    else:
        choice = _choices.get((window is not None, torch.is_grad_enabled() and q.requires_grad))
        name = "flash_attn" if choice is None else choice.at(q.shape[1])  # measured: its pick or SDPA
        wanted = [have[name]] if name in have else []
    return next((b for b in wanted if b.takes(q, window, dropout_p)), SDPA)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention over [B, S, H, D] inputs; ``window`` limits each query to keys within
    that many positions on either side (ModernBERT's local layers)."""
    if window is not None and q.shape[1] != k.shape[1]:  # backends align a window differently otherwise
        raise ValueError(f"a sliding window needs as many queries as keys, got {q.shape[1]} and {k.shape[1]}")
    return pick(q, window, dropout_p).run(q, k, v, window, dropout_p)
