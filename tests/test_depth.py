"""The depth probe: metrics, the readout learns per-patch depth from tokens, depth lists and the CLI."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ivn_fast.data.synthetic import SyntheticVideos
from ivn_fast.depth import DepthList, synthetic_depth, depth_loss, depth_metrics, temporal_gradient_loss, train_depth
from ivn_fast.models.depth_head import TemporalDepthHead, dpt_layers
from ivn_fast.models.probe import DepthProbe
from ivn_fast.features import Kept
from ivn_fast.probe import main as probe_main
from launch import torchrun


def test_metrics_and_loss_of_known_depths():
    true = torch.tensor([1.0, 2.0, 4.0, 8.0])
    pred = torch.tensor([1.1, 3.0, 4.0, -1.0])
    valid = torch.tensor([True, True, True, False])
    scores = depth_metrics(pred, true, valid)
    assert scores["absrel"] == pytest.approx((0.1 + 0.5 + 0.0) / 3)
    assert scores["delta1"] == pytest.approx(2 / 3)  # 3 / 2 = 1.5 is off by more than 1.25
    assert depth_loss(pred, true, valid).item() == pytest.approx((0.1 + 1.0) / 3)
    assert depth_metrics(torch.tensor([-1.0]), torch.tensor([2.0]), torch.tensor([True]))["absrel"] < 1.0  # floored


def test_readout_places_each_patch_where_its_query_says():
    probe = DepthProbe(16, (2, 3, 4), 5, 2)
    head = probe.readout.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.arange(25.0))  # every patch holds 0..24 row-major
    out = probe(torch.randn(2, 7, 16))
    assert out.shape == (2, 2, 15, 20)
    torch.testing.assert_close(out[1, 1, 5:10, 15:20], torch.arange(25.0).view(5, 5))


def _patch_depths(n: int, seed: int, grid=(2, 2, 2), patch=2, dim=24):
    """Windows where token i carries the depth of patch i (one depth per patch): readable from the tokens."""
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    per_patch = 1 + 4 * torch.rand(n, t * h * w, generator=g)
    tokens = 0.05 * torch.randn(n, t * h * w + 1, dim, generator=g)
    tokens[:, 1:, 0] += per_patch
    tokens[:, 1:, 1:1 + t * h * w] += torch.eye(t * h * w)  # which patch a token is
    depth = per_patch.view(n, t, h, 1, w, 1).expand(-1, -1, -1, patch, -1, patch).reshape(n, t, h * patch, w * patch)
    return Kept(tokens[:, None], depth, torch.ones_like(depth, dtype=torch.bool))


def test_readout_learns_depth_from_the_tokens():
    result = train_depth(_patch_depths(512, 0), _patch_depths(128, 1), lambda: DepthProbe(24, (2, 2, 2), 2, 2),
                         epochs=30, batch=32, lr=3e-3, weight_decay=0.0, seed=0, device=torch.device("cpu"))
    assert result["mean_absrel"] > 0.3
    assert result["absrel"] < result["mean_absrel"] / 2 and result["delta1"] > result["mean_delta1"] + 0.2, result
    assert len(result["curve"]) == 30 and result["curve"][-1] == result["absrel"]


def test_temporal_head_starts_at_the_mean_and_its_frames_see_each_other():
    torch.manual_seed(0)
    assert dpt_layers(12) == (2, 5, 8, 11) and dpt_layers(24) == (5, 11, 17, 23) and dpt_layers(2) == (0, 0, 0, 1)
    head = TemporalDepthHead(16, (3, 2, 2), 4, 1, features=16, channels=(8, 8, 16, 16), num_heads=2).eval()
    tokens = torch.randn(2, 1 + 3 * 4, 4 * 16)
    head.start_at(2.5)
    assert head(tokens).shape == (2, 3, 8, 8) and torch.allclose(head(tokens), torch.full((2, 3, 8, 8), 2.5))
    torch.nn.init.normal_(head.out[-2].weight)
    moved = tokens.clone()
    moved[:, 1:5] += 1.0  # frame 0's tokens
    # the temporal modules start as the identity: each frame is decoded on its own
    assert torch.equal(head(moved)[:, 2], head(tokens)[:, 2]) and not torch.equal(head(moved)[:, 0], head(tokens)[:, 0])
    for module in head.temporal:
        torch.nn.init.normal_(module.block.attn.proj.weight, std=0.1)
    assert not torch.allclose(head(moved)[:, 2], head(tokens)[:, 2])


def test_temporal_gradient_loss_of_known_depths():
    pred = torch.tensor([[[1.0], [2.0], [2.0]]])  # [B=1, T=3, 1 pixel]
    true = torch.tensor([[[1.0], [1.5], [3.0]]])
    valid = torch.tensor([[[True], [True], [True]]])
    # changes 1 and 0 against 0.5 and 1.5
    assert temporal_gradient_loss(pred, true, valid).item() == pytest.approx((0.5 + 1.5) / 2)
    valid[0, 2] = False
    assert temporal_gradient_loss(pred, true, valid).item() == pytest.approx(0.5)


def test_temporal_head_learns_depth_from_the_tokens():
    train, val = _patch_depths(256, 0), _patch_depths(64, 1)
    for source in (train, val):
        source.tokens = source.tokens.repeat(1, 1, 1, 4)  # the same tokens at each of the four blocks
    def make() -> TemporalDepthHead:
        return TemporalDepthHead(24, (2, 2, 2), 2, 1, features=16, channels=(8, 8, 16, 16), num_heads=2)

    result = train_depth(train, val, make, epochs=15, batch=32, lr=3e-3, weight_decay=0.0, seed=0,
                         device=torch.device("cpu"), temporal=1.0)
    assert result["absrel"] < result["mean_absrel"] / 2, result


def test_synthetic_depth_puts_the_shape_in_front_of_the_backdrop():
    clip = SyntheticVideos(4, 3, 48, seed=2).render(1)[1]
    depth = clip.depth
    assert depth.shape == (3, 48, 48)
    backdrop = depth[0, :, 0]  # the left column: the shape starts well inside the frame
    assert backdrop[0] > backdrop[-1] and 4.5 < backdrop[0] <= 5.0 and 3.0 <= backdrop[-1] < 3.5
    x0, y0, x1, y1 = (clip.boxes[0] * 48).tolist()
    centre = depth[0, int((y0 + y1) / 2), int((x0 + x1) / 2)]
    assert 1.6 < centre < 2.6 and centre < depth.max()
    item = synthetic_depth(4, 3, 48, seed=2)[1]
    assert torch.equal(item["depth"], depth) and item["valid"].all()


def _write_depth_window(tmp_path, name: str, frames: int, size=(40, 30), value=2000) -> tuple[list[str], list[str]]:
    rgb, maps = [], []
    for t in range(frames):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), 30 * t, dtype=np.uint8)).save(tmp_path / name / f"{t}.jpg")
        depth = np.full((size[1], size[0]), value, dtype=np.uint16)
        depth[:, : size[0] // 2] = 0  # no measurement on the left half
        depth[1, 34] = 60000  # one far reading, inside the centre square
        Image.fromarray(depth).save(tmp_path / name / f"{t}.png")
        rgb.append(f"{name}/{t}.jpg")
        maps.append(f"{name}/{t}.png")
    return rgb, maps


def test_depth_list_scales_crops_and_scores_only_measured_pixels(tmp_path):
    frames, maps = _write_depth_window(tmp_path, "a", 2)
    path = tmp_path / "depth.jsonl"
    path.write_text(json.dumps({"frames": frames, "depths": maps, "range": [0.5, 10]}) + "\n")
    item = DepthList(str(path), num_frames=2, size=15, root=str(tmp_path))[0]
    assert item["video"].shape == (3, 2, 15, 15) and item["depth"].shape == (2, 15, 15)
    # the centre 30 x 30 square of 40 x 30 is x 5..34, its first 15 columns unmeasured; halved by nearest
    # neighbour, output column j reads column 2j + 1
    assert not item["valid"][:, :, :7].any() and item["valid"][:, 1:, 7:].all()
    assert not item["valid"][:, 0, 14].any()  # 60 m is out of range
    torch.testing.assert_close(item["depth"][item["valid"]], torch.full((int(item["valid"].sum()),), 2.0))
    assert (item["depth"][~item["valid"]] == 0).all()
    (tmp_path / "a" / "1.png").unlink()  # a window missing a map is left out, named
    gone = DepthList(str(path), num_frames=2, size=15, root=str(tmp_path))[0]
    assert not gone["valid"].any() and gone["video"].shape == (3, 2, 15, 15)
    assert json.loads(gone["skipped"])[0][0] == "unreadable"


@pytest.mark.parametrize("extra, message", [
    ({"depths": ["a.png"]}, "one depth map per frame"),
    ({"depth_scale": 0}, "'depth_scale' must be a positive number"),
    ({"range": [5, 1]}, "'range' must be [min, max] metres"),
])
def test_depth_list_errors_name_the_line(tmp_path, extra, message):
    entry = {"frames": ["a.jpg", "b.jpg"], "depths": ["a.png", "b.png"], **extra}
    (tmp_path / "bad.jsonl").write_text(json.dumps(entry) + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:1: .*{re.escape(message)}"):
        DepthList(str(tmp_path / "bad.jsonl"), num_frames=2, size=14)


def test_cli_depth_on_synthetic_clips_and_a_depth_list(tiny_checkpoint, tmp_path, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:depth:16", "--val-list", "synthetic:depth:8",
            "--epochs", "2", "--batch", "8", "--json", str(tmp_path / "d.json"), "--plot", str(tmp_path / "d.png")]
    assert probe_main(args) == 0
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["task"] == "depth" and len(record["curve"]) == 2 and 0 < record["absrel"] < 1
    assert 0 <= record["delta1"] <= 1 and record["mean_absrel"] > 0 and "AbsRel" in capsys.readouterr().out
    assert Image.open(tmp_path / "d-depth.png").size[1] > 3 * 56  # frames, true and predicted rows
    assert probe_main(args[:-4] + ["--features", "stream", "--workers", "0", "--json", str(tmp_path / "s.json")]) == 0
    streamed = json.loads((tmp_path / "s.json").read_text())  # encoded as read: the same readout, the same scores
    assert streamed["features"] == "stream" and record["features"] == "memory"
    torch.testing.assert_close(torch.tensor(streamed["curve"]), torch.tensor(record["curve"]), rtol=1e-4, atol=1e-5)
    assert streamed["mean_absrel"] == pytest.approx(record["mean_absrel"], rel=1e-5)
    assert probe_main(args[:-4] + ["--head", "vda", "--json", str(tmp_path / "v.json")]) == 0
    vda = json.loads((tmp_path / "v.json").read_text())
    assert vda["head"] == "vda" and 0 < vda["absrel"] < 1 and vda["curve"] != record["curve"]
    assert "temporal DPT head" in capsys.readouterr().out
    assert probe_main(args[:2] + ["--train-list", "synthetic:shape:8", "--val-list", "synthetic:shape:8",
                                  "--head", "vda"]) == 2
    assert "a depth head" in capsys.readouterr().err
    lines = []
    for i in range(5):
        frames, maps = _write_depth_window(tmp_path, f"w{i}", 4, size=(64, 48), value=1000 + 500 * i)
        lines.append(json.dumps({"frames": frames, "depths": maps}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(lines[3:]) + "\n")
    listed = ["--checkpoint", str(tiny_checkpoint), "--train-list", str(tmp_path / "train.jsonl"), "--val-list",
              str(tmp_path / "val.jsonl"), "--root", str(tmp_path), "--epochs", "2", "--batch", "4", "--workers", "0"]
    assert probe_main(listed) == 0
    assert "depth probe" in capsys.readouterr().out
    (tmp_path / "other.jsonl").write_text(json.dumps({"frames": frames}) + "\n")
    assert probe_main(listed[:4] + ["--val-list", str(tmp_path / "other.jsonl")]) == 2
    assert "needs 'boxes' (tracking) or 'depths' (depth)" in capsys.readouterr().err
    assert probe_main(listed[:4] + ["--val-list", "synthetic:track:8"]) == 2
    assert "--train-list labels 'depth' but --val-list labels 'track'" in capsys.readouterr().err


def test_two_processes_stream_the_depth_probe_as_one_does(tiny_checkpoint, tmp_path):
    def run(nproc: int) -> dict:
        out = tmp_path / f"{nproc}.json"
        torchrun("ivn_fast.probe", nproc, "--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:depth:16",
                 "--val-list", "synthetic:depth:6", "--epochs", "2", "--batch", "8", "--workers", "0", "--json", str(out))
        return json.loads(out.read_text())

    one, two = run(1), run(2)
    assert two["features"] == "stream" and one["features"] == "memory"
    for key in ("curve", "delta1_curve", "train_loss"):
        torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(one[key]), rtol=1e-4, atol=1e-5)
    assert two["mean_absrel"] == pytest.approx(one["mean_absrel"], rel=1e-5)
