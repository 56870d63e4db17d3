"""The one trainer: forward_backward_step, train_step, train; stage specifics live in the task."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from ivn_fast.config import Config, run_dir, to_dict
from ivn_fast.data.build import build_train_data
from ivn_fast.train import checkpoint as ckpt
from ivn_fast.train.distributed import World, all_finite, mean_over_ranks
from ivn_fast.train.metrics import MetricsWriter, format_line
from ivn_fast.train.optim import LRSchedule, build_optimizer
from ivn_fast.train.parallelize import checkpoint_blocks, compile_blocks, set_memory_budget, shard_model
from ivn_fast.train.profiling import step_profiler
from ivn_fast.train.stage1 import Stage1Task
from ivn_fast.train.stage2 import Stage2Task
from ivn_fast.viz import save_clip_grid

log = logging.getLogger("ivn_fast")

# settings a resumed run may change, each change logged: the schedule and the optimiser's knobs
RESUME_MAY_CHANGE = ("optim", "train.max_steps")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def window_means(window: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each logged value averaged over the window's applied steps (a skipped step is counted in
    skipped_steps, not averaged in); None where every step of the window was skipped."""
    applied = [r for r in window if r["applied"]]
    keys = [k for k in window[-1] if k != "applied"]
    return {k: sum(r[k] for r in applied) / len(applied) if applied else None for k in keys}


