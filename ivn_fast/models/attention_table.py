"""Which attention backend is fastest on this GPU at our sequence lengths: measured once per
device and software versions, cached, and followed by ``auto``. ``python -m bench.attention``
prints the same measurement as a table.

The rows cover what the models run: the teacher's frames (about 256 tokens, no backward), the
encoder's visible tokens (about 400-1700), the predictor's full clip (about 4100-8200, half its
layers windowed). A backend whose output or gradient disagrees with SDPA in float32 is left out
of its row, so ``auto`` never picks a wrong kernel for speed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

import torch

from ivn_fast.cache import cache_root
from ivn_fast.models.attention import SDPA, Backend, choices_from, installed, set_backend, unavailable, use_table

log = logging.getLogger(__name__)

SEQ_LENS = (256, 512, 1024, 2048, 4096, 8192)
WINDOW = 64  # ModernBERT-large's local layers: a 128-token window, 64 on either side
KINDS = ((None, True), (None, False), (WINDOW, True))  # (window, with backward)
TOKENS = 32768  # batch x sequence per measurement, about one training micro-batch's worth
PACKAGES = ("flash-attn", "flash-attn-3", "flash-attn-4", "nvidia-cutlass-dsl", "xformers",
            "nvidia-cudnn-cu12", "nvidia-cudnn-cu13")


def _tolerance(dtype: torch.dtype) -> float:
    return 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def _median_ms(fn, reps: int, device: torch.device) -> float:
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_point(seq: int, window: int | None, grad: bool, *, backends: Mapping[str, Backend],
                  heads: int = 16, head_dim: int = 64, dtype: torch.dtype = torch.bfloat16,
                  tokens: int = TOKENS, reps: int = 10, device: torch.device | str = "cuda") -> dict:
    """One row: each backend that takes the call, timed (median ms of forward, plus backward when
    `grad`), its peak memory above the inputs, or why it was left out."""
    device = torch.device(device)
    batch = max(1, tokens // seq)
    gen = torch.Generator(device).manual_seed(seq)
    q, k, v = (torch.randn(batch, seq, heads, head_dim, device=device, generator=gen, dtype=dtype)
               .requires_grad_(grad) for _ in range(3))
    dout = torch.randn(q.shape, device=device, generator=gen, dtype=dtype)
    # the float32 reference on the first clip only: clips are independent, and a float32 SDPA that
    # falls to its math kernel holds S x S scores per head
    ref_in = [t[:1].detach().float().requires_grad_(grad) for t in (q, k, v)]
    with torch.set_grad_enabled(grad):
        ref = SDPA.run(*ref_in, window, 0.0)
        ref_grads = torch.autograd.grad(ref, ref_in, dout[:1].float()) if grad else ()
    row = {"seq": seq, "window": window, "grad": grad, "batch": batch, "heads": heads, "head_dim": head_dim,
           "ms": {}, "peak_mb": {}, "errors": {}}
    for name, backend in backends.items():
        if not backend.takes(q, window, 0.0):
            continue

        def once():
            with torch.set_grad_enabled(grad):
                out = backend.run(q, k, v, window, 0.0)
                return out, (torch.autograd.grad(out, (q, k, v), dout) if grad else ())

        try:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            out, grads = once()
            if device.type == "cuda":
                torch.cuda.synchronize()  # a failing kernel fails here, charged to its own backend
            err = max(_rel(a[:1], b) for a, b in zip((out, *grads), (ref, *ref_grads)))
            if not err <= _tolerance(dtype):  # NaN fails too
                raise ValueError(f"disagrees with float32 SDPA: relative error {err:.2e}")
            if device.type == "cuda":
                row["peak_mb"][name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del out, grads
            once()
            row["ms"][name] = _median_ms(once, reps, device)
        except Exception as e:  # a kernel that cannot run this shape here is left out, with the reason
            row["ms"][name] = None
            row["errors"][name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return row


def measure(seq_lens: Sequence[int] = SEQ_LENS, kinds: Sequence[tuple[int | None, bool]] = KINDS, *,
            backends: Mapping[str, Backend] | None = None, **kwargs) -> list[dict]:
    """Rows for every (window, backward) kind and sequence length."""
    backends = installed() if backends is None else backends
    rows = [measure_point(seq, window, grad, backends=backends, **kwargs) for window, grad in kinds for seq in seq_lens]
    torch.compiler.reset()  # compiled FlexAttention at every measured shape would eat dynamo's recompile budget
    return rows


def describe(rows: Sequence[dict]) -> str:
    """What ``auto`` does under these rows, in one line."""
    names = {(False, True): "full", (False, False): "full, no backward", (True, True): "windowed"}
    parts = []
    for kind, choice in sorted(choices_from(rows).items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        spans = []
        for i, name in enumerate(choice.names):
            upto = f" to {choice.upto[i]}" if i < len(choice.upto) else (" above" if i else "")
            spans.append(f"{name}{upto}")
        merged = []  # neighbouring spans with the same backend read as one
        for span, name in zip(spans, choice.names):
            if merged and merged[-1][1] == name:
                merged[-1] = (span, name)
            else:
                merged.append((span, name))
        text = name if len(merged) == 1 else ", ".join(s for s, _ in merged)  # one winner: no ranges
        parts.append(f"{names.get(kind, str(kind))}: {text}")
    return "; ".join(parts) if parts else "no measurements"


def package_versions() -> dict[str, str]:
    """The installed attention libraries' versions."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return versions


