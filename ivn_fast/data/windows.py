"""Windows of frame images listed one per line as JSON objects, `{"frames": [paths], ...}`: the
box lists of the tracking probe and the depth lists of the depth probe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ivn_fast.data.health import encode_skips



def read_lines(path: str, num_frames: int, root: str = "") -> list[tuple[str, dict, list[str]]]:
    """(where, entry, frame paths) per non-empty line; `where` ("FILE:LINE") names the line in
    the caller's errors. A line that is not an object with num_frames frames is a ValueError."""
    windows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        frames = entry.get("frames") if isinstance(entry, dict) else None
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise ValueError(f"{where}: a window is a JSON object whose 'frames' lists image paths")
        if len(frames) != num_frames:
            raise ValueError(f"{where}: {len(frames)} frames, the probe reads windows of {num_frames} (--frames)")
        windows.append((where, entry, [os.path.join(root, f) for f in frames]))
    if not windows:
        raise ValueError(f"{path}: no windows")
    return windows


def read_images(paths: list[str], mode: str = "RGB") -> np.ndarray:
    """[T, H, W, 3] uint8 frames (mode "RGB"), or [T, H, W] maps as stored (mode "" keeps 16-bit
    depth PNGs whole). An image of another size is resized to the first's (maps by nearest
    neighbour, so no value is invented). A file that cannot be read raises OSError."""
    images = []
    for p in paths:
        with Image.open(p) as im:
            image = im.convert(mode) if mode else im.copy()
        if images and image.size != images[0].size:
            image = image.resize(images[0].size, Image.BILINEAR if mode == "RGB" else Image.NEAREST)
        images.append(image)
    return np.stack([np.asarray(im) for im in images])



class WindowList(Dataset):
    """A list's windows, cut to `size` pixels. A window whose images cannot be read is left out of
    training and scoring (its targets all unseen) and named in `skipped`; video lists replace a bad
    video by another instead."""

    def __init__(self, windows: list, *, num_frames: int, size: int):
        self.windows, self.num_frames, self.size = windows, num_frames, size

    def __len__(self) -> int:
        return len(self.windows)

    def unreadable(self, path: str, error: OSError, unseen: dict[str, torch.Tensor]) -> dict:
        """The item of a window that cannot be read: a blank clip, `unseen` targets, the skip."""
        t, s = self.num_frames, self.size
        return {"video": torch.zeros(3, t, s, s), **unseen, "skipped": encode_skips([("unreadable", path, str(error))])}
