"""Clips from real video files: sampling, decoding and cropping, with bad files replaced.

A key is index + epoch * len(dataset) (StepBatchSampler with epoch_keys), so a clip's randomness
(frame offsets, crop, flip) is drawn from (seed, epoch, index) and every worker count, resume
point and decoder gives the same clip. A file that cannot give a clip is replaced by another
video drawn from (seed, epoch, index, attempt), equally reproducible, and the skip travels with
the sample (ivn_fast.data.health counts it in the main process).

At test time (train=False) every video gives segments x crops clips: temporal view s and
spatial view c of video i is item (i * segments + s) * crops + c.

A list entry that is a folder of frame images (rawframes) is read by ivn_fast.data.frames.

With native_cut (auto: where it builds; on: fail here if it cannot), clips of yuv420p frames are
cut straight from their YUV planes by ivn_fast.data.native, skipping the RGB conversion of
whole frames; other frames, and native_cut off, go through RGB and augment.cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ivn_fast.data import native
from ivn_fast.data.augment import Crop, cut, multiscale_crop, view_crop
from ivn_fast.data.frames import open_video
from ivn_fast.data.health import BadVideo, TooManyBadSamples, encode_skips
from ivn_fast.data.lists import VideoList
from ivn_fast.data.sampling import clip_indices

if TYPE_CHECKING:
    from ivn_fast.data.frames import FrameFolder
    from ivn_fast.data.pyav import PyAVVideo

# replacements tried for one sample before giving up: with 1% bad files, 12 failures in a row
# happen once in 1e24 draws, so reaching it means most of the list is unreadable
MAX_ATTEMPTS = 12
_TIME, _SPACE, _REPLACE = 0, 1, 2  # independent random streams per clip


class Plan(NamedTuple):
    """Everything a decoder needs to make one clip, from a probe of the file (no decoding)."""
    index: int
    path: str
    frames: np.ndarray  # frame numbers in the file, in clip order
    crop: Crop
    codec: str
    skips: list[tuple[str, str, str]]


class VideoClips(Dataset):
    """num_frames x size x size clips, ImageNet-normalised [3, T, size, size], from a VideoList."""

    def __init__(self, videos: VideoList, *, num_frames: int, size: int, sampling: str = "sparse", stride: int = 1,
                 min_frames: int = 1, flip: bool = True, seed: int = 0, train: bool = True, segments: int = 1,
                 crops: int = 1, threads: int = 1, native_cut: str = "auto"):
        if min(num_frames, size, stride, min_frames, segments, crops) < 1:
            raise ValueError("num_frames, size, stride, min_frames, segments and crops must be >= 1")
        if native_cut not in ("auto", "on", "off"):
            raise ValueError(f"native_cut must be auto, on or off, not {native_cut!r}")
        if native_cut == "on":
            native.load()  # raises NativeUnavailable, saying why
        self.use_native = native_cut != "off" and native.available()
        self.videos, self.num_frames, self.size = videos, num_frames, size
        self.sampling, self.stride, self.min_frames, self.flip = sampling, stride, min_frames, flip
        self.seed, self.train, self.threads = seed, train, threads
        self.segments, self.crops = (1, 1) if train else (segments, crops)

    def __len__(self) -> int:
        return len(self.videos) * self.segments * self.crops

    def _split(self, key: int) -> tuple[int, int, int]:
        """key -> (video index, epoch, view)."""
        epoch, item = divmod(int(key), len(self))
        index, view = divmod(item, self.segments * self.crops)
        return index, epoch, view

    def _rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *parts])

    def _frames(self, video: PyAVVideo | FrameFolder, index: int, epoch: int, view: int) -> np.ndarray:
        entry = self.videos[index]
        first, count = video.window(entry.start, entry.end)
        if count < self.min_frames:
            raise BadVideo("too_short", f"{count} frames, data.min_frames is {self.min_frames}")
        rng = self._rng(epoch, index, _TIME) if self.train else None
        return first + clip_indices(count, self.num_frames, mode=self.sampling, stride=self.stride, rng=rng,
                                    view=view // self.crops, views=self.segments)

    def _crop(self, h: int, w: int, index: int, epoch: int, view: int) -> Crop:
        if not self.train:
            return view_crop(h, w, view % self.crops, self.crops)
        return multiscale_crop(h, w, self.size, self._rng(epoch, index, _SPACE),
                               flip=self.flip and self.videos.flips(index))

    def _attempt(self, index: int, epoch: int, view: int, decode: bool) -> torch.Tensor | Plan:
        path = self.videos[index].path
        with open_video(path, self.threads) as video:
            frames = self._frames(video, index, epoch, view)
            if not decode:
                video.check_reaches(int(frames.max()))
                crop = self._crop(video.height, video.width, index, epoch, view)
                return Plan(index, path, frames, crop, video.codec, [])
            pixels = video.read(frames, yuv=self.use_native)
        if isinstance(pixels, native.YUV420):
            return native.cut_yuv420(pixels, self._crop(*pixels.shape, index, epoch, view), self.size)
        rgb = torch.from_numpy(pixels)
        return cut(rgb, self._crop(rgb.shape[1], rgb.shape[2], index, epoch, view), self.size)

    def clip(self, index: int, epoch: int = 0, view: int = 0) -> torch.Tensor:
        """Video `index`'s clip, without replacement: raises BadVideo when the file cannot give one."""
        return self._attempt(index, epoch, view, decode=True)

    def _resolve(self, key: int, decode: bool) -> tuple[int, torch.Tensor | Plan, list[tuple[str, str, str]]]:
        """The first video of key's replacement chain that gives a clip, and the skips on the way."""
        index, epoch, view = self._split(key)
        skips: list[tuple[str, str, str]] = []
        for attempt in range(MAX_ATTEMPTS):
            j = index if attempt == 0 else int(self._rng(epoch, index, _REPLACE, attempt).integers(len(self.videos)))
            try:
                return j, self._attempt(j, epoch, view, decode), skips
            except BadVideo as e:
                skips.append((e.reason, self.videos[j].path, e.detail))
        reasons = ", ".join(sorted({s[0] for s in skips}))
        raise TooManyBadSamples(f"{MAX_ATTEMPTS} videos in a row could not be read ({reasons}; last: {skips[-1][1]}): "
                           "most of the list seems unreadable; check data.root and run "
                           "`python -m ivn_fast.data check LIST`")

    def __getitem__(self, key: int) -> dict[str, torch.Tensor | int | str]:
        index, clip, skips = self._resolve(key, decode=True)
        return {"video": clip, "index": index, "label": self.label(index), "skipped": encode_skips(skips)}

    def plan(self, key: int) -> Plan:
        """What __getitem__(key) would decode, found by probing files only (for other decoders)."""
        _, plan, skips = self._resolve(key, decode=False)
        return plan._replace(skips=skips)

    def label(self, index: int) -> int:
        return int(self.videos.labels[index])
