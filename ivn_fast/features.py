"""Frozen-encoder features for the probes and evaluation: tokens of every view encoded once and
kept (optionally cached on disk, mean-pooled), or encoded as they are read (streamed, shared over
torchrun's processes)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from ivn_fast.data.health import SkipCounter
from ivn_fast.data.loader import split_batches
from ivn_fast.data.windows import WindowList
from ivn_fast.fit import Batches, shuffled
from ivn_fast.models.encoder import EncoderOutput, VideoEncoder
from ivn_fast.train.distributed import World

log = logging.getLogger("ivn_fast")

Features = tuple[torch.Tensor, dict[str, torch.Tensor]]  # tokens [N, V, S, C], labels per key [N]


@torch.no_grad()
def view_tokens(encoder: VideoEncoder, video: torch.Tensor, device: torch.device, *, pool: bool = False,
                amp: torch.dtype | None = None) -> torch.Tensor:
    """Frozen float32 tokens [B, V, S, C] (on `device`) of clips [B, V, 3, T, H, W] or [B, 3, T, H, W];
    the encoder runs under autocast to `amp` when given."""
    video = video if video.dim() == 6 else video[:, None]
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        out = encoder(video.flatten(0, 1).to(device, non_blocking=True)).tokens.float()
    return (out.mean(1, keepdim=True) if pool else out).unflatten(0, video.shape[:2])


class LayerTokens(torch.nn.Module):
    """An encoder's tokens after several blocks, side by side along channels: what a head that reads
    intermediate layers (the temporal depth head) is fed, through the same kept or streamed sources."""

    def __init__(self, encoder: VideoEncoder, layers: Sequence[int]):
        super().__init__()
        self.encoder, self.layers, self.cfg = encoder, tuple(layers), encoder.cfg

    @property
    def width(self) -> int:
        return len(self.layers) * self.encoder.width

    def forward(self, video: torch.Tensor) -> EncoderOutput:
        blocks = sorted(set(self.layers))  # a block named twice is returned once
        out = self.encoder(video, return_layers=tuple(blocks))
        by_block = dict(zip(blocks, out.layers))
        return EncoderOutput(torch.cat([by_block[i] for i in self.layers], -1), [], out.grid)


@torch.no_grad()
def encode(encoder: VideoEncoder, data: Dataset, label_keys: Sequence[str], batch: int, device: torch.device, *,
           pool: bool = False, workers: int = 0, amp: torch.dtype | None = None) -> Features:
    """Frozen tokens [N, V, S, C] (CPU, float32) of every view of every clip, and the labels. An
    item's video is [V, 3, T, H, W] (or one view, [3, T, H, W]); `pool` keeps only the mean over
    tokens (S = 1), all a linear probe reads. Window lists leave an unreadable window out where
    video lists replace a bad video by another."""
    tokens, labels = [], {k: [] for k in label_keys}
    replaced = not isinstance(data, WindowList)
    # logs each unreadable file once; never stops a probe
    skips = SkipCounter(max_fraction=1.0, instead="a replacement clip is used" if replaced else "it is left out")
    for items in DataLoader(data, batch_size=batch, num_workers=workers):
        skips.update(items)
        tokens.append(view_tokens(encoder, items["video"], device, pool=pool, amp=amp).cpu())
        for k in label_keys:
            labels[k].append(torch.as_tensor(items[k]))
    if skips.bad:
        reasons = ", ".join(f"{k[4:]} {n}" for k, n in skips.summary().items() if k != "bad_samples")
        if replaced:
            log.warning("%d bad video(s) were replaced by other videos of the list (%s): the probe saw a "
                        "different set; `python -m ivn_fast.data check LIST` lists them", skips.bad, reasons)
        else:
            log.warning("%d window(s) could not be read (%s) and are left out", skips.bad, reasons)
    return torch.cat(tokens), {k: torch.cat(v) for k, v in labels.items()}


def encoder_digest(encoder: VideoEncoder) -> str:
    """sha256 of the encoder's config and weights: a feature cache entry is valid for exactly these."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(encoder.cfg), sort_keys=True).encode())
    for key, value in encoder.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_encode(cache_dir: Path, spec: dict, encoder: VideoEncoder, data: Dataset, label_keys: Sequence[str],
                  batch: int, device: torch.device, *, workers: int = 0,
                  amp: torch.dtype | None = None) -> tuple[Features, bool]:
    """Mean-pooled features from cache_dir when this encoder has seen this data (`spec` names
    it) at this precision, else encoded and stored (safetensors, written atomically); and whether
    it was a hit."""
    key = hashlib.sha256(json.dumps({"encoder": encoder_digest(encoder), "labels": list(label_keys), **spec,
                                     **({"amp": str(amp)} if amp else {})}, sort_keys=True).encode())
    path = Path(cache_dir) / f"{key.hexdigest()[:32]}.safetensors"
    if path.is_file():
        stored = load_file(str(path))
        return (stored["tokens"], {k: stored[f"label.{k}"] for k in label_keys}), True
    tokens, labels = encode(encoder, data, label_keys, batch, device, pool=True, workers=workers, amp=amp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}_{os.getpid()}")
    save_file({"tokens": tokens.contiguous(), **{f"label.{k}": v for k, v in labels.items()}}, str(tmp),
              metadata={"spec": json.dumps(spec, sort_keys=True)})
    os.replace(tmp, path)
    return (tokens, labels), False


