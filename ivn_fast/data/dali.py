"""GPU decoding with NVIDIA DALI: the same clips as the PyAV path, decoded and cut on the device.

The host plans each clip exactly as VideoClips would (frame numbers, crop, flip, replacements of
files that fail to open; ivn_fast.data.dataset.Plan) by probing files, a few threads ahead of the
device; DALI then decodes those frames (NVDEC on a GPU), resizes the crop with antialiasing and
normalises, and the batch lands on the device as [B, 3, T, size, size], like the DataLoader's.

Clips DALI cannot take go through PyAV in the same batch, keeping the sampling semantics: codecs
its backend lacks (the CPU backend decodes VP8, VP9 and MJPEG only) and every clip of a batch
DALI fails on (a damaged stream), which PyAV then reports and replaces as usual. DALI decodes
frames as stored: rotation metadata is applied on the PyAV path only.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ivn_fast.data.dataset import Plan, VideoClips
from ivn_fast.data.health import encode_skips
from ivn_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("ivn_fast")

CODECS = {
    "cpu": frozenset({"vp8", "vp9", "mjpeg"}),
    "mixed": frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "mpeg4", "av1"}),
}


def dali_available() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` package at all
        return False


def _pipeline(batch_size: int, threads: int, device_id: int | None, backend: str, size: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1,
                  exec_dynamic=True)
    def clips():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
        mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
        # frames past the end (a stated count a little long) repeat the last one, as PyAV gives them
        video = fn.decoders.video(encoded, device=backend, frames=frames, pad_mode="edge")
        video = fn.resize(video, size=[size, size], roi_start=roi_start, roi_end=roi_end, antialias=True,
                          interp_type=types.INTERP_LINEAR)
        return fn.crop_mirror_normalize(video, mirror=mirror, mean=[255 * m for m in IMAGENET_MEAN],
                                        std=[255 * s for s in IMAGENET_STD], output_layout="CFHW",
                                        dtype=types.FLOAT)

    pipe = clips()
    pipe.build()
    return pipe


class DaliClips:
    """Batches of one rank, in the order of `batches` (lists of dataset keys)."""

    def __init__(self, dataset: VideoClips, batches: Iterable[list[int]], batch_size: int, device: torch.device,
                 threads: int = 2):
        self.dataset, self.batches, self.batch_size, self.device = dataset, batches, batch_size, device
        self.backend = "mixed" if device.type == "cuda" else "cpu"
        self.threads = threads
        self.pipe = self._build()
        self.pool = ThreadPoolExecutor(threads)
        self._warned = False

    def _build(self):
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        return _pipeline(self.batch_size, self.threads, device_id, self.backend, self.dataset.size)

    def _plan(self, key: int) -> tuple[Plan, np.ndarray | None]:
        """The clip's plan and, where DALI can decode it, the file's bytes."""
        plan = self.dataset.plan(key)
        encoded = np.fromfile(plan.path, dtype=np.uint8) if plan.codec in CODECS[self.backend] else None
        return plan, encoded

    def __iter__(self) -> Iterator[dict]:
        batches = iter(self.batches)

        def prepare() -> tuple[list[int], list[Future]]:
            keys = next(batches)
            return keys, [self.pool.submit(self._plan, k) for k in keys]

        ahead = [prepare(), prepare()]
        while True:
            keys, futures = ahead.pop(0)
            ahead.append(prepare())
            yield self._batch(keys, [f.result() for f in futures])

    def _decode(self, planned: list[tuple[Plan, np.ndarray]]) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        plans = [p for p, _ in planned]
        self.pipe.feed_input("encoded", [e for _, e in planned])
        self.pipe.feed_input("frames", [p.frames.astype(np.int32) for p in plans])
        self.pipe.feed_input("roi_start", [np.array([p.crop.top, p.crop.left], np.float32) for p in plans])
        self.pipe.feed_input("roi_end", [np.array([p.crop.top + p.crop.height, p.crop.left + p.crop.width],
                                                  np.float32) for p in plans])
        self.pipe.feed_input("mirror", [np.array(int(p.crop.flip), np.int32) for p in plans])
        (out,) = self.pipe.run()
        dense = out.as_tensor()
        video = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.backend == "mixed" else None
        feed_ndarray(dense, video, cuda_stream=stream)
        return video

    def _batch(self, keys: list[int], planned: list[tuple[Plan, np.ndarray | None]]) -> dict:
        clips: list[torch.Tensor | None] = [None] * len(keys)
        skipped = [encode_skips(p.skips) for p, _ in planned]
        index = [p.index for p, _ in planned]
        labels = [self.dataset.label(p.index) for p, _ in planned]
        take = [i for i, (_, e) in enumerate(planned) if e is not None]
        if take:
            try:
                video = self._decode([planned[i] for i in take])
            except RuntimeError as e:
                if not self._warned:
                    log.warning("DALI could not decode a batch (%s); its clips go through PyAV", str(e).splitlines()[0])
                    self._warned = True
                self.pipe = self._build()
            else:
                if len(take) == len(keys):
                    return self._collate(video, index, labels, skipped)
                for k, i in enumerate(take):
                    clips[i] = video[k]
        for i, key in enumerate(keys):
            if clips[i] is None:
                item = self.dataset[key]
                clips[i], index[i], skipped[i] = item["video"].to(self.device), item["index"], item["skipped"]
                labels[i] = item["label"]
        return self._collate(torch.stack(clips), index, labels, skipped)

    @staticmethod
    def _collate(video: torch.Tensor, index: list[int], labels: list[int], skipped: list[str]) -> dict:
        """The DataLoader's batch layout, with the video already on the device."""
        return {"video": video, "index": torch.tensor(index), "label": torch.tensor(labels), "skipped": skipped}
