"""The list checker's report, and training on a folder of real files with bad entries mixed in."""

import json

import pytest

from ivn_fast.config import ConfigError, build_config, validate
from ivn_fast.data.check import check_list, format_report, main as check_main
from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.lists import load_lists
from ivn_fast.pretrain import main as pretrain_main
from video_helpers import damaged_header_copy, truncated_copy, write_video


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of 8 good clips and a list naming them plus a damaged, a cut-off and a missing file."""
    d = tmp_path_factory.mktemp("videos")
    codecs = ["h264", "vp9", "mjpeg", "mpeg4"]
    good = [write_video(d / f"clip{i}", codecs[i % 4], frames=12, width=64 + 8 * (i % 3), height=48)
            for i in range(8)]
    long = write_video(d / "long", "h264", frames=30, faststart=True)
    bad = [damaged_header_copy(good[0], d / "damaged"), truncated_copy(long, d / "cut", 0.5), d / "gone.mp4"]
    lines = [f"{p.name} {i % 3}" for i, p in enumerate(good + bad)]
    (d / "train.txt").write_text("path label\n" + "\n".join(lines) + "\n")
    return d


def test_checker_reports_totals_reasons_and_bad_entries(folder, tmp_path, capsys):
    clips = VideoClips(load_lists(str(folder / "train.txt"), root=str(folder)), num_frames=8, size=32)
    report = check_list(clips, workers=0, progress=False)
    assert (report["videos"], report["ok"], report["bad"]) == (11, 8, 3)
    assert report["reasons"] == {"unreadable": 1, "truncated": 1, "missing": 1}
    assert sorted(b["path"].rsplit("/", 1)[1] for b in report["bad_entries"]) == ["cut.mp4", "damaged.mp4",
                                                                                   "gone.mp4"]
    assert "8 ok, 3 bad" in format_report(report)
    out = tmp_path / "report.json"
    code = check_main([str(folder / "train.txt"), "--root", str(folder), "--workers", "2", "--json", str(out),
                       "--num-frames", "8", "--size", "32", "--no-progress"])
    assert code == 1
    assert json.loads(out.read_text())["reasons"] == report["reasons"]
    assert "missing" in capsys.readouterr().out
    assert check_main([str(folder / "nothere.txt")]) == 2


def test_a_train_list_selects_list_data_and_is_checked_before_work(folder, tmp_path):
    cfg = build_config("tiny", {"data": {"train_list": str(folder / "train.txt")}})
    assert cfg.data.source == "list"
    validate(cfg)
    (tmp_path / "labels.txt").write_text("a.mp4 0\nb.mp4 9\n")
    cfg = build_config("tiny", {"data": {"train_list": str(tmp_path / "labels.txt"), "num_classes": 5}})
    with pytest.raises(ConfigError, match=r"labels\.txt:2: label 9"):
        validate(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        validate(build_config("tiny", {"data": {"train_list": str(tmp_path / "none.txt")}}))


def test_training_on_real_files_skips_and_counts_bad_ones(folder, tmp_path):
    out = tmp_path / "run"
    args = ["--data.train-list", str(folder / "train.txt"), "--data.root", str(folder), "--data.num_workers", "0",
            "--train.batch_size", "4", "--max-steps", "3", "--train.log_every", "1", "--train.progress", "false",
            "--train.tensorboard", "false", "--model.encoder.depth", "2", "--model.teacher.num_layers", "2",
            "--model.decoder.sampling_steps", "2", "--data.num_frames", "4", "--data.size", "56",
            "--output_dir", str(out)]
    assert pretrain_main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    last = records[-1]
    assert last["bad_samples"] > 0
    assert last["bad_samples"] == sum(v for k, v in last.items() if k.startswith("bad_") and k != "bad_samples")
    assert set(k for k in last if k.startswith("bad_")) - {"bad_samples"} <= {"bad_unreadable", "bad_truncated",
                                                                               "bad_missing"}


def test_lists_that_cannot_feed_a_run_stop_it_with_one_line(folder, tmp_path, capsys):
    base = ["--data.num_workers", "1", "--train.batch_size", "4", "--max-steps", "1", "--train.progress", "false",
            "--train.tensorboard", "false", "--model.encoder.depth", "2", "--model.teacher.num_layers", "2",
            "--data.num_frames", "4", "--data.size", "56"]
    (tmp_path / "two.txt").write_text(f"{folder / 'clip0.mp4'} 0\n{folder / 'clip1.webm'} 1\n")
    short = ["--data.train-list", str(tmp_path / "two.txt"), "--output_dir", str(tmp_path / "a")]
    assert pretrain_main([*base, *short]) == 2
    assert "2 clips, fewer than one global batch (train.batch_size 4)" in capsys.readouterr().err
    # every path missing under a wrong root: the worker's error arrives as one line, not its traceback
    assert pretrain_main([*base, "--data.train-list", str(folder / "train.txt"), "--data.root", str(tmp_path / "no"),
                          "--output_dir", str(tmp_path / "b")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "videos in a row could not be read (missing" in err
    with pytest.raises(SystemExit) as usage:
        check_main([str(tmp_path / "two.txt"), "--num-frames", "0"])
    assert usage.value.code == 2 and "--num-frames must be >= 1" in capsys.readouterr().err


def test_an_error_from_a_data_worker_is_printed_as_its_message(capsys):
    from torch._utils import ExceptionWrapper

    from ivn_fast.data.health import TooManyBadSamples
    from ivn_fast.pretrain import _fail

    try:
        raise TooManyBadSamples("12 videos in a row could not be read")
    except TooManyBadSamples:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(TooManyBadSamples) as raised:
        wrapped.reraise()
    assert "Original Traceback" in str(raised.value)
    assert _fail(raised.value, 3) == 3
    assert capsys.readouterr().err == "ivn_fast.pretrain: error: 12 videos in a row could not be read\n"
