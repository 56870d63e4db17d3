"""The tracking probe: box maths, the readout learns motion from tokens, box lists and the CLI."""

import json
import re
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ivn_fast.data.synthetic import SyntheticVideos
from ivn_fast.data.transforms import denormalize
from ivn_fast.models.heads import AttentionPool
from ivn_fast.models.probe import TrackingProbe
from ivn_fast.features import Kept
from ivn_fast.probe import main as probe_main
from ivn_fast.tracking import MIN_AREA, BoxList, synthetic_tracks, box_iou, mean_iou, track_loss, train_tracker


def test_iou_and_giou_of_known_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    iou, giou = box_iou(a, b)
    # overlap 1 of union 7, hull 9; identical; disjoint with a gap of 1 (hull 3, union 2); corners swapped
    torch.testing.assert_close(iou, torch.tensor([1 / 7, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(giou, torch.tensor([1 / 7 - 2 / 9, 1.0, -1 / 3, 1.0]))


def test_loss_counts_only_seen_boxes_and_has_gradients():
    target = torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]]])
    pred = target.clone()
    pred[0, 1] = torch.tensor([0.9, 0.9, 1.0, 1.0])  # wrong, but not seen
    seen = torch.tensor([[True, False]])
    assert track_loss(pred, target, seen).item() == pytest.approx(0.0, abs=1e-6)
    assert mean_iou(pred, target, seen) == pytest.approx(1.0)
    pred.requires_grad_(True)
    loss = track_loss(pred, target, torch.ones_like(seen))
    loss.backward()
    assert loss.item() > 0.5 and pred.grad[0, 1].abs().sum() > 0.1 and pred.grad[0, 0].abs().sum() < 1e-5


def test_untrained_readout_keeps_the_first_box():
    probe = TrackingProbe(16, 5, 2)
    first = torch.rand(3, 2, 4)
    out = probe(torch.randn(3, 9, 16), first)
    assert out.shape == (3, 2, 4, 4)
    torch.testing.assert_close(out, first[:, :, None].expand(-1, -1, 4, -1))
    with pytest.raises(ValueError, match="queries are passed exactly when"):
        AttentionPool(16, 2, query="learned")(torch.randn(1, 3, 16), torch.randn(1, 1, 16))


def _moving_boxes(n: int, seed: int, frames: int = 4, dim: int = 32):
    """Windows whose tokens hold each frame's box in that frame's own channels (plus noise): the
    motion is readable from the tokens, and not from the first box alone."""
    g = torch.Generator().manual_seed(seed)
    start = 0.1 + 0.5 * torch.rand(n, 1, 2, generator=g)
    velocity = 0.3 * (torch.rand(n, 1, 2, generator=g) - 0.5)
    corner = start + velocity * torch.arange(frames).float().view(1, frames, 1)
    boxes = torch.cat([corner, corner + 0.15 + 0.1 * torch.rand(n, 1, 2, generator=g)], -1)
    tokens = 0.1 * torch.randn(n, frames + 3, dim, generator=g)
    for f in range(frames):
        tokens[:, f, 4 * f:4 * f + 4] += 4 * boxes[:, f]
    return Kept(tokens[:, None], boxes[:, None], torch.ones(n, 1, frames, dtype=torch.bool))


def test_readout_learns_motion_from_the_tokens():
    result = train_tracker(_moving_boxes(512, 0), _moving_boxes(128, 1), num_frames=4, num_heads=2, epochs=40,
                           batch=32, lr=3e-3, weight_decay=0.0, seed=0, device=torch.device("cpu"))
    assert result["static_miou"] < 0.2
    assert result["miou"] > result["static_miou"] + 0.25, result["curve"]
    assert result["train_loss"][-1] < result["train_loss"][0] / 2 and len(result["curve"]) == 40


def test_synthetic_boxes_enclose_the_shape():
    clip = SyntheticVideos(6, 5, 64, seed=3).render(4)[1]
    boxes, pixels = clip.boxes, clip.pixels
    assert boxes.shape == (5, 4) and (boxes[:, 2:] > boxes[:, :2]).all()
    assert ((boxes >= 0) & (boxes <= 1)).all()
    # the box moves with the shape: its centre changes by the same step each frame (straight, uniform motion)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    steps = centre.diff(dim=0)
    assert (steps - steps.mean(0)).abs().max() < 3 / 64 and steps.abs().sum() > 0
    # the box holds the shape: pixels in it stand out from the frame's mean colour
    x0, y0, x1, y1 = (boxes[0] * 64).round().long().tolist()
    inside = pixels[:, 0, y0:y1, x0:x1]
    assert inside.numel() > 0 and (inside - pixels[:, 0].mean((1, 2), keepdim=True)).abs().max() > 0.2
    tracks = synthetic_tracks(6, 5, 64, seed=3)[4]
    assert torch.equal(tracks["boxes"][0], boxes) and tracks["seen"].all()
    torch.testing.assert_close(denormalize(tracks["video"], channel_dim=0), pixels)


def _write_window(tmp_path, name: str, frames: int, size=(80, 60)) -> list[str]:
    paths = []
    for t in range(frames):
        image = np.full((size[1], size[0], 3), 40 * t, dtype=np.uint8)
        path = tmp_path / name / f"{t:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(f"{name}/{t:03d}.png")
    return paths


