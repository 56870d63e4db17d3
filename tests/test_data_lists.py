"""Video lists: the field's formats, root prefix, directory scans, weighted mixing, de-duplication."""

import pytest

from ivn_fast.data.lists import NO_LABEL, ListError, VideoEntry, load_lists, parse_spec, read_list


def write(path, text):
    path.write_text(text)
    return path


def test_path_label_space_comma_header_and_bare_paths(tmp_path):
    spaced = write(tmp_path / "k400_train.txt", "a/x.mp4 3\n\n# a comment\nb/y y.mp4 12\n")
    assert read_list(spaced) == [VideoEntry("a/x.mp4", 3, "k400_train"), VideoEntry("b/y y.mp4", 12, "k400_train")]
    commas = write(tmp_path / "c.csv", "path,label\nv1.webm,0\nv,2.mp4,5\n")
    assert [(e.path, e.label) for e in read_list(commas)] == [("v1.webm", 0), ("v,2.mp4", 5)]
    bare = write(tmp_path / "bare.txt", "one.mp4\ntwo.mp4\n")
    assert [e.label for e in read_list(bare)] == [NO_LABEL, NO_LABEL]


def test_multi_source_format_trims_and_whole_video_marker(tmp_path):
    lst = write(tmp_path / "mix.txt", "ssv2 s/1.webm 4.0 -1 -1 7\nk710 k/2.mp4 10.0 2.5 6.0 3\n")
    a, b = read_list(lst)
    assert a == VideoEntry("s/1.webm", 7, "ssv2", -1.0, -1.0)
    assert b == VideoEntry("k/2.mp4", 3, "k710", 2.5, 6.0)


def test_root_prefix_applies_to_relative_paths_only(tmp_path):
    lst = write(tmp_path / "l.txt", "rel/a.mp4 0\n/abs/b.mp4 1\n")
    assert [e.path for e in read_list(lst, root="/data")] == ["/data/rel/a.mp4", "/abs/b.mp4"]


def test_labels_outside_the_class_range_name_the_line(tmp_path):
    lst = write(tmp_path / "l.txt", "header here\na.mp4 0\nb.mp4 400\n")
    assert len(read_list(lst)) == 2  # no range given: any label >= 0
    with pytest.raises(ListError, match=r"l\.txt:3: label 400 is outside the class range \[0, 400\)"):
        read_list(lst, num_classes=400)
    with pytest.raises(ListError, match=r"neg\.txt:1: label -3"):
        read_list(write(tmp_path / "neg.txt", "a.mp4 -3\n"))
    with pytest.raises(ListError, match=r"bad\.txt:2: cannot read"):
        read_list(write(tmp_path / "bad.txt", "a.mp4 1\nb.mp4 one two\n"))


def test_directory_scan_finds_videos_recursively(tmp_path):
    for name in ("b/2.webm", "a/1.mp4", "a/notes.txt", "3.AVI"):
        (tmp_path / "vids" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "vids" / name).write_bytes(b"x")
    videos = load_lists(str(tmp_path / "vids"))
    assert [videos[i].path.split("vids/")[1] for i in range(len(videos))] == ["3.AVI", "a/1.mp4", "b/2.webm"]
    assert videos[0].source == "vids" and videos[0].label == NO_LABEL


def test_spec_weights_and_duplicates(tmp_path):
    a = write(tmp_path / "a.txt", "x.mp4 0\ny.mp4 1\nx.mp4 0\n")
    b = write(tmp_path / "b.txt", "y.mp4 1\n" + "".join(f"b{i}.mp4 2\n" for i in range(10)))
    assert parse_spec(f"{a},{b}:2.5") == [(str(a), 1.0), (str(b), 2.5)]
    videos = load_lists(f"{a},{b}:2.5", seed=1)
    paths = [videos[i].path for i in range(len(videos))]
    # a: x, y (repeat of x dropped); b: y dropped, its 10 clips twice plus a seeded half
    assert paths[:2] == ["x.mp4", "y.mp4"] and len(paths) == 2 + 25
    assert all(paths.count(f"b{i}.mp4") in (2, 3) for i in range(10))
    assert paths == [load_lists(f"{a},{b}:2.5", seed=1)[i].path for i in range(len(videos))]
    with pytest.raises(ListError, match="weight must be > 0"):
        parse_spec(f"{a}:0")
    with pytest.raises(ListError, match="not found"):
        load_lists(str(tmp_path / "nope.txt"))


def test_no_flip_sources_match_by_substring(tmp_path):
    lst = write(tmp_path / "m.txt", "SSv2_train a.webm 1 -1 -1 0\nk400 b.mp4 1 -1 -1 0\n")
    videos = load_lists(str(lst), no_flip_sources=("ssv2", "sth"))
    assert [videos.flips(i) for i in range(2)] == [False, True]
