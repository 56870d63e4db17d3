"""Bad input never stops a run: each kind gives its reason, is replaced reproducibly, and counted."""

import json
import logging

import numpy as np
import pytest
import torch

from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.health import REASONS, BadVideo, SkipCounter, TooManyBadSamples, encode_skips
from ivn_fast.data.lists import VideoEntry, VideoList
from ivn_fast.data.loader import build_loader
from ivn_fast.data.pyav import PyAVVideo
from video_helpers import (damaged_header_copy, frame_number, truncated_copy, unknown_codec_copy, write_audio_only,
                           write_video)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Good clips of every codec, then one file of each bad kind, by reason."""
    d = tmp_path_factory.mktemp("bad")
    good = [write_video(d / f"good{i}", codec, frames=16)
            for i, codec in enumerate(["h264", "vp9", "mjpeg", "mpeg4", "h264", "vp9"])]
    long_mp4 = write_video(d / "long", "h264", frames=40, faststart=True)
    h264_damaged = bytearray(write_video(d / "forcorrupt", "h264", frames=12).read_bytes())
    third = len(h264_damaged) // 3
    h264_damaged[third:2 * third] = np.random.default_rng(0).integers(0, 256, third, dtype=np.uint8).tobytes()
    (d / "corrupt.mp4").write_bytes(bytes(h264_damaged))
    (d / "empty.mp4").write_bytes(b"")
    bad = {
        "missing": d / "missing.mp4",
        "empty": d / "empty.mp4",
        "unreadable": damaged_header_copy(good[0], d / "header"),
        "no_video": write_audio_only(d / "sound"),
        "unsupported_codec": unknown_codec_copy(good[2], d / "unknown"),
        "too_short": write_video(d / "short", "h264", frames=2),
        "truncated": truncated_copy(long_mp4, d / "cut", 0.6),
        "corrupt": d / "corrupt.mp4",
    }
    return good, bad


def clips(paths, **kw):
    entries = [VideoEntry(str(p), i) for i, p in enumerate(paths)]
    return VideoClips(VideoList(entries), num_frames=kw.pop("num_frames", 8), size=kw.pop("size", 32),
                      min_frames=kw.pop("min_frames", 4), **kw)


def test_every_reason_has_a_fixture_and_is_reported(videos):
    _, bad = videos
    assert set(bad) == set(REASONS)
    ds = clips(list(bad.values()))
    for i, reason in enumerate(bad):
        with pytest.raises(BadVideo) as e:
            ds.clip(i)
        assert e.value.reason == reason, (reason, e.value)


def test_short_videos_above_min_frames_are_padded_not_skipped(videos):
    _, bad = videos
    clip = clips([bad["too_short"]], min_frames=2).clip(0)
    assert clip.shape == (3, 8, 32, 32)


def test_bad_files_are_replaced_reproducibly_and_recorded(videos):
    good, bad = videos
    ds = clips(list(bad.values()) + good * 2, seed=3)
    for key in range(2 * len(ds)):  # two epochs
        item = ds[key]
        skips = json.loads(item["skipped"])
        assert item["index"] >= len(bad) and item["video"].shape == (3, 8, 32, 32)
        assert all(s[0] in REASONS for s in skips)
        if key % len(ds) < len(bad):  # a bad entry: its own reason comes first
            assert skips[0][0] == list(bad)[key % len(ds)]
        else:
            assert skips == [] and item["index"] == key % len(ds)
        again = ds[key]
        assert again["index"] == item["index"] and torch.equal(again["video"], item["video"])
        assert again["skipped"] == item["skipped"]


def test_a_list_of_only_bad_files_fails_with_a_clear_message(videos):
    _, bad = videos
    with pytest.raises(RuntimeError, match="could not be read.*check LIST"):
        clips([bad["missing"], bad["empty"]])[0]


def test_epochs_draw_new_offsets_and_crops(videos):
    good, _ = videos
    ds = clips(good[:1])
    a, b = ds[0]["video"], ds[1]["video"]  # same video, epochs 0 and 1
    assert a.shape == b.shape and not torch.equal(a, b)
    test_view = clips(good[:1], train=False, segments=2, crops=3)
    assert len(test_view) == 6
    views = [test_view[i]["video"] for i in range(6)]
    assert all(not torch.equal(views[0], v) for v in views[1:])


def test_worker_count_does_not_change_the_batches(videos):
    good, bad = videos
    ds = clips(good + [bad["missing"], bad["corrupt"]], seed=1)
    runs = []
    for workers in (0, 2):
        loader = build_loader(ds, 4, rank=0, world=1, seed=5, start_step=1, num_workers=workers, pin_memory=False,
                              epoch_keys=True)
        batches = iter(loader)
        runs.append([next(batches) for _ in range(3)])
    for x, y in zip(*runs):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["index"], y["index"])
        assert x["skipped"] == y["skipped"] and x["video"].shape == (4, 3, 8, 32, 32)


def test_sampled_frames_follow_the_plan(videos):
    good, _ = videos
    ds = clips(good[:1], size=48)
    plan = ds.plan(0)
    ordered = sorted(plan.frames)
    assert list(plan.frames) == ordered and 0 <= ordered[0] and ordered[-1] < 16
    with PyAVVideo(plan.path) as video:
        assert [frame_number(f) for f in video.read(plan.frames)] == list(plan.frames)


def test_skip_counter_logs_once_and_stops_past_the_threshold(caplog):
    counter = SkipCounter(max_fraction=0.1, min_attempts=20)
    one_bad = [encode_skips([("missing", "/x.mp4", "")])] + [encode_skips([])] * 3
    with caplog.at_level(logging.WARNING, logger="ivn_fast"):
        counter.update({"skipped": one_bad})
        counter.update({"skipped": one_bad})
    assert counter.attempted == 10 and counter.bad == 2  # 8 samples + 2 skipped attempts
    assert sum("/x.mp4" in r.message for r in caplog.records) == 1
    assert counter.summary() == {"bad_samples": 2, "bad_missing": 2}
    counter.update({"skipped": [encode_skips([])] * 10})  # 20 attempts, 10% bad: at the limit, not past it
    with pytest.raises(TooManyBadSamples, match=r"data.max_bad_fraction=0.1.*missing 3"):
        counter.update({"skipped": one_bad})
    SkipCounter(0.01).update({"video": torch.zeros(1)})  # synthetic batches carry no skips


def test_skip_threshold_is_judged_on_the_whole_run():
    """Counts summed over processes decide (7 local attempts alone are below min_attempts)."""
    four_processes = lambda counts: [4 * c for c in counts]  # noqa: E731 (each sees the same share)
    counter = SkipCounter(max_fraction=0.1, min_attempts=20, run_total=four_processes)
    with pytest.raises(TooManyBadSamples, match=r"^4 of 28 sampled"):
        counter.update({"skipped": [encode_skips([("corrupt", "/y.mp4", "")])] + [encode_skips([])] * 5})
