"""Atomic checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a directory ``step_XXXXXXXX``: model and optimiser state as a
torch.distributed.checkpoint (each process writes its shards; any number of processes can read
it back), ``local_rankNNNNN.pt`` per process (random streams) and ``state.pt`` (step, config,
data position). It is written under a temporary name and renamed into place, so a crash mid-save
never leaves a half-written checkpoint that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from ivn_fast.train.distributed import barrier


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns on every single-process save and load; here that use is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


PREFIX = "step_"
LOCAL_PREFIX = "local_rank"


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: Path, step: int, *, tensors: dict[str, Any], meta: dict[str, Any],
                    local: dict[str, Any], keep: int, rank: int = 0) -> Path:
    """Write root/step_XXXXXXXX atomically from every process, then prune to the newest `keep`.

    `tensors` (model and optimiser state, sharded or not) go through torch.distributed.checkpoint,
    each process writing its own shards, so a checkpoint loads on any number of processes. `meta`
    (rank 0's step, config, data position) lands in state.pt, written last: a directory without it
    is incomplete. `local` (random streams) is per process. Everything is written under a
    temporary name and renamed into place once every process has finished.
    """
    root = Path(root)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp_{final.name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with _quiet_single_process():
        dcp.save(tensors, checkpoint_id=tmp, no_dist=not dist.is_initialized())
    _save_file(local, tmp / f"{LOCAL_PREFIX}{rank:05d}.pt")
    barrier()
    if rank == 0:
        _save_file(meta, tmp / "state.pt")
        _fsync_dir(tmp)  # the files' directory entries, before the directory is renamed into place
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)  # the rename survives a power cut before anything is pruned
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp_" + PREFIX + "*"):  # left by saves that crashed
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_file_atomic(obj: Any, path: Path) -> None:
    """torch.save under a temporary name, synced, then renamed and the rename synced: a crash leaves
    the previous file or the new one whole (fine-tuning's single-file checkpoints)."""
    tmp = path.with_name(f".tmp_{path.name}")
    _save_file(obj, tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _dir(path: Path) -> Path:
    path = Path(path)
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (a step_XXXXXXXX directory holding state.pt)")
    return path


def load_meta(path: Path) -> dict[str, Any]:
    """rank 0's step, config, data position and skip count."""
    return torch.load(_dir(path) / "state.pt", map_location="cpu", weights_only=False)


def read_meta(path: Path) -> dict[str, Any]:
    """load_meta for a checkpoint a run resumes from: a damaged one is a CheckpointError naming it."""
    try:
        return load_meta(path)
    except Exception as e:
        raise unreadable(path, e) from e


def unreadable(path: Path, error: BaseException) -> CheckpointError:
    """The error for a checkpoint that cannot be read: which one, the reader's last line, what to do."""
    text = str(error).strip()
    cause = text.splitlines()[-1] if text else type(error).__name__  # DCP nests whole tracebacks
    return CheckpointError(f"checkpoint {path} cannot be read ({cause}); move it aside to resume from the one "
                           "before")


def load_local(path: Path, rank: int) -> dict[str, Any] | None:
    """This process's random streams, or None when the writing run had fewer processes."""
    file = _dir(path) / f"{LOCAL_PREFIX}{rank:05d}.pt"
    return torch.load(file, map_location="cpu", weights_only=False) if file.is_file() else None


def load_tensors_into(path: Path, tensors: dict[str, Any]) -> None:
    """Fill a state dict shaped like the one saved (sharded for this run's processes) in place."""
    with _quiet_single_process():
        dcp.load(tensors, checkpoint_id=_dir(path), no_dist=not dist.is_initialized())


def load_full(path: Path, section: str, part: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of one saved section (e.g. "model") unsharded, on the CPU, read by this process
    alone: for loading weights into another model (Stage 2, export, probes). With `part` (e.g.
    "encoder."), only the tensors under it are read, named without it."""
    path = _dir(path)
    reader = dcp.FileSystemReader(path)
    prefix = f"{section}.{part}"
    out = {key: torch.empty(m.size, dtype=m.properties.dtype)
           for key, m in reader.read_metadata().state_dict_metadata.items()
           if key.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    with _quiet_single_process():
        dcp.load(out, storage_reader=reader, no_dist=True)
    return {key[len(prefix):]: value for key, value in out.items()}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The saved metadata plus the model's full weights under "model"."""
    return {**load_meta(path), "model": load_full(path, "model")}


# Config sections a resumed run must share with the run that wrote the checkpoint.
RESUME_MUST_MATCH = ("model", "mask", "loss", "stage2", "data.source", "data.num_frames", "data.size", "data.synthetic_videos",
                     "data.train_list", "data.root", "data.sampling", "data.stride", "data.min_frames", "data.flip",
                     "data.no_flip_sources",
                     "train.batch_size", "train.seed", "train.stage")


class CheckpointError(ValueError):
    """A checkpoint this run cannot use (another config, stage or shape, unreadable, gone) or must
    not write over (an earlier run's, without --resume)."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def changed_fields(saved: dict, current: dict, keys: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """(dotted name, saved value, current value) of the fields under `keys` whose values differ."""
    a, b = _flat(saved), _flat(current)
    return [(n, a.get(n), b.get(n)) for n in sorted(set(a) | set(b))
            if any(n == k or n.startswith(k + ".") for k in keys) and a.get(n) != b.get(n)]


def config_diff(saved: dict, current: dict, keys: tuple[str, ...] = RESUME_MUST_MATCH) -> list[str]:
    """Dotted names of the fields under `keys` whose values differ."""
    return [name for name, _, _ in changed_fields(saved, current, keys)]