def cache_file() -> Path:
    """Where this GPU's table lives, keyed by device and every version that can change a timing."""
    key = json.dumps([torch.cuda.get_device_name(), torch.cuda.get_device_capability(), torch.__version__,
                      torch.version.cuda, torch.backends.cudnn.version(), package_versions(), SEQ_LENS, KINDS,
                      TOKENS])
    slug = "".join(c if c.isalnum() else "-" for c in torch.cuda.get_device_name()).strip("-")
    return cache_root() / "attention" / f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def load_or_measure(path: Path, measure_fn: Callable[[], list[dict]] | None = None) -> tuple[list[dict], bool]:
    """The cached rows at `path`, or freshly measured ones written there; (rows, came from cache).
    An unreadable cache is measured again."""
    try:
        return json.loads(path.read_text())["rows"], True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.info("timing the attention backends on this GPU (once per GPU and software versions; the first "
             "FlexAttention compiles take a minute or two)")
    rows = (measure_fn or measure)()
    if any("OutOfMemoryError" in e for r in rows for e in r.get("errors", {}).values()):
        log.warning("attention table not cached: a backend ran out of memory, which another process may have "
                    "caused; the next run measures again")
        return rows, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"rows": rows}, indent=1))
        tmp.replace(path)
    except OSError as e:  # a read-only home still trains, measuring each run
        log.warning("attention table not cached at %s: %s", path, e)
    return rows, False


def configure(name: str, device: torch.device, *, is_main: bool = True,
              share: Callable[[list[dict]], list[dict]] = lambda rows: rows) -> str:
    """Select the attention backend for this process and return a line for the log. Under ``auto``
    on a GPU, follow this device's table: cached, or measured now by the main process; `share`
    hands the main process's rows to every process (a broadcast under torchrun)."""
    set_backend(name)
    missing = "".join(f"; left out: {why}" for why in unavailable().values())  # a broken install, named
    if name != "auto" or device.type != "cuda":
        use_table([])
        return f"attention {name}: {installed()[name].impl if name != 'auto' else SDPA.impl}{missing}"
    start = time.perf_counter()
    path = cache_file()
    rows, cached = [], False
    if is_main:
        try:
            rows, cached = load_or_measure(path)
        except Exception as e:  # noqa: BLE001 - the run goes on without a table; every process gets the same rows
            log.warning("attention table not measured (%s: %s); auto uses its fixed order", type(e).__name__, e)
    rows = share(rows)
    use_table(rows)
    how = "cached" if cached else f"measured in {time.perf_counter() - start:.1f} s"
    return f"attention auto ({how}, {path}): {describe(rows)}{missing}"
