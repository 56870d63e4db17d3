"""The trainer's data: the batches of this rank, a fixed picture batch, the skip counter."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ivn_fast.config import Config
from ivn_fast.data.dali import DaliClips, dali_available
from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.health import SkipCounter
from ivn_fast.data.lists import ListError, load_lists
from ivn_fast.data.loader import StepBatchSampler, build_loader
from ivn_fast.data.synthetic import SyntheticVideos
from ivn_fast.train.distributed import sum_over_ranks

log = logging.getLogger("ivn_fast")


@dataclass
class TrainData:
    batches: Iterable[dict]  # dicts with "video" [B, 3, T, H, W], ImageNet-normalised
    picture_batch: torch.Tensor  # 4 clips for the reconstruction picture
    skips: SkipCounter


def video_clips(cfg: Config, *, train: bool = True) -> VideoClips:
    """The clips of data.train_list as the config describes them."""
    d = cfg.data
    videos = load_lists(d.train_list, root=d.root, num_classes=d.num_classes,
                        no_flip_sources=tuple(s.strip() for s in d.no_flip_sources.split(",")), seed=cfg.train.seed)
    return VideoClips(videos, num_frames=d.num_frames, size=d.size, sampling=d.sampling, stride=d.stride,
                      min_frames=d.min_frames, flip=d.flip, seed=cfg.train.seed, train=train,
                      threads=d.decode_threads, native_cut=d.native_cut)


def pick_decoder(choice: str, device: torch.device) -> tuple[str, str]:
    """(decoder, why): auto takes DALI only where a GPU and DALI are both present."""
    if choice != "auto":
        return choice, "asked for"
    if device.type != "cuda":
        return "pyav", "no GPU"
    if not dali_available():
        return "pyav", "DALI is not installed (pip install ivn-fast[gpu])"
    return "dali", "GPU and DALI present"


def build_train_data(cfg: Config, *, rank: int, world: int, start_step: int, device: torch.device) -> TrainData:
    d, seed, batch = cfg.data, cfg.train.seed, cfg.train.batch_size
    if d.source == "synthetic":
        dataset: Dataset = SyntheticVideos(num_videos=d.synthetic_videos, num_frames=d.num_frames, size=d.size,
                                           seed=seed)
        keys = False
    else:
        dataset, keys = video_clips(cfg), True
        if len(dataset) < batch:
            raise ListError(f"data.train_list {d.train_list}: {len(dataset)} clips, fewer than one global batch "
                            f"(train.batch_size {batch})")
    pictures = next(iter(build_loader(dataset, min(4, len(dataset)), rank=0, world=1, seed=seed + 1, start_step=0,
                                      num_workers=0, pin_memory=False, epoch_keys=keys)))["video"]
    decoder, why = ("synthetic", "") if d.source == "synthetic" else pick_decoder(d.decoder, device)
    if decoder == "dali":
        sampler = StepBatchSampler(len(dataset), batch, rank=rank, world=world, seed=seed, start_step=start_step,
                                   epoch_keys=True)
        batches: Iterable[dict] = DaliClips(dataset, sampler, batch // world, device, threads=max(2, d.num_workers))
    else:
        batches = build_loader(dataset, batch, rank=rank, world=world, seed=seed, start_step=start_step,
                               num_workers=d.num_workers, pin_memory=device.type == "cuda", epoch_keys=keys)
    if decoder != "synthetic":
        log.info("data: %d clips from %s, decoded by %s (%s)%s", len(dataset), d.train_list,
                 "DALI" if decoder == "dali" else "PyAV", why,
                 f" in {d.num_workers} worker process(es) x {d.decode_threads} thread(s), "
                 f"{'native YUV' if dataset.use_native else 'PyTorch'} cut" if decoder == "pyav" else "")
    return TrainData(batches, pictures, SkipCounter(d.max_bad_fraction, run_total=sum_over_ranks))
