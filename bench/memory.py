"""Memory of one Stage 1 train step, measured on the CPU and projected to a GPU's batch.

    python -m bench.memory [--row b8-align-diffusion] [--batches 1,2] [--per-gpu-batch 32]
        [--activation-checkpointing none|full|selective|op] [--compile] [--set KEY=VALUE] [--json OUT]

The row is one of bench.report's (real shapes, random weights) run in bf16 autocast as on a
GPU. Memory is counted from tensor storages, not from an allocator, so any device can answer:
- fixed: the student's parameters and optimiser state (after one step) and the frozen teacher;
- step peak: the most bytes alive at once during forward and backward beyond what was there
  before (activations, gradients, temporaries), followed op by op through a dispatch mode and
  measured at each of --batches; it grows linearly with clips, so the fit projects it to
  --per-gpu-batch; "kept after forward" is what is alive when backward starts (what activation
  checkpointing shrinks). At the small batches run here the peak can sit in a phase that does
  not grow with clips (the teacher's forward), so the projected peak is the fixed bytes plus the
  larger of the two fits;
- saved by module: the bytes autograd keeps for backward, by the module that saved them (what
  activation checkpointing trades for recomputation; blocks already checkpointed show only
  what their checkpoint keeps outside the block).
The peak is that of the eager step: under a dispatch mode compiled blocks run eagerly. With
--compile only the saved-for-backward breakdown is measured, of the blocks compiled as the fast
path compiles them (they keep less: the compiler recomputes some elementwise work itself). The
CPU runs the PyTorch
references of the Triton ops and SDPA's CPU flash kernel (which keeps its output and log-sum-exp,
like flash attention), its teacher is float32 (bf16 on a GPU: half the weights), and no allocator
fragmentation is counted: the projection plans a run, bench.report's peak on the GPU is the
measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.report import ROWS, SET_HELP, config_item, config_sets, row_config
from ivn_fast.config import AC_MODES
from ivn_fast.models.attention_table import configure as configure_attention
from ivn_fast.train.distributed import World
from ivn_fast.train.trainer import Trainer
from ivn_kernels import set_kernels

OUTSIDE = "(outside module forwards)"


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created under the mode and still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        for key, (ref, size) in list(self._refs.items()):
            if ref.expired():
                del self._refs[key]
                self.live -= size
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._refs:
                    self._refs[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        return out


class SavedBytes:
    """Bytes of the storages saved for backward, by the innermost module that saved them, summed
    to names of at most `depth` dotted parts with list indices folded (`blocks.3` -> `blocks.*`).
    Low-precision copies of parameters (autocast's) are counted apart: they do not grow with clips."""

    def __init__(self, model: nn.Module, depth: int):
        self.depth = depth
        self.by_module: dict[str, int] = defaultdict(int)
        self.weight_copies = 0
        self._stack: list[str] = []
        self._seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._param_shapes = {tuple(p.shape) for p in model.parameters()}
        self._handles = []
        for name, module in model.named_modules():
            if name:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, name: str):
        short = ".".join("*" if part.isdigit() else part for part in name.split(".")[:self.depth])
        return lambda module, args: self._stack.append(short)

    def _leave(self, module: nn.Module, args: Any, out: Any) -> None:
        self._stack.pop()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key and key not in self._seen:
            self._seen.add(key)
            if t.dtype != torch.float32 and tuple(t.shape) in self._param_shapes:
                self.weight_copies += storage.nbytes()
            else:
                self.by_module[self._stack[-1] if self._stack else OUTSIDE] += storage.nbytes()
        return t

    @contextmanager
    def recording(self) -> Iterator[None]:
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield
        finally:
            for h in self._handles:
                h.remove()


def _bytes(tensors: Any) -> int:
    return sum(t.untyped_storage().nbytes() for t in tree_flatten(tensors)[0] if isinstance(t, torch.Tensor))


def measure(row: str, batches: list[int], checkpointing: str, depth: int, root: Path,
            compiled: bool = False, sets: dict | None = None) -> dict[str, Any]:
    """Fixed bytes, the step peak at each batch (not when compiled), and the saved bytes by module
    at the last batch."""
    out: dict[str, Any] = {"step_peak": {}, "kept_after_forward": {}}
    for batch in batches[-1:] if compiled else batches:
        cfg = row_config(row, batch, compiled, root / "teachers", torch.device("cpu"), str(root / f"run{batch}"),
                         sets=sets)
        cfg.train.precision, cfg.train.kernels, cfg.train.attention = "bf16", "torch", "sdpa"
        cfg.train.activation_checkpointing = checkpointing
        configure_attention(cfg.train.attention, torch.device("cpu"))
        set_kernels(cfg.train.kernels)
        trainer = Trainer(cfg, World())
        video = torch.randn(batch, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size,
                            generator=torch.Generator().manual_seed(0))
        trainer.train_step(video)  # optimiser state exists from here on (compiled: the first compilation)
        trainer.optimizer.zero_grad(set_to_none=True)
        if not compiled:
            out["fixed"] = {"parameters": _bytes(list(trainer.model.parameters())),
                            "optimizer_state": _bytes([s for s in trainer.optimizer.state.values()]),
                            "teacher": _bytes(list(trainer.task.teacher.parameters()))}
            live = LiveBytes()
            with live:
                with trainer.autocast():
                    terms = trainer.task.losses(trainer.model, video)
                out["kept_after_forward"][batch] = live.live
                terms["loss"].backward()
                del terms
            out["step_peak"][batch] = live.peak
            trainer.optimizer.zero_grad(set_to_none=True)
        if batch == batches[-1]:
            saved = SavedBytes(trainer.model, depth)
            with saved.recording(), trainer.autocast():
                trainer.task.losses(trainer.model, video)
            out["saved_by_module"] = dict(saved.by_module)
            out["weight_copies"] = saved.weight_copies
        del trainer
    return out


