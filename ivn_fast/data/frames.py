"""Clips from folders of frame images: the rawframes layout of TSN / mmaction / VideoMAE lists
(``frame_dir total_frames label``), read with PIL.

A folder's frames are its images in natural order (img_00001.jpg ... img_00010.jpg, or 1.png ...
10.png), counted from the folder itself rather than the list. Folders carry no frame rate: a list
window given in seconds is read at FPS frames per second.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from ivn_fast.data.health import BadVideo
from ivn_fast.data.sampling import time_window

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FPS = 30.0


def _natural(name: str) -> list:
    """img_2 before img_10: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class FrameFolder:
    """One folder of frames, with the reading interface of PyAVVideo. The constructor raises BadVideo."""

    codec = "frames"  # no DALI codec: these clips always go through this reader
    fps = FPS

    def __init__(self, path: str):
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            raise BadVideo("missing") from None
        except OSError as e:
            raise BadVideo("unreadable", str(e)) from None
        self.path = path
        self.files = sorted((n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)), key=_natural)
        if not self.files:
            raise BadVideo("empty", "the folder holds no frame images")
        self.num_frames = len(self.files)
        self.width, self.height = self._open(0).size

    def __enter__(self) -> FrameFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _open(self, number: int) -> Image.Image:
        name = self.files[number]
        try:
            return Image.open(os.path.join(self.path, name))
        except (UnidentifiedImageError, OSError) as e:
            raise BadVideo("corrupt", f"{name}: {e}") from None

    def window(self, start: float, end: float) -> tuple[int, int]:
        """(first frame, frame count) of the window [start, end) seconds; negative bounds: the ends."""
        return time_window(start, end, self.fps, self.num_frames)

    def check_reaches(self, number: int) -> None:
        if number >= self.num_frames:
            raise BadVideo("truncated", f"frame {number} wanted, the folder holds {self.num_frames}")

    def read(self, numbers: np.ndarray, yuv: bool = False) -> np.ndarray:
        """Frames `numbers` (any order, repeats allowed) as [len, H, W, 3] uint8; a frame of another
        size is resized to the first frame's, as a video stream that changes size keeps its first."""
        numbers = np.asarray(numbers)
        self.check_reaches(int(numbers.max()))
        arrays = {}
        for n in np.unique(numbers):
            try:
                image = self._open(int(n)).convert("RGB")
            except OSError as e:  # a cut-off file fails when its pixels are read
                raise BadVideo("corrupt", f"{self.files[int(n)]}: {e}") from None
            if image.size != (self.width, self.height):
                image = image.resize((self.width, self.height), Image.BILINEAR)
            arrays[int(n)] = np.asarray(image)
        return np.stack([arrays[int(n)] for n in numbers])


def open_video(path: str, threads: int = 1):
    """A frame folder or a video file, by what `path` is."""
    if os.path.isdir(path):
        return FrameFolder(path)
    from ivn_fast.data.pyav import PyAVVideo  # here: synthetic-data runs need no PyAV installed

    return PyAVVideo(path, threads)
