"""Atomic checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a directory ``step_XXXXXXXX`` written under a temporary name and renamed
into place, so a crash mid-save never leaves a half-written checkpoint that looks complete.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step_"


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


def save_checkpoint(root: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write state to root/step_XXXXXXXX atomically, then prune to the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp_{final.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    file = path / "state.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(file, map_location="cpu", weights_only=False)


# Config sections a resumed run must share with the run that wrote the checkpoint.
RESUME_MUST_MATCH = ("model", "mask", "loss", "stage2", "data.source", "data.num_frames", "data.size", "data.synthetic_videos",
                     "data.train_list", "data.root", "data.sampling", "data.stride", "data.min_frames", "data.flip",
                     "data.no_flip_sources",
                     "train.batch_size", "train.seed", "train.stage")


class CheckpointMismatch(ValueError):
    """A checkpoint written by a run with a different config."""


def config_diff(saved: dict, current: dict, keys: tuple[str, ...] = RESUME_MUST_MATCH) -> list[str]:
    """Dotted names of the fields under `keys` whose values differ."""

    def flat(tree: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix: tree}
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else k))
        return out

    a, b = flat(saved, ""), flat(current, "")
    names = sorted(set(a) | set(b))
    return [n for n in names if any(n == k or n.startswith(k + ".") for k in keys) and a.get(n) != b.get(n)]
