"""DALI and PyAV give the same clips: same frames, pixels within codec tolerance (colour conversion
differs slightly). DALI's CPU backend decodes VP9 here; on a GPU the same check covers H.264."""

import json

import pytest
import torch

from ivn_fast.data.build import pick_decoder
from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.lists import VideoEntry, VideoList
from ivn_fast.data.loader import StepBatchSampler
from ivn_fast.data.transforms import denormalize
from video_helpers import truncated_copy, write_video

dali = pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda130)")
from ivn_fast.data.dali import DaliClips  # noqa: E402

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="DALI's H.264 decoding needs a GPU")


def shown_frames(clip: torch.Tensor) -> list[int]:
    """Painted frame numbers of a [3, T, H, W] clip (its red level)."""
    red = denormalize(clip.float().cpu(), channel_dim=0)[0].mean(dim=(1, 2)) * 255
    return [round((float(r) - 10) / 6) for r in red]


def parity(tmp_path, codec: str, device: torch.device) -> None:
    sizes = [(64, 48), (48, 64), (90, 60), (64, 64)]
    paths = [write_video(tmp_path / f"v{i}", codec, frames=24, width=w, height=h) for i, (w, h) in enumerate(sizes)]
    ds = VideoClips(VideoList([VideoEntry(str(p), i) for i, p in enumerate(paths)]), num_frames=6, size=32, seed=7)
    sampler = StepBatchSampler(len(ds), 2, seed=0, epoch_keys=True)
    batches, keys = iter(DaliClips(ds, sampler, 2, device)), iter(sampler)
    for _ in range(4):
        batch, batch_keys = next(batches), next(keys)
        assert batch["video"].device.type == device.type and batch["video"].shape == (2, 3, 6, 32, 32)
        for clip, key in zip(batch["video"], batch_keys):
            reference = ds[key]["video"]
            assert shown_frames(clip) == shown_frames(reference) == list(ds.plan(key).frames)
            levels = (denormalize(clip.cpu(), 0) - denormalize(reference, 0)).abs() * 255
            assert float(levels.mean()) < 2.5 and float(levels.max()) < 24, (key, float(levels.mean()))


def test_vp9_parity_on_cpu(tmp_path):
    parity(tmp_path, "vp9", torch.device("cpu"))


@GPU
def test_h264_parity_on_gpu(tmp_path):
    parity(tmp_path, "h264", torch.device("cuda"))


def test_clips_dali_cannot_take_go_through_pyav_in_the_same_batch(tmp_path):
    vp9 = write_video(tmp_path / "a", "vp9", frames=16)
    h264 = write_video(tmp_path / "b", "h264", frames=16)
    cut = truncated_copy(write_video(tmp_path / "long", "vp9", frames=40), tmp_path / "cut", 0.5)
    entries = [VideoEntry(str(p), i) for i, p in enumerate([vp9, h264, cut, vp9.with_name("gone.webm")])]
    ds = VideoClips(VideoList(entries), num_frames=4, size=24, seed=2)
    sampler = StepBatchSampler(len(ds), 4, seed=1, epoch_keys=True)
    batches, keys = iter(DaliClips(ds, sampler, 4, torch.device("cpu"))), iter(sampler)
    for _ in range(3):
        batch, batch_keys = next(batches), next(keys)
        for clip, index, skipped, key in zip(batch["video"], batch["index"], batch["skipped"], batch_keys):
            reference = ds[key]
            assert int(index) == reference["index"]
            assert [s[:2] for s in json.loads(skipped)] == [s[:2] for s in json.loads(reference["skipped"])]
            assert shown_frames(clip) == shown_frames(reference["video"])
            assert float((denormalize(clip, 0) - denormalize(reference["video"], 0)).abs().mean()) * 255 < 2.5


def test_auto_picks_pyav_without_a_gpu_and_says_why():
    assert pick_decoder("auto", torch.device("cpu")) == ("pyav", "no GPU")
    assert pick_decoder("dali", torch.device("cpu"))[0] == "dali"
    if torch.cuda.is_available():
        assert pick_decoder("auto", torch.device("cuda"))[0] == "dali"


def test_a_batch_dali_fails_on_is_decoded_by_pyav(tmp_path, monkeypatch):
    paths = [write_video(tmp_path / f"v{i}", "vp9", frames=12) for i in range(2)]
    ds = VideoClips(VideoList([VideoEntry(str(p), i) for i, p in enumerate(paths)]), num_frames=4, size=24)
    sampler = StepBatchSampler(len(ds), 2, seed=0, epoch_keys=True)
    loader = DaliClips(ds, sampler, 2, torch.device("cpu"))
    real_decode, calls = DaliClips._decode, []

    def fail_once(self, planned):
        calls.append(len(planned))
        if len(calls) == 1:
            raise RuntimeError("Critical error in pipeline: damaged stream")
        return real_decode(self, planned)

    monkeypatch.setattr(DaliClips, "_decode", fail_once)
    batches, keys = iter(loader), iter(sampler)
    for _ in range(2):  # the first through PyAV, the second through a rebuilt pipeline
        batch = next(batches)
        reference = torch.stack([ds[k]["video"] for k in next(keys)])
        assert float((denormalize(batch["video"], 1) - denormalize(reference, 1)).abs().mean()) * 255 < 2.5
    assert calls == [2, 2]


def test_frames_past_the_end_repeat_the_last_one_as_in_pyav(tmp_path, monkeypatch):
    """A stated frame count can run a frame or two long; PyAV then repeats the last frame, and so
    must DALI (its default pads with black)."""
    import numpy as np

    path = write_video(tmp_path / "short", "vp9", frames=10)
    ds = VideoClips(VideoList([VideoEntry(str(path), 0)] * 2), num_frames=4, size=24, seed=0)
    real_plan = ds.plan
    monkeypatch.setattr(ds, "plan", lambda key: real_plan(key)._replace(frames=np.array([0, 9, 10, 11])))
    sampler = StepBatchSampler(len(ds), 2, seed=0, epoch_keys=True)
    batch = next(iter(DaliClips(ds, sampler, 2, torch.device("cpu"))))
    assert [shown_frames(clip) for clip in batch["video"]] == [[0, 9, 9, 9]] * 2
