"""Where numbers go: one JSON object per logged step, TensorBoard scalars, a concise log line."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

log = logging.getLogger("ivn_fast")


def setup_logging(is_main: bool, out_dir: str | Path) -> None:
    """Log lines on stdout, and from the main process in OUT_DIR/train.log too; other processes
    log warnings only."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(out_dir) / "train.log"))
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)


class MetricsWriter:
    """metrics.jsonl (appended, so a resumed run continues the same file) plus TensorBoard."""

    def __init__(self, out_dir: Path, tensorboard: bool, enabled: bool = True):
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed: writing metrics.jsonl only")
            else:
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        # strict JSON: NaN and infinities have no literal, so they are written as null
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def format_line(record: dict, max_steps: int) -> str:
    """`step 120/300 | loss 1.234 (mid 0.5 final 0.3 recon 0.4) | lr 1.2e-03 | 45.1 clips/s`."""
    step = f"step {record['step']}/{max_steps}"
    if record["loss"] is None:
        parts = [step, "every step of this window skipped"]
    else:
        terms = " ".join(f"{k[5:]} {record[k]:.4f}" for k in record if k.startswith("loss_"))
        parts = [step, f"loss {record['loss']:.4f} ({terms})", f"lr {record['lr']:.2e}",
                 f"grad {record['grad_norm']:.2f}"]
    parts += [f"{record['clips_per_s']:.1f} clips/s", f"data {100 * record['data_wait_frac']:.0f}%"]
    if "peak_mem_gb" in record:
        parts.append(f"peak {record['peak_mem_gb']:.1f} GB")
    if record.get("skipped_steps"):
        parts.append(f"skipped {record['skipped_steps']}")
    if record.get("bad_samples"):
        parts.append(f"bad videos {record['bad_samples']}")
    return " | ".join(parts)
