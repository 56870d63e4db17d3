"""Probes: they learn a separable task from fixed features, average views, and the CLI runs end to end."""

import json
import logging

import pytest
import torch
from PIL import Image
from torch import nn

from ivn_fast.data.synthetic import SyntheticVideos
from ivn_fast.models.probe import AttentiveProbe, LinearProbe, build_probe
from ivn_fast.features import Kept
from ivn_fast.probe import SyntheticViews, evaluate, synthetic_task, topk_accuracy, train_probe
from ivn_fast.probe import main as probe_main
from launch import torchrun
from video_helpers import write_video


def _separable(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [n, 1 view, 10, 16] of noise where one random token per clip carries its class direction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    tokens = 0.5 * torch.randn(n, 10, 16, generator=g)
    where = torch.randint(10, (n,), generator=g)
    tokens[torch.arange(n), where] += 8 * torch.eye(16)[labels]
    return Kept(tokens[:, None], labels)


@pytest.mark.parametrize("head", ["attentive", "linear"])
def test_probe_learns_a_separable_task(head):
    result = train_probe(_separable(400, 5, 0), _separable(200, 5, 1), head=head, num_classes=5, num_heads=2,
                         epochs=25, batch=32, lr=1e-2, weight_decay=0.0, seed=0, device=torch.device("cpu"))
    assert result["top1"] > 0.95, result
    assert len(result["curve"]) == 25 and result["curve"][-1] == result["top1"]
    assert len(result["train_loss"]) == 25 and result["train_loss"][-1] < result["train_loss"][0] / 2


class _TokenMeanLogits(nn.Module):
    """A fixed 'probe' whose logits are the mean token: the test writes each view's logits directly."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(1)


def test_views_are_averaged_as_probabilities():
    # per clip: one view confidently wrong (class 0), two mildly right (class 1). Averaging
    # softmax gets every clip right; averaging logits would not ([3.3, 1.3, 0] favours class 0).
    views = torch.tensor([[10.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0]])
    tokens = views[None, :, None, :].expand(4, 3, 2, 3)  # [N, V, S, K]
    scores = evaluate(_TokenMeanLogits(), Kept(tokens, torch.ones(4, dtype=torch.long), batch=3), torch.device("cpu"))
    assert scores["top1"] == 1.0 and scores["view_top1"] == pytest.approx(2 / 3) and scores["top5"] == 1.0
    assert views.mean(0).argmax() == 0


def test_multi_view_training_uses_every_view_and_helps_on_noisy_views():
    # each view shows the class through noise; one view is often wrong, the average of five rarely
    g = torch.Generator().manual_seed(0)
    def noisy(n):
        labels = torch.randint(4, (n,), generator=g)
        tokens = torch.randn(n, 5, 3, 8, generator=g) * 2.0
        tokens[..., :4] += torch.eye(4)[labels][:, None, None]
        return Kept(tokens, labels)
    result = train_probe(noisy(300), noisy(200), head="linear", num_classes=4, num_heads=1, epochs=10, batch=32,
                         lr=1e-2, weight_decay=0.0, seed=0, device=torch.device("cpu"))
    assert result["top1"] > result["view_top1"] + 0.1, result


def test_synthetic_views_are_windows_and_crops_of_one_longer_wider_clip():
    views = SyntheticViews(3, 4, 28, seed=5, segments=2, crops=3)
    item = views[1]
    full = SyntheticVideos(3, 8, 35, seed=5)[1]
    assert item["video"].shape == (6, 3, 4, 28, 28)
    assert torch.equal(item["video"][5], full["video"][:, 4:8, 3:31, 7:35])  # 2nd segment, right crop
    assert torch.equal(item["video"][0], full["video"][:, 0:4, 3:31, 0:28])
    assert item["shape"] == full["shape"] and item["direction"] == full["direction"]
    single = SyntheticViews(3, 4, 28, seed=5)[1]["video"]
    assert torch.equal(single[0], SyntheticVideos(3, 4, 28, seed=5)[1]["video"])
    train = SyntheticViews(3, 4, 28, seed=5, segments=2, crops=3, train=True)[1]["video"]
    assert train.shape == (1, 3, 4, 28, 28) and any(torch.equal(train[0], v) for v in item["video"])
    assert torch.equal(train, SyntheticViews(3, 4, 28, seed=5, segments=2, crops=3, train=True)[1]["video"])


def test_probe_heads_shapes_and_topk():
    assert AttentiveProbe(16, 7, 2)(torch.randn(3, 9, 16)).shape == (3, 7)
    assert LinearProbe(16, 7)(torch.randn(3, 9, 16)).shape == (3, 7)
    with pytest.raises(ValueError, match="probe kind"):
        build_probe("mlp", 16, 7, 2)
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05]])
    assert topk_accuracy(logits, torch.tensor([1, 2]), 1) == 0.5
    assert topk_accuracy(logits, torch.tensor([1, 2]), 5) == 1.0


def test_task_specs():
    views = {"frames": 4, "size": 28, "segments": 1, "crops": 1}
    task = synthetic_task("synthetic:direction", "train", **views)
    assert (task.label, task.num_classes, len(task.data)) == ("direction", 8, 720)
    assert len(synthetic_task("synthetic:shape:96", "val", **views).data) == 96
    for bad in ("synthetic", "synthetic:colour", "synthetic:shape:0"):
        with pytest.raises(ValueError, match="--train-list"):
            synthetic_task(bad, "train", **views)


def test_cli_probes_a_checkpoint_and_its_random_twin(tiny_checkpoint, tmp_path, capsys):
    common = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:direction:16", "--val-list",
              "synthetic:direction:8", "--epochs", "2", "--batch", "8"]
    assert probe_main(common + ["--json", str(tmp_path / "probe.json"), "--plot", str(tmp_path / "c.png")]) == 0
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["task"] == "direction" and 0.0 <= record["top1"] <= 1.0 and len(record["curve"]) == 2
    assert record["curve"][-1] == record["top1"]  # the result is the trained probe's last validation
    picture = Image.open(tmp_path / "c.png")
    assert picture.size == (984, 376)  # two panels
    assert (66, 114, 196) in {colour for _, colour in picture.getcolors(1 << 16)}  # the curves are drawn
    assert record["settings"]["head"] == "attentive" and record["frames"] == 4
    assert probe_main(common + ["--random-init", "--head", "linear"]) == 0
    assert "random encoder" in capsys.readouterr().out
    assert probe_main(common + ["--precision", "bf16", "--json", str(tmp_path / "bf16.json")]) == 0
    bf16 = json.loads((tmp_path / "bf16.json").read_text())
    assert bf16["settings"]["amp"] == "torch.bfloat16" and record["settings"]["amp"] is None
    assert probe_main(common[:2] + ["--train-list", "synthetic:shape", "--val-list", "synthetic:speed"]) == 2
    assert "labels" in capsys.readouterr().err
    assert probe_main(common + ["--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert probe_main(common + ["--cache-dir", str(tmp_path / "cache")]) == 2
    assert "only --head linear" in capsys.readouterr().err
    assert probe_main(common[:2] + ["--train-list", "kinetics:shape", "--val-list", "synthetic:shape"]) == 2
    assert "video list not found" in capsys.readouterr().err


def test_cli_multi_view_linear_probe_caches_features(tiny_checkpoint, tmp_path):
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:shape:16", "--val-list", "synthetic:shape:8",
            "--epochs", "2", "--batch", "8", "--head", "linear", "--segments", "2", "--crops", "2",
            "--cache-dir", str(tmp_path / "cache")]
    records = []
    for i in range(2):
        assert probe_main(args + ["--json", str(tmp_path / f"{i}.json")]) == 0
        records.append(json.loads((tmp_path / f"{i}.json").read_text()))
    assert records[0]["cached"] == {"train": False, "val": False}
    assert records[1]["cached"] == {"train": True, "val": True}
    assert records[0]["views"] == {"segments": 2, "crops": 2}
    assert records[0]["top1"] == records[1]["top1"] and records[0]["curve"] == records[1]["curve"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_cli_probes_video_lists_with_test_views(tiny_checkpoint, tmp_path):
    lines = []
    for i in range(6):
        path = write_video(tmp_path / f"v{i}", frames=10 + i, width=64 + 8 * (i % 2), height=48)
        lines.append(f"{path.name} {i % 2}")
    (tmp_path / "train.txt").write_text("\n".join(lines[:4]) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(lines[4:]) + "\n")
    out = tmp_path / "probe.json"
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", str(tmp_path / "train.txt"), "--val-list",
            str(tmp_path / "val.txt"), "--root", str(tmp_path), "--epochs", "2", "--batch", "4", "--segments", "2",
            "--crops", "3", "--json", str(out)]
    assert probe_main(args) == 0
    record = json.loads(out.read_text())
    assert record["task"] == "label" and record["classes"] == 2 and record["clips"] == {"train": 4, "val": 2}
    assert record["data"]["val"]["segments"] == 2 and record["data"]["val"]["videos"] == 2
    assert 0.0 <= record["top1"] <= 1.0 and 0.0 <= record["view_top1"] <= 1.0
    (tmp_path / "unlabelled.txt").write_text(f"{tmp_path / 'v0.mp4'}\n")
    assert probe_main(args[:2] + ["--train-list", str(tmp_path / "unlabelled.txt"), "--val-list",
                                  str(tmp_path / "val.txt")]) == 2


def test_cli_counts_and_logs_unreadable_validation_videos(tiny_checkpoint, tmp_path, caplog):
    paths = [write_video(tmp_path / f"v{i}", frames=10, width=64, height=48) for i in range(4)]
    (tmp_path / "train.txt").write_text("".join(f"{p.name} {i % 2}\n" for i, p in enumerate(paths)))
    (tmp_path / "val.txt").write_text(f"{paths[0].name} 0\ngone.mp4 1\n{paths[1].name} 5\n")
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", str(tmp_path / "train.txt"), "--val-list",
            str(tmp_path / "val.txt"), "--root", str(tmp_path), "--epochs", "1", "--batch", "4"]
    with caplog.at_level(logging.WARNING, logger="ivn_fast"):
        assert probe_main(args) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("gone.mp4" in m and "missing" in m for m in messages)
    assert any(m.startswith("1 bad video(s) were replaced") and "missing 1" in m for m in messages)
    assert any(m.startswith("validation label(s) 5 never occur in the training clips") for m in messages)


def test_streamed_probe_trains_as_the_kept_one_on_the_same_clips(tiny_checkpoint):
    # one view per clip and clips that do not change between epochs: streaming reads the same tokens in
    # the same seeded order as the kept path, so both train the same probe
    from ivn_fast.export import load_encoder
    from ivn_fast.features import Streamed, encode

    cpu = torch.device("cpu")
    encoder = load_encoder(str(tiny_checkpoint), cpu)
    data = {split: SyntheticViews(n, 4, 112, seed=seed, train=split == "train")
            for split, n, seed in (("train", 24, 1), ("val", 12, 2))}
    kept = {split: Kept(*(lambda f: (f[0], f[1]["direction"]))(encode(encoder, d, ("direction",), 8, cpu)))
            for split, d in data.items()}
    streamed = {split: Streamed(encoder, d, ("direction",), batch=8, device=cpu, workers=0)
                for split, d in data.items()}
    common = {"head": "attentive", "num_classes": 8, "num_heads": 2, "epochs": 3, "batch": 8, "lr": 1e-2,
              "weight_decay": 0.0, "seed": 0, "device": cpu}
    a = train_probe(kept["train"], kept["val"], **common)
    b = train_probe(streamed["train"], streamed["val"], **common)
    torch.testing.assert_close(torch.tensor(b["train_loss"]), torch.tensor(a["train_loss"]), rtol=1e-3, atol=1e-4)
    assert a["curve"] == b["curve"] and a["top5"] == b["top5"]
    assert 0.0 <= b["train_top1"] <= 1.0


def test_streamed_training_views_change_with_the_epoch():
    views = SyntheticViews(6, 2, 28, seed=4, segments=3, crops=2, train=True)
    per_epoch = [[views[i + epoch * len(views)]["video"] for i in range(6)] for epoch in range(2)]
    assert torch.equal(per_epoch[0][0], views[0]["video"])  # epoch 0 keys are the plain indices
    assert any(not torch.equal(a, b) for a, b in zip(*per_epoch))


def test_feature_mode_keeps_what_fits_and_streams_the_rest(caplog):
    from ivn_fast.probe import feature_mode

    with caplog.at_level(logging.INFO, logger="ivn_fast"):
        assert feature_mode("auto", 10**6) == "memory"
        assert feature_mode("auto", 10**15) == "stream"
        assert feature_mode("auto", 10**15, cached=True) == "memory"
    assert "keeping every view's tokens would take 1000000.0 GB" in caplog.text
    assert feature_mode("stream", 1) == "stream"


def test_cli_streams_a_list_probe(tiny_checkpoint, tmp_path, capsys):
    lines = []
    for i in range(4):
        path = write_video(tmp_path / f"v{i}", frames=10, width=64, height=48)
        lines.append(f"{path.name} {i % 2}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(lines[:2]) + "\n")
    out = tmp_path / "probe.json"
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", str(tmp_path / "train.txt"), "--val-list",
            str(tmp_path / "val.txt"), "--root", str(tmp_path), "--epochs", "2", "--batch", "2", "--segments", "2",
            "--features", "stream", "--workers", "0", "--json", str(out)]
    assert probe_main(args) == 0
    record = json.loads(out.read_text())
    assert record["features"] == "stream" and len(record["curve"]) == 2 and 0 <= record["top1"] <= 1
    assert probe_main(args + ["--head", "linear", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "--features stream never does" in capsys.readouterr().err


def test_two_processes_stream_the_probe_as_one_does(tiny_checkpoint, tmp_path):
    def run(nproc: int) -> dict:
        out = tmp_path / f"{nproc}.json"
        torchrun("ivn_fast.probe", nproc, "--checkpoint", str(tiny_checkpoint), "--train-list",
                 "synthetic:direction:24", "--val-list", "synthetic:direction:12", "--epochs", "2", "--batch", "8",
                 "--workers", "0", "--features", "stream", "--lr", "1e-2", "--json", str(out))
        return json.loads(out.read_text())

    one, two = run(1), run(2)
    assert two["curve"] == one["curve"] and two["top5"] == one["top5"]
    torch.testing.assert_close(torch.tensor(two["train_loss"]), torch.tensor(one["train_loss"]), rtol=1e-3, atol=1e-4)
    assert two["train_top1"] == one["train_top1"]


def test_bf16_encoding_gives_float32_tokens_close_to_float32_encoding(tiny_checkpoint):
    from ivn_fast.export import load_encoder
    from ivn_fast.features import view_tokens

    cpu = torch.device("cpu")
    encoder = load_encoder(str(tiny_checkpoint), cpu)
    video = SyntheticVideos(2, 4, 112, seed=0)[1]["video"][None]
    full = view_tokens(encoder, video, cpu)
    half = view_tokens(encoder, video, cpu, amp=torch.bfloat16)
    assert half.dtype == torch.float32 and half.shape == full.shape == (1, 1, 4 + 4 * 64, 128)
    assert not torch.equal(half, full)  # the encoder did run in bf16
    assert torch.nn.functional.cosine_similarity(half.flatten(), full.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("features", ["memory", "stream"])
def test_each_split_reads_its_own_label(tiny_checkpoint, features):
    from argparse import Namespace

    from ivn_fast.export import load_encoder
    from ivn_fast.probe import sources, task_labels
    from ivn_fast.train.distributed import World

    cpu = torch.device("cpu")
    views = {"frames": 4, "size": 112, "segments": 1, "crops": 1}
    tasks = {"train": synthetic_task("synthetic:shape:6", "train", **views),
             "zero-shot": synthetic_task("synthetic:direction:6", "zero-shot", **views)}
    args = Namespace(features=features, batch=4, workers=0, amp=None)
    out, mode, _ = sources(args, load_encoder(str(tiny_checkpoint), cpu), tasks, cpu, World())
    assert mode == features
    for split, task in tasks.items():
        labels = torch.cat([y for _, y in out[split].batches()]).tolist()
        assert labels == task_labels(task), split