def _linear(points: dict[int, int], batch: int) -> tuple[float, float]:
    """(value at `batch`, slope) of the line through the smallest and largest measured batches."""
    (b0, v0), (b1, v1) = sorted(points.items())[0], sorted(points.items())[-1]
    slope = (v1 - v0) / (b1 - b0) if b1 != b0 else v1 / b1
    return v1 + slope * (batch - b1), slope


def project(result: dict[str, Any], batch: int) -> dict[str, float]:
    """GB at `batch` clips, each measured quantity fitted as a + b * clips."""
    step, slope = _linear(result["step_peak"], batch)
    kept, _ = _linear(result["kept_after_forward"], batch)
    fixed = sum(result["fixed"].values())
    return {"fixed_gb": fixed / 1e9, "kept_after_forward_gb": kept / 1e9, "step_peak_gb": step / 1e9,
            "per_clip_gb": slope / 1e9, "projected_peak_gb": (fixed + max(step, kept)) / 1e9}


def format_report(result: dict[str, Any], proj: dict[str, float] | None, batch: int, measured: int) -> str:
    lines = []
    if proj is not None:
        fixed = ", ".join(f"{k.replace('_', ' ')} {v / 1e9:.2f} GB" for k, v in result["fixed"].items())
        lines += [f"fixed: {fixed}",
                  f"kept after forward at batch {batch}: {proj['kept_after_forward_gb']:.2f} GB",
                  f"step peak at batch {batch}: {proj['step_peak_gb']:.2f} GB ({proj['per_clip_gb']:.3f} GB per clip)",
                  f"projected peak at batch {batch}: {proj['projected_peak_gb']:.2f} GB"]
    lines += ["", f"{f'saved for backward, by module':<40}{f'GB at batch {batch}':>18}"]
    scale = batch / measured
    for name, b in sorted(result["saved_by_module"].items(), key=lambda kv: -kv[1]):
        if b * scale >= 1e7:
            lines.append(f"{name:<40}{b * scale / 1e9:>18.2f}")
    total = sum(result["saved_by_module"].values())
    lines.append(f"{'total':<40}{total * scale / 1e9:>18.2f}")
    lines.append(f"plus autocast's weight copies (per step, not per clip): {result['weight_copies'] / 1e9:.2f} GB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", default="b8-align-diffusion", choices=[r for r in ROWS if "stage2" not in r],
                        help="bench.report row (a Stage 1 setting)")
    parser.add_argument("--batches", default="1,2", help="two comma-separated small batches actually run")
    parser.add_argument("--per-gpu-batch", type=int, default=32, help="clips per GPU the step is projected to")
    parser.add_argument("--activation-checkpointing", default="none", choices=AC_MODES,
                        help="train.activation_checkpointing of the measured step")
    parser.add_argument("--compile", action="store_true", help="compile each block as the fast path does and "
                                                                "measure only what is saved for backward")
    parser.add_argument("--depth", type=int, default=2, help="dotted name parts modules are grouped by")
    parser.add_argument("--set", action="append", default=[], type=config_item, metavar="KEY=VALUE",
                        help=SET_HELP + "; precision, kernels, attention and checkpointing are this tool's")
    parser.add_argument("--json", type=Path, default=None, help="write the measurement and projection here")
    args = parser.parse_args(argv)
    if args.activation_checkpointing == "budget" and not args.compile:
        parser.error("--activation-checkpointing budget is the compiler's: add --compile")
    batches = sorted({int(b) for b in args.batches.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.row, batches, args.activation_checkpointing, args.depth, Path(tmp), args.compile,
                         config_sets(args.set))
    proj = None if args.compile else project(result, args.per_gpu_batch)
    print(f"{args.row}, activation checkpointing {args.activation_checkpointing}"
          f"{', compiled blocks' if args.compile else ''}: measured at batches "
          f"{batches[-1:] if args.compile else batches} on the CPU")
    print(format_report(result, proj, args.per_gpu_batch, batches[-1]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": "python -m bench.memory " + " ".join(
                                             sys.argv[1:] if argv is None else argv),
                                         "device": platform.processor() or platform.machine(), "torch": torch.__version__,
                                         "row": args.row, "activation_checkpointing": args.activation_checkpointing,
                                         "compile": args.compile, "set": dict(args.set),
                                         "per_gpu_batch": args.per_gpu_batch,
                                         **(proj or {}), "saved_gb": sum(result["saved_by_module"].values())
                                         * args.per_gpu_batch / batches[-1] / 1e9, "measured": result},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
