"""Folders of frame images (rawframes lists): natural frame order, the list line, whole clips
through the dataset, and bad folders as counted skips with their reasons."""

import numpy as np
import pytest
from PIL import Image

from ivn_fast.data.augment import _SCALE, _SHIFT
from ivn_fast.data.check import check_list
from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.frames import FrameFolder, open_video
from ivn_fast.data.health import BadVideo
from ivn_fast.data.lists import VideoEntry, VideoList, read_list
from video_helpers import frame_number, paint, write_video


def frame_folder(path, frames=12, name="img_{}.png", size=(48, 64)):
    """Frames painted with their number, named without zero padding (natural order matters)."""
    path.mkdir()
    for i in range(frames):
        Image.fromarray(paint(i, *size)).save(path / name.format(i + 1))
    (path / "notes.txt").write_text("not a frame")
    return path


def test_frames_come_in_natural_order_and_any_order_of_request(tmp_path):
    folder = FrameFolder(str(frame_folder(tmp_path / "clip")))
    assert folder.num_frames == 12 and (folder.height, folder.width) == (48, 64)
    frames = folder.read(np.array([11, 0, 9, 9, 1]))
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert [frame_number(f) for f in frames] == [11, 0, 9, 9, 1]  # img_10 after img_9, not after img_1
    assert folder.window(0.1, 0.3) == (3, 6)  # seconds at 30 frames per second
    with pytest.raises(BadVideo, match="frame 12 wanted, the folder holds 12"):
        folder.read(np.array([12]))


def test_rawframes_lines_and_clips_through_the_dataset(tmp_path):
    frame_folder(tmp_path / "a", frames=16)
    write_video(tmp_path / "b", "h264", frames=16)
    listing = tmp_path / "list.txt"
    listing.write_text("a 16 3\nb.mp4 5\n")
    entries = read_list(listing, str(tmp_path))
    assert [(e.path, e.label) for e in entries] == [(str(tmp_path / "a"), 3), (str(tmp_path / "b.mp4"), 5)]
    clips = VideoClips(VideoList(entries), num_frames=4, size=32, train=False)
    sample = clips[0]
    assert sample["video"].shape == (3, 4, 32, 32) and sample["label"] == 3 and sample["skipped"] == "[]"
    red = (sample["video"][0] - _SHIFT[0]) / _SCALE[0]  # back to 0-255 from ImageNet normalisation
    # painted red 10 + 6 i: the segment centres 2, 6, 10, 14
    assert [round((float(r.mean()) - 10) / 6) for r in red] == [2, 6, 10, 14]
    assert clips[1]["video"].shape == (3, 4, 32, 32)
    assert open_video(str(tmp_path / "a")).codec == "frames"


def test_bad_folders_are_skipped_with_their_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    broken = frame_folder(tmp_path / "broken", frames=4)
    (broken / "img_3.png").write_bytes(b"\x89PNG not really")
    cut = frame_folder(tmp_path / "cut", frames=4)
    (cut / "img_2.png").write_bytes((cut / "img_2.png").read_bytes()[:60])
    resized = frame_folder(tmp_path / "resized", frames=4)
    Image.fromarray(paint(2, 24, 32)).save(resized / "img_3.png")
    with pytest.raises(BadVideo, match="empty"):
        FrameFolder(str(tmp_path / "empty"))
    with pytest.raises(BadVideo, match="missing"):
        FrameFolder(str(tmp_path / "nowhere"))
    with pytest.raises(BadVideo, match="corrupt: img_3.png"):
        FrameFolder(str(broken)).read(np.arange(4))
    with pytest.raises(BadVideo, match="corrupt: img_2.png"):
        FrameFolder(str(cut)).read(np.arange(4))
    frames = FrameFolder(str(resized)).read(np.arange(4))  # a smaller frame takes the first frame's size
    assert frames.shape == (4, 48, 64, 3) and frame_number(frames[2]) == 2
    entries = [VideoEntry(str(tmp_path / n), 0) for n in ("empty", "broken", "cut", "resized")]
    report = check_list(VideoClips(VideoList(entries), num_frames=4, size=32, train=False), progress=False)
    assert report["bad"] == 3 and report["reasons"] == {"corrupt": 2, "empty": 1}
