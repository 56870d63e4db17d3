"""`--profile`: a torch profiler trace of a few training steps and a table of the top kernels."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

log = logging.getLogger("ivn_fast")

WAIT, WARMUP, ACTIVE = 2, 1, 3  # steps skipped (compilation, allocator), warmed up, recorded


@contextlib.contextmanager
def step_profiler(enabled: bool, out_dir: Path, device: torch.device, rows: int = 15) -> Iterator:
    """Yields a per-step callback; when enabled, records steps WAIT+WARMUP+1 .. +ACTIVE, writes a
    Chrome trace (open in Perfetto or chrome://tracing) and logs the top operators by device time."""
    if not enabled:
        yield lambda: None
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = device.type == "cuda"
    sort_key = "cuda_time_total" if cuda else "cpu_time_total"

    def done(prof: profile) -> None:
        trace = out_dir / "trace.json"
        prof.export_chrome_trace(str(trace))
        table = prof.key_averages().table(sort_by=sort_key, row_limit=rows, max_name_column_width=70)
        (out_dir / "top_ops.txt").write_text(table + "\n")
        log.info("profiled %d steps: trace %s\n%s", ACTIVE, trace, table)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, schedule=schedule(wait=WAIT, warmup=WARMUP, active=ACTIVE, repeat=1),
                 on_trace_ready=done, record_shapes=True) as prof:
        yield prof.step