def test_box_list_follows_the_centre_crop(tmp_path):
    frames = _write_window(tmp_path, "a", 3)  # 80 x 60: the centre square is x 10..70
    lines = [{"frames": frames, "boxes": [[[10, 0, 40, 30], [20, 30, 50, 60], None],
                                          [[0, 0, 5, 5], [10, 10, 40, 40], [10, 10, 40, 40]]]},
             {"frames": frames, "boxes": [[[60, 20, 90, 50], [60, 20, 70, 50], [69.9, 0, 70, 60]]]}]
    path = tmp_path / "boxes.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = BoxList(str(path), num_frames=3, size=28, root=str(tmp_path))
    assert len(data) == 2 and data.max_objects == 2
    item = data[0]
    assert item["video"].shape == (3, 3, 28, 28)
    torch.testing.assert_close(item["boxes"][0, :2], torch.tensor([[0, 0, 0.5, 0.5], [1 / 6, 0.5, 4 / 6, 1]]))
    # object 1 is outside the crop in the first frame (nothing to track from); frame 2 of object 0 is null
    assert item["seen"].tolist() == [[True, True, False], [False, False, False]]
    second = data[1]
    torch.testing.assert_close(second["boxes"][0, 0], torch.tensor([5 / 6, 20 / 60, 1.0, 50 / 60]))
    # the last box is clipped to a sliver under MIN_AREA; the padded object is never seen
    assert second["seen"].tolist() == [[True, True, False], [False, False, False]]
    assert 0.1 / 60 < MIN_AREA


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    ('{"frames": ["a.png"], "boxes": [[[0, 0, 1, 1]]]}', "1 frames, the probe reads windows of 3"),
    ('{"frames": ["a", "b", "c"], "boxes": []}', "at least one object"),
    ('{"frames": ["a", "b", "c"], "boxes": [[[0, 0, 1, 1], null]]}', "one box (or null) per frame"),
    ('{"frames": ["a", "b", "c"], "boxes": [[[0, 0, 1, 1], null, [5, 0, 1, 1]]]}', "x1 > x0"),
])
def test_box_list_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"frames": ["a", "b", "c"], "boxes": [[null, null, null]]}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{re.escape(message)}"):
        BoxList(str(path), num_frames=3, size=28)


def test_cli_tracks_synthetic_shapes(tiny_checkpoint, tmp_path, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:track:24", "--val-list", "synthetic:track:8",
            "--epochs", "2", "--batch", "8", "--json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png")]
    assert probe_main(args) == 0
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["task"] == "track" and len(record["curve"]) == 2 and 0 <= record["miou"] <= 1
    assert 0 < record["static_miou"] < 1 and "mean IoU" in capsys.readouterr().out
    boxes = Image.open(tmp_path / "t-boxes.png").convert("RGB")
    colours = {c for _, c in boxes.getcolors(1 << 20)}
    assert (40, 200, 60) in colours and (230, 40, 40) in colours  # true and predicted boxes drawn
    assert probe_main(args[:4] + ["--val-list", "synthetic:shape:8"]) == 2
    assert "--train-list labels 'track' but --val-list labels 'shape'" in capsys.readouterr().err
    assert probe_main(args[:6] + ["--crops", "2"]) == 2
    assert "one view per window" in capsys.readouterr().err
    # streamed: the windows are encoded as they are read, and train the same readout
    assert probe_main(args[:-4] + ["--features", "stream", "--workers", "0", "--json", str(tmp_path / "s.json")]) == 0
    streamed = json.loads((tmp_path / "s.json").read_text())
    assert streamed["features"] == "stream" and record["features"] == "memory"
    torch.testing.assert_close(torch.tensor(streamed["curve"]), torch.tensor(record["curve"]), rtol=1e-4, atol=1e-5)
    assert streamed["static_miou"] == pytest.approx(record["static_miou"], rel=1e-5)


def test_cli_tracks_a_box_list_and_leaves_unreadable_windows_out(tiny_checkpoint, tmp_path, caplog, capsys):
    lines = []
    for i in range(6):
        frames = _write_window(tmp_path, f"w{i}", 4, size=(64, 48))
        lines.append({"frames": frames, "boxes": [[[8 + 2 * t, 4, 30 + 2 * t, 30] for t in range(4)]]})
    lines.append({"frames": ["gone/0.png"] * 4, "boxes": [[[0, 0, 20, 20]] * 4]})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[:4]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[4:]))
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", str(tmp_path / "train.jsonl"), "--val-list",
            str(tmp_path / "val.jsonl"), "--root", str(tmp_path), "--epochs", "2", "--batch", "4", "--workers", "0"]
    with caplog.at_level(logging.WARNING, logger="ivn_fast"):
        assert probe_main(args) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("gone/0.png" in m and m.endswith("it is left out") for m in messages)
    assert any(m.startswith("1 window(s) could not be read") for m in messages)
    assert "mean IoU" in capsys.readouterr().out
    (tmp_path / "val.jsonl").write_text(json.dumps(lines[-1]) + "\n")
    assert probe_main(args) == 2
    assert "no validation window" in capsys.readouterr().err
