"""The PyAV reader on real files: every codec, seeking, trims, odd sizes, rotation, variable rate."""

import av
import numpy as np
import pytest

import ivn_fast.data.pyav as pyav
from ivn_fast.data.health import BadVideo
from ivn_fast.data.pyav import PyAVVideo
from video_helpers import CODECS, frame_number, paint, write_audio_only, write_size_change, write_video


def numbers_of(path, wanted):
    with PyAVVideo(str(path)) as video:
        return [frame_number(f) for f in video.read(np.asarray(wanted))]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_each_codec_gives_the_wanted_frames(tmp_path, codec):
    path = write_video(tmp_path / "v", codec, frames=20)
    with PyAVVideo(str(path)) as video:
        assert (video.num_frames, video.fps, video.height, video.width) == (20, 25.0, 48, 64)
        frames = video.read(np.array([19, 0, 7, 7, 12]))
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert [frame_number(f) for f in frames] == [19, 0, 7, 7, 12]


@pytest.mark.parametrize("b_frames", [False, True])
def test_seeking_and_group_skipping_match_a_full_decode(tmp_path, monkeypatch, b_frames):
    # with B-frames (x264's medium preset, B-pyramid) frames nobody refers to are skipped
    options = {"preset": "medium", "bf": "3"} if b_frames else None
    path = write_video(tmp_path / "long", "h264", frames=90, gop=12 if b_frames else 6, options=options)
    with av.open(str(path)) as c:
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert (c.streams.video[0].codec_context.has_b_frames) == b_frames
    wanted = np.array([3, 40, 41, 88, 60, 5])
    monkeypatch.setattr(pyav, "SEEK_GAP_S", 0.3)  # 90 frames at 25 fps: several jumps
    with PyAVVideo(str(path)) as video:
        seeking = video.read(wanted)
        again = video.read(wanted[::-1])  # a second read of the same file rewinds
    monkeypatch.setattr(pyav, "SEEK_GAP_S", 1e9)
    with PyAVVideo(str(path)) as video:
        streaming = video.read(wanted)
    for got in (seeking, streaming, again[::-1]):
        assert all(np.array_equal(g, full[k]) for g, k in zip(got, wanted))


def test_trimmed_window(tmp_path):
    path = write_video(tmp_path / "t", "vp9", frames=30)  # 1.2 s at 25 fps
    with PyAVVideo(str(path)) as video:
        assert video.window(-1, -1) == (0, 30)
        assert video.window(0.4, 0.8) == (10, 10)
        assert video.window(1.0, 5.0) == (25, 5)


@pytest.mark.parametrize("codec, pix_fmt", [("h264", "yuv444p"), ("mpeg4", None), ("vp9", None), ("mjpeg", None)])
def test_odd_frame_sizes(tmp_path, codec, pix_fmt):
    path = write_video(tmp_path / "odd", codec, frames=4, width=227, height=131, pix_fmt=pix_fmt)
    with PyAVVideo(str(path)) as video:
        frames = video.read(np.arange(4))
    assert frames.shape == (4, 131, 227, 3) and [frame_number(f) for f in frames] == [0, 1, 2, 3]


def test_a_size_change_midstream_keeps_the_first_frames_size(tmp_path):
    path = write_size_change(tmp_path / "resize", [(64, 48), (96, 80)], frames_each=8)
    with PyAVVideo(str(path)) as video:
        for wanted, size in (([2, 12], (48, 64)), ([12, 2], (80, 96))):
            frames = video.read(np.asarray(wanted))
            assert frames.shape == (2, *size, 3)
            # a rescaled frame's painted level moves by up to one frame's step
            assert all(abs(frame_number(f) - n) <= 1 for f, n in zip(frames, wanted))


@pytest.mark.parametrize("degrees, turns", [(90, 1), (-90, -1), (180, 2)])
def test_rotation_metadata_is_applied(tmp_path, degrees, turns):
    path = write_video(tmp_path / "r", "h264", frames=3, rotation=degrees)
    with av.open(str(path)) as c:
        stored = next(c.decode(video=0)).to_ndarray(format="rgb24")
    with PyAVVideo(str(path)) as video:
        shown = video.read(np.array([0]))[0]
    assert np.array_equal(shown, np.rot90(stored, turns))  # the display matrix turns counter-clockwise


def test_variable_frame_rate_samples_by_time(tmp_path):
    pts = [0, 1, 2, 5, 6, 7, 12, 13, 14, 20]  # in 1/25 s
    path = write_video(tmp_path / "vfr", "h264", frames=10, pts=pts)
    with PyAVVideo(str(path)) as video:
        step = 25 / video.fps  # 1/25 s per frame at the average rate
        got = [frame_number(f) for f in video.read(np.arange(10))]
    # frame k is the one on screen at (k + 1/2) average frames
    expected = [max(i for i, t in enumerate(pts) if t <= (k + 0.5) * step) for k in range(10)]
    assert got == expected and got[0] <= 1 and got[-1] >= 8


def test_audio_track_is_ignored_and_audio_only_is_no_video(tmp_path):
    assert numbers_of(write_video(tmp_path / "a", "h264", frames=6, audio=True), [0, 5]) == [0, 5]
    with pytest.raises(BadVideo) as e:
        PyAVVideo(str(write_audio_only(tmp_path / "sound")))
    assert e.value.reason == "no_video"


def test_raw_elementary_stream_reads_from_its_start_in_decode_order(tmp_path):
    """A .h264 stream has no container, timestamps or index: frame k is the k-th it decodes to."""
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "8", "crf": "1"}  # B-frames too: decode order is not display order
        for i in range(30):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(paint(i, 48, 64), format="rgb24")))
        out.mux(stream.encode())
    with PyAVVideo(str(path)) as video:
        assert video.num_frames == 30 and not video.timed
        assert [frame_number(f) for f in video.read(np.array([13, 0, 29, 5, 13]))] == [13, 0, 29, 5, 13]
        assert [frame_number(f) for f in video.read(np.array([2]))] == [2]  # read again: from the start
        video.check_reaches(29)
        with pytest.raises(BadVideo, match="frame 30 wanted"):
            video.check_reaches(30)
        with pytest.raises(BadVideo, match="frame 31 wanted, the stream ends at frame 29"):
            video.read(np.array([31]))
