"""The clip cut of a PyAV worker, 16 frames of 320x240 to 224: the native YUV op, its PyTorch
reference, and what it replaces (swscale's rgb24 conversion, one context for all frames as
PyAVVideo.read does, then augment.cut). CPU, one thread, as in a DataLoader worker."""

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import VideoReformatter

from bench.harness import timed
from ivn_fast.data import native
from ivn_fast.data.augment import Crop, cut
from ivn_fast.data.pyav import _yuv420

FRAMES, HEIGHT, WIDTH, SIZE = 16, 240, 320, 224
CROP = Crop(0, 40, 240, 240, flip=True)  # the largest training crop of a 320x240 frame


@pytest.fixture(scope="module")
def frames() -> list[av.VideoFrame]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(FRAMES):
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        for plane in frame.planes:
            rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            rows[:, :plane.width] = rng.integers(16, 236, (plane.height, plane.width), dtype=np.uint8)
        out.append(frame)
    return out


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", ["native", "reference", "rgb24_then_cut"])
def test_cut(benchmark, frames, one_thread, variant):
    if variant == "native" and not native.available():
        pytest.skip("the native library cannot be built here (see the log)")
    to_rgb = VideoReformatter()
    runs = {"native": lambda: native.cut_yuv420(_yuv420(frames), CROP, SIZE),
            "reference": lambda: native.cut_yuv420_reference(_yuv420(frames), CROP, SIZE),
            "rgb24_then_cut": lambda: cut(torch.from_numpy(np.stack(
                [to_rgb.reformat(f, format="rgb24", threads=1).to_ndarray() for f in frames])), CROP, SIZE)}
    seconds = timed(benchmark, runs[variant])
    benchmark.extra_info["clips_per_s"] = 1 / seconds