def gather_rows(rows: torch.Tensor, world: World) -> torch.Tensor:
    """Every process's rows (CPU tensors), concatenated in rank order, on every process."""
    if world.size == 1:
        return rows
    parts = [None] * world.size
    dist.all_gather_object(parts, rows)
    return torch.cat(parts)


class Kept:
    """Tokens encoded once and kept: every view of every clip, and the clips' targets (labels, or a
    dense probe's boxes or depth maps), one row per clip. Never shared between processes."""

    world = World()

    def __init__(self, tokens: torch.Tensor, *targets: torch.Tensor, batch: int = 64):
        self.tokens, self.targets, self.batch = tokens, targets, batch  # tokens [N, V, S, C]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def labels(self) -> torch.Tensor:
        return self.targets[0]

    @property
    def width(self) -> int:
        return self.tokens.shape[-1]

    def first(self, n: int) -> tuple[torch.Tensor, ...]:
        """(tokens [n, V, S, C], *targets) of the first n clips."""
        return self.tokens[:n], *(t[:n] for t in self.targets)

    def batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Every clip once, in order: (tokens [B, V, S, C], *targets)."""
        for i in range(0, len(self), self.batch):
            yield self.tokens[i:i + self.batch], *(t[i:i + self.batch] for t in self.targets)

    def epochs(self, batch: int, seed: int) -> Batches:
        """Training epochs: every view of every clip a sample, (tokens [B, S, C], *targets), shuffled."""
        views = self.tokens.shape[1]
        rows = (self.tokens.flatten(0, 1), *(t.repeat_interleave(views, 0) for t in self.targets))
        return shuffled(rows, batch, seed)[0]

    def steps(self, batch: int) -> int:
        """Training batches per epoch (epochs)."""
        return math.ceil(len(self) * self.tokens.shape[1] / batch)


class Streamed:
    """Clips encoded as the probe reads them, never kept: for sets whose tokens do not fit in memory.
    Training batches use epoch keys (index + epoch * N), so each epoch samples and crops every clip
    afresh, as a training run does, in a seeded permutation per epoch. `keys` name the items' targets."""

    def __init__(self, encoder: VideoEncoder, data: Dataset, keys: Sequence[str], *, batch: int,
                 device: torch.device, workers: int, pool: bool = False, world: World = World(),
                 amp: torch.dtype | None = None):
        self.encoder, self.data, self.keys, self.batch, self.device = encoder, data, tuple(keys), batch, device
        self.workers, self.pool, self.world, self.amp = workers, pool, world, amp
        self.skips = SkipCounter(max_fraction=1.0)  # logs each unreadable file once; never stops a probe

    def __len__(self) -> int:
        return len(self.data)

    @property
    def width(self) -> int:
        return self.encoder.width

    def _encoded(self, items: dict) -> tuple[torch.Tensor, ...]:
        tokens = view_tokens(self.encoder, items["video"], self.device, pool=self.pool, amp=self.amp)
        return tokens, *(torch.as_tensor(items[k]) for k in self.keys)

    def first(self, n: int) -> tuple[torch.Tensor, ...]:
        """(tokens [n, V, S, C] on the device, *targets) of the first n clips, encoded by this process alone."""
        loader = DataLoader(self.data, batch_sampler=[list(range(min(n, len(self))))], num_workers=0)
        return self._encoded(next(iter(loader)))

    def batches(self, keys: Sequence[Sequence[int]] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """(tokens [B, V, S, C] on the device, *targets) for batches of keys; None: this process's share
        of every clip (every world.size-th)."""
        if keys is None:
            mine = list(range(self.world.rank, len(self), self.world.size))
            keys = [mine[i:i + self.batch] for i in range(0, len(mine), self.batch)]
        loader = DataLoader(self.data, batch_sampler=keys, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda")
        for items in loader:
            self.skips.update(items)
            yield self._encoded(items)

    def epochs(self, batch: int, seed: int) -> Batches:
        """Training epochs: one view per clip, (tokens [B, S, C], *targets); with several processes each
        global batch of `batch` clips is split over them (a last batch too small to split is dropped)."""
        g = torch.Generator().manual_seed(seed)  # one generator across epochs, drawn in order: as `shuffled`

        def one(epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
            keys = split_batches(torch.randperm(len(self), generator=g) + epoch * len(self), batch,
                                 rank=self.world.rank, world=self.world.size)
            return ((tokens[:, 0], *targets) for tokens, *targets in self.batches(keys))

        return one

    def steps(self, batch: int) -> int:
        """Training batches per epoch (epochs)."""
        return len(split_batches(torch.arange(len(self)), batch, rank=self.world.rank, world=self.world.size))


Source = Kept | Streamed
