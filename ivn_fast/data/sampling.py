"""Which frames of a video (or of its trimmed window) make a clip of T frames.

Sparse (TSN / UMT): the n frames are cut into T equal segments, segment i covering
[i*n/T, (i+1)*n/T), and one frame is taken from each at relative position u in [0, 1):
index = floor((i + u_i) * n / T). Training draws u_i uniformly per segment; test view v of V
uses u = (v + 1) / (V + 1) in every segment (V = 1: the segment centres).

Dense: T frames `stride` apart, a window of L = (T - 1) * stride + 1 frames. Training starts it
anywhere in the video; test view v of V starts at round(v * (n - L) / (V - 1)) (V = 1: centred).

Short videos are padded by repeating frames, by one rule per mode. Sparse: when n < T the
segments are shorter than a frame, so each frame is repeated about T/n times in order (n = 3,
T = 8 gives 0 0 0 1 1 2 2 2 at test time). Dense: the window starts at frame 0 and positions past
the last frame repeat the last frame (n = 5, T = 4, stride 2 gives 0 2 4 4).
"""

from __future__ import annotations

import numpy as np

MODES = ("sparse", "dense")


def time_window(start: float, end: float, fps: float, num_frames: int) -> tuple[int, int]:
    """(first frame, frame count) of the window [start, end) seconds; negative bounds: the ends."""
    first = min(int(start * fps), num_frames) if start > 0 else 0
    last = min(int(end * fps), num_frames) if end >= 0 else num_frames
    return first, max(0, last - first)


def sparse_indices(n: int, num_frames: int, u: np.ndarray) -> np.ndarray:
    """Frame i at relative position u[i] of segment i."""
    segment = np.arange(num_frames, dtype=np.float64)
    return np.minimum(np.floor((segment + u) * n / num_frames).astype(np.int64), n - 1)


def dense_indices(n: int, num_frames: int, stride: int, start: int) -> np.ndarray:
    """num_frames frames `stride` apart from `start`, clamped to the last frame."""
    return np.minimum(start + stride * np.arange(num_frames, dtype=np.int64), n - 1)


def clip_indices(n: int, num_frames: int, *, mode: str = "sparse", stride: int = 1,
                 rng: np.random.Generator | None = None, view: int = 0, views: int = 1) -> np.ndarray:
    """Indices in [0, n) of the frames of one clip: random when rng is given (training), else
    test view `view` of `views`."""
    if n < 1:
        raise ValueError(f"cannot sample a clip from {n} frames")
    if not 0 <= view < views:
        raise ValueError(f"view {view} outside [0, {views})")
    if mode == "sparse":
        u = rng.random(num_frames) if rng is not None else np.full(num_frames, (view + 1) / (views + 1))
        return sparse_indices(n, num_frames, u)
    if mode == "dense":
        span = n - ((num_frames - 1) * stride + 1)
        if span <= 0:
            start = 0
        elif rng is not None:
            start = int(rng.integers(span + 1))
        else:
            start = round(view * span / (views - 1)) if views > 1 else span // 2
        return dense_indices(n, num_frames, stride, start)
    raise ValueError(f"unknown sampling mode {mode!r} (choose from {', '.join(MODES)})")
