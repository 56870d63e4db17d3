"""Probes: they learn a separable task from fixed features, and the CLI runs end to end."""

import json

import pytest
import torch

from ivn_fast.models.probe import AttentiveProbe, LinearProbe, build_probe
from ivn_fast.pretrain import main as pretrain_main
from ivn_fast.probe import main as probe_main
from ivn_fast.probe import parse_task, topk_accuracy, train_probe


def _separable(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [n, 10, 16] of noise where one random token per clip carries its class direction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    tokens = 0.5 * torch.randn(n, 10, 16, generator=g)
    where = torch.randint(10, (n,), generator=g)
    tokens[torch.arange(n), where] += 8 * torch.eye(16)[labels]
    return tokens, labels


@pytest.mark.parametrize("head", ["attentive", "linear"])
def test_probe_learns_a_separable_task(head):
    result = train_probe(_separable(400, 5, 0), _separable(200, 5, 1), head=head, num_classes=5, num_heads=2,
                         epochs=25, batch=32, lr=1e-2, weight_decay=0.0, seed=0, device=torch.device("cpu"))
    assert result["top1"] > 0.95, result
    assert len(result["curve"]) == 25 and result["curve"][-1] == result["top1"]


def test_probe_heads_shapes_and_topk():
    assert AttentiveProbe(16, 7, 2)(torch.randn(3, 9, 16)).shape == (3, 7)
    assert LinearProbe(16, 7)(torch.randn(3, 9, 16)).shape == (3, 7)
    with pytest.raises(ValueError, match="probe kind"):
        build_probe("mlp", 16, 7, 2)
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05]])
    assert topk_accuracy(logits, torch.tensor([1, 2]), 1) == 0.5
    assert topk_accuracy(logits, torch.tensor([1, 2]), 5) == 1.0


def test_task_specs():
    assert parse_task("synthetic:direction", "train") == ("direction", 720)
    assert parse_task("synthetic:shape:96", "val") == ("shape", 96)
    for bad in ("kinetics:shape", "synthetic:colour", "synthetic:shape:0"):
        with pytest.raises(ValueError, match="--train-list"):
            parse_task(bad, "train")


def test_cli_probes_a_checkpoint_and_its_random_twin(tmp_path, capsys):
    tiny = ["--train.progress", "false", "--train.tensorboard", "false", "--data.num_workers", "0",
            "--data.synthetic_videos", "16", "--train.batch_size", "4", "--model.encoder.depth", "2",
            "--model.teacher.num_layers", "2", "--data.num_frames", "4", "--max-steps", "2",
            "--output_dir", str(tmp_path / "run")]
    assert pretrain_main(tiny) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    common = ["--checkpoint", str(ckpt), "--train-list", "synthetic:direction:16", "--val-list",
              "synthetic:direction:8", "--epochs", "2", "--batch", "8"]
    assert probe_main(common + ["--json", str(tmp_path / "probe.json")]) == 0
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["task"] == "direction" and 0.0 <= record["top1"] <= 1.0 and len(record["curve"]) == 2
    assert record["settings"]["head"] == "attentive" and record["frames"] == 4
    assert probe_main(common + ["--random-init", "--head", "linear"]) == 0
    assert "random encoder" in capsys.readouterr().out
    assert probe_main(common[:2] + ["--train-list", "synthetic:shape", "--val-list", "synthetic:speed"]) == 2
    assert "labels" in capsys.readouterr().err
    assert probe_main(common + ["--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