class Trainer:
    def __init__(self, cfg: Config, world: World, *, resume: bool = False):
        self.cfg, self.world = cfg, world
        self.out_dir = run_dir(cfg)
        self.ckpt_root = self.out_dir / "checkpoints"
        earlier = ckpt.latest_checkpoint(self.ckpt_root)
        if earlier is not None and not resume:  # its pruning would delete this run's checkpoints first
            raise ckpt.CheckpointError(f"{self.ckpt_root} holds an earlier run's checkpoints (newest {earlier.name}): "
                                       "pass --resume to continue it, or another --output_dir to start afresh")
        meta = ckpt.read_meta(earlier) if earlier is not None else None  # read once: the task needs it too
        device = resolve_device(cfg.train.device)
        if device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
        self.device = device
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the fp32 diffusion head
        self.amp_dtype = torch.bfloat16 if (cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and device.type == "cuda")) else None

        torch.manual_seed(cfg.train.seed)
        seed = cfg.train.seed * 1000 + world.rank
        self.task = (Stage2Task(cfg, device, seed=seed, saved=None if meta is None else meta.get("task", {}))
                     if cfg.train.stage == 2 else Stage1Task(cfg, device, seed=seed))
        self.model: nn.Module = self.task.build_model().to(device)
        # every process built the same weights from the shared seed; from here each draws its own
        # diffusion timesteps, noise and drop-path masks, as one process would across the batch
        torch.manual_seed(cfg.train.seed * 1_000_003 + world.rank)
        budget = cfg.train.activation_checkpointing == "budget"
        set_memory_budget(cfg.train.ac_budget if budget else 1.0)
        if budget:
            log.info("activation memory budget %.2f for every compiled block", cfg.train.ac_budget)
        elif cfg.train.activation_checkpointing != "none":
            log.info("activation checkpointing (%s) on %d blocks", cfg.train.activation_checkpointing,
                     checkpoint_blocks(self.model, cfg.train.activation_checkpointing))
        if cfg.train.compile:
            log.info("compiled %d student and %d teacher blocks", compile_blocks(self.model),
                     compile_blocks(self.task.teacher))
        if world.size > 1:
            # an EMA target follows the student shard by shard; a frozen teacher stays whole on every
            # process unless asked to shard
            units = {"student": shard_model(self.model, self.amp_dtype)}
            extra = self.task.ema_target if self.task.ema_target is not None else (
                self.task.teacher if cfg.train.shard_teacher else None)
            if extra is not None:
                units["teacher"] = shard_model(extra, self.amp_dtype, forward_only=True)
            log.info("FSDP2 over %d processes: %s", world.size, ", ".join(f"{n} {k} units" for k, n in units.items()))
        self.optimizer = build_optimizer(self.model, cfg.optim, device)
        self.schedule = LRSchedule(cfg.optim, cfg.train.max_steps, cfg.train.batch_size)
        self.step = 0
        self.skipped = 0
        if meta is not None:
            self._resume(earlier, meta)
        elif resume:
            log.info("no checkpoint under %s: starting from step 0", self.ckpt_root)
        self.data = build_train_data(cfg, rank=world.rank, world=world.size, start_step=self.step, device=device)
        self.metrics = MetricsWriter(self.out_dir, cfg.train.tensorboard, enabled=world.is_main)

    # ------------------------------------------------------------------ state

    def tensor_state(self) -> dict[str, Any]:
        """Model and optimiser state, keyed by parameter name, sharded as this run is."""
        state = {"model": get_model_state_dict(self.model),
                 "optimizer": get_optimizer_state_dict(self.model, self.optimizer)}
        if self.task.ema_target is not None:
            state["ema_target"] = get_model_state_dict(self.task.ema_target)
        return state

    def meta_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "skipped_steps": self.skipped,
            "schedule": {"step": self.step, "lr": self.schedule(self.step)},
            "data": {"next_step": self.step, "seed": self.cfg.train.seed,
                     "global_batch": self.cfg.train.batch_size},
            "world_size": self.world.size,
            "config": to_dict(self.cfg),
            "task": self.task.checkpoint_meta(),
        }

    def local_state(self) -> dict[str, Any]:
        return {"rng": ckpt.rng_state(), "task": self.task.state_dict()}

    def _resume(self, path: Path, meta: dict[str, Any]) -> None:
        current = to_dict(self.cfg)
        diff = ckpt.config_diff(meta["config"], current)
        if diff:
            raise ckpt.CheckpointError(
                f"checkpoint {path} was written with a different config; differing fields: {', '.join(diff)}")
        tensors = self.tensor_state()
        try:
            ckpt.load_tensors_into(path, tensors)
            local = ckpt.load_local(path, self.world.rank) if meta["world_size"] == self.world.size else None
        except (Exception, CheckpointException) as e:  # a damaged file: which one, not a reader's traceback
            raise ckpt.unreadable(path, e) from e
        for name, old, new in ckpt.changed_fields(meta["config"], current, RESUME_MAY_CHANGE):
            log.warning("resuming with %s = %r (the checkpoint's run had %r)", name, new, old)
        set_model_state_dict(self.model, tensors["model"])
        set_optimizer_state_dict(self.model, self.optimizer, tensors["optimizer"])
        if self.task.ema_target is not None:
            set_model_state_dict(self.task.ema_target, tensors["ema_target"])
        self.step = meta["step"]
        self.skipped = meta["skipped_steps"]
        if local is not None:
            ckpt.set_rng_state(local["rng"])
            self.task.load_state_dict(local["task"])
        else:
            log.warning("checkpoint written by %d process(es), resumed on %d: weights, optimiser, step and data "
                        "order continue exactly; mask and dropout random streams restart from the seed",
                        meta["world_size"], self.world.size)
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> None:
        path = ckpt.save_checkpoint(self.ckpt_root, self.step, tensors=self.tensor_state(), meta=self.meta_state(),
                                    local=self.local_state(), keep=self.cfg.train.keep_checkpoints,
                                    rank=self.world.rank)
        log.info("saved checkpoint %s", path)

    # ------------------------------------------------------------------ steps

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward_backward_step(self, video: torch.Tensor) -> tuple[dict[str, torch.Tensor], bool]:
        """Loss terms and whether they were finite on every rank (only then is there a backward)."""
        with self.autocast():
            terms = self.task.losses(self.model, video)
        finite = all_finite(terms["loss"])
        if finite:
            terms["loss"].backward()
        return terms, finite

    def train_step(self, video: torch.Tensor) -> dict[str, float]:
        lr = self.schedule.apply(self.optimizer, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        terms, ok = self.forward_backward_step(video)
        grad_norm = torch.zeros(())
        if ok:
            clip = self.cfg.optim.grad_clip or float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            if isinstance(grad_norm, DTensor):
                grad_norm = grad_norm.full_tensor()
            ok = all_finite(grad_norm)
        if ok:
            self.optimizer.step()
            self.task.after_step(self.model)
        else:
            self.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            log.warning("step %d: non-finite loss or gradient on some rank, update skipped (%d so far)",
                        self.step + 1, self.skipped)
        self.step += 1
        values = torch.stack([v.detach().float() for v in terms.values()] + [grad_norm.float().to(self.device)])
        values = mean_over_ranks(values).tolist()
        record = dict(zip(list(terms) + ["grad_norm"], values))
        record["lr"] = lr
        record["applied"] = ok
        return record

    # ------------------------------------------------------------------ loop

    def save_picture(self) -> None:
        """Every process runs the same reconstruction (sharded weights are gathered collectively);
        the first one draws it."""
        devices = [self.device] if self.device.type == "cuda" else []
        self.model.eval()
        with torch.random.fork_rng(devices=devices), self.autocast():
            rows = self.task.reconstruct(self.model, self.data.picture_batch.to(self.device))
        self.model.train()
        if self.world.is_main:
            path = save_clip_grid(rows, self.out_dir / self.task.picture_name)
            log.info("wrote %s (%s)", path, " / ".join(rows))

    def train(self) -> dict[str, float]:
        cfg = self.cfg.train
        self.model.train()
        start_step = self.step
        window: list[dict[str, float]] = []
        t_window, wait_window = time.perf_counter(), 0.0
        last: dict[str, float] = {}
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.world.is_main),
                   dynamic_ncols=True, desc=f"stage {cfg.stage}")
        batches = iter(self.data.batches)
        profiler = step_profiler(cfg.profile and self.world.is_main, self.out_dir / "profile", self.device)
        with profiler as profile_step:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                batch = next(batches)
                self.data.skips.update(batch)
                video = batch["video"].to(self.device, non_blocking=True)
                wait_window += time.perf_counter() - t0
                window.append(self.train_step(video))
                profile_step()
                bar.update(1)
                bar.set_postfix(loss=f"{window[-1]['loss']:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    elapsed = time.perf_counter() - t_window
                    last = window_means(window)
                    last.update(step=self.step, lr=window[-1]["lr"], skipped_steps=self.skipped,
                                clips_per_s=len(window) * cfg.batch_size / elapsed,
                                step_time_s=elapsed / len(window), data_wait_frac=wait_window / elapsed,
                                **self.data.skips.summary())
                    if self.device.type == "cuda":
                        last["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9  # GB, as bench reports
                    self.metrics.write(last)
                    if self.world.is_main:
                        bar.write(format_line(last, cfg.max_steps))
                    window, t_window, wait_window = [], time.perf_counter(), 0.0
                if self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                    self.save()
                if cfg.picture_every and self.step % cfg.picture_every == 0 and self.step < cfg.max_steps:
                    self.save_picture()
        bar.close()
        if self.step > start_step or ckpt.latest_checkpoint(self.ckpt_root) is None:
            self.save()
        self.save_picture()
        self.metrics.close()
        return last
