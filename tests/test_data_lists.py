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
    for weight in ("0", "nan", "inf", "1e400"):
        with pytest.raises(ListError, match="weight must be a finite number > 0"):
            parse_spec(f"{a}:{weight}")
    with pytest.raises(ListError, match="not found"):
        load_lists(str(tmp_path / "nope.txt"))


def test_no_flip_sources_match_by_substring(tmp_path):
    lst = write(tmp_path / "m.txt", "SSv2_train a.webm 1 -1 -1 0\nk400 b.mp4 1 -1 -1 0\n")
    videos = load_lists(str(lst), no_flip_sources=("ssv2", "sth"))
    assert [videos.flips(i) for i in range(2)] == [False, True]


def test_bad_windows_encodings_and_labels_name_the_file(tmp_path, caplog):
    for text, message in (("s a.mp4 3.0 0 inf 1\n", r"inf\.txt:1: total_time, start and end must be finite"),
                          ("s a.mp4 3.0 nan 2 1\n", "must be finite"),
                          ("s a.mp4 9.0 5 2 1\n", r"ends \(2 s\) before it starts \(5 s\)"),
                          ("a.mp4 99999999999999999999\n", r"label 99999999999999999999 is outside .*2147483647")):
        with pytest.raises(ListError, match=message):
            read_list(write(tmp_path / "inf.txt", text))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"ok.mp4 1\n/x/caf\xe9.mp4 1\n")
    with pytest.raises(ListError, match=r"latin1\.txt: not UTF-8 text"):
        read_list(latin)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeff/v/a.mp4 0\n".encode("utf-8"))
    assert read_list(bom)[0].path == "/v/a.mp4"
    with caplog.at_level("WARNING", logger="ivn_fast"):
        assert [e.path for e in read_list(write(tmp_path / "h.txt", "/v/a.mp4 3.0\n/v/b.mp4 1\n"))] == ["/v/b.mp4"]
    assert "h.txt:1: '/v/a.mp4 3.0' is not an entry; read as a header line" in caplog.text


def test_a_weight_that_takes_nothing_is_logged(tmp_path, caplog):
    one, three = write(tmp_path / "one.txt", "a.mp4 0\n"), write(tmp_path / "three.txt", "b.mp4 0\nc.mp4 0\nd.mp4 0\n")
    with caplog.at_level("INFO", logger="ivn_fast"):
        assert len(load_lists(f"{one},{three}:0.1")) == 1
    assert "three.txt: 3 clips, weight 0.1: none taken" in caplog.text
    assert "one.txt: 1 clips, weight 1: 1 per epoch" in caplog.text
