"""Fine-tuning: layer-wise decay, RandAugment, CutMix / Mixup, the epoch order, and the CLI with resume."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from ivn_fast.data.mixing import mix, soft_targets
from ivn_fast.data.randaug import OPS, _op, rand_augment
from ivn_fast.finetune import epoch_keys, layer_of
from ivn_fast.finetune import main as finetune_main
from ivn_fast.train.distributed import World
from ivn_fast.train.optim import layer_decay_groups
from launch import torchrun


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.pos_embed = nn.Parameter(torch.zeros(3, 4))
        self.encoder.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.head = nn.Linear(4, 2)


def test_layer_decay_scales_each_depth_and_keeps_no_decay_groups():
    model = _Tiny()
    groups = layer_decay_groups(model, 0.05, 0.5, 3, layer_of(3))
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert scale[id(model.encoder.pos_embed)] == (0.5 ** 4, 0.0)
    assert scale[id(model.encoder.blocks[0].weight)] == (0.5 ** 3, 0.05)
    assert scale[id(model.encoder.blocks[2].bias)] == (0.5, 0.0)
    assert scale[id(model.head.weight)] == (1.0, 0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_rand_augment_treats_every_frame_alike_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(3, 1, 24, 32, generator=g)
    clip = frame.expand(-1, 4, -1, -1).contiguous()
    for name in OPS:
        out = _op(name, clip.transpose(0, 1), 0.9, -1.0).transpose(0, 1)
        assert out.shape == clip.shape and out.min() >= 0 and out.max() <= 1, name
        assert (out - out[:, :1]).abs().max() < 1e-6, name  # one transform for the whole clip
        assert not torch.allclose(out, clip, atol=1e-3), name  # it did something
    a = rand_augment(clip, torch.Generator().manual_seed(5))
    b = rand_augment(clip, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, rand_augment(clip, torch.Generator().manual_seed(6)))


def test_cutmix_weights_targets_by_the_area_kept_and_mixup_blends():
    video = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 2, 10, 10).contiguous()
    targets = soft_targets(torch.tensor([0, 1, 2, 3]), 5, 0.1)
    assert torch.allclose(targets.sum(-1), torch.ones(4)) and targets[1, 1] == pytest.approx(0.92)
    mixed, mixed_targets, lam = mix(video, targets, np.random.default_rng(3), cutmix=1.0)
    kept = (mixed[0] == 0).float().mean().item()  # clip 0's own pixels; the pasted box comes from clip 3
    assert lam == pytest.approx(kept) and 0 < lam < 1
    assert torch.allclose(mixed_targets[0], lam * targets[0] + (1 - lam) * targets[3])
    blended, _, lam = mix(video, targets, np.random.default_rng(3), mixup=0.8)
    assert torch.allclose(blended[0], torch.full_like(blended[0], 3 * (1 - lam)))
    assert mix(video, targets, np.random.default_rng(3))[2] == 1.0


def test_epoch_keys_repeat_each_clip_and_split_batches_over_processes():
    keys = epoch_keys(10, 1, batch=4, seed=0, repeats=2, world=World())
    flat = [k for b in keys for k in b]
    assert len(flat) == 10 and [len(b) for b in keys] == [4, 4, 2]
    assert all(flat[i] % 10 == flat[i + 1] % 10 and flat[i] != flat[i + 1] for i in range(0, 10, 2))
    assert {k // 10 for k in flat} == {2, 3}  # epoch 1's two passes: their own crops and augmentation
    two = [epoch_keys(10, 1, batch=4, seed=0, repeats=2, world=World(rank=r, size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == keys
    assert len(epoch_keys(9, 0, batch=4, seed=0, repeats=1, world=World(rank=0, size=2))) == 2  # 1 left: dropped


def test_cli_fine_tunes_checkpoints_and_resumes_exactly(tiny_checkpoint, tmp_path, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:direction:16", "--val-list",
            "synthetic:direction:8", "--epochs", "2", "--batch", "8", "--workers", "0", "--segments", "1",
            "--crops", "1", "--warmup-epochs", "1", "--lr", "1e-3", "--mixup", "0.8"]
    whole = tmp_path / "whole"
    assert finetune_main(args + ["--output-dir", str(whole), "--plot"]) == 0
    record = json.loads((whole / "finetune.json").read_text())
    assert record["task"] == "direction" and record["classes"] == 8 and len(record["curve"]) == 2
    assert all(math.isfinite(v) for v in record["train_loss"]) and 0 <= record["top1"] <= 1
    assert [json.loads(line)["epoch"] for line in (whole / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    assert (whole / "curves.png").is_file() and "fine-tuned" in capsys.readouterr().out
    random = tmp_path / "random"
    assert finetune_main(args + ["--output-dir", str(random), "--random-init"]) == 0  # only the weights differ
    baseline = json.loads((random / "finetune.json").read_text())
    assert baseline["settings"]["random_init"] and baseline["train_loss"][0] != record["train_loss"][0]
    # a run stopped after epoch 1 and resumed ends where the whole run did
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    (whole / "checkpoints" / "epoch_0001.pt").rename(cut / "checkpoints" / "epoch_0001.pt")
    assert finetune_main(args + ["--output-dir", str(cut), "--resume"]) == 0
    resumed = json.loads((cut / "finetune.json").read_text())
    assert resumed["curve"] == record["curve"] and resumed["epochs_run"] == 1
    assert resumed["train_loss"] == pytest.approx(record["train_loss"], rel=1e-5)
    assert finetune_main(args + ["--output-dir", str(cut)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert finetune_main([*args[:-4], "--lr", "2e-3", "--output-dir", str(cut), "--resume"]) == 2
    assert "lr 0.001 (now 0.002)" in capsys.readouterr().err
    assert finetune_main(args + ["--output-dir", str(tmp_path / "d"), "--train-list", "synthetic:depth:8",
                                "--val-list", "synthetic:depth:8"]) == 2
    assert "tracking and depth are probes" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["full", "op"])
def test_checkpointed_and_compiled_encoder_fine_tunes_as_the_plain_one(tiny_checkpoint, tmp_path, monkeypatch, mode):
    """Recomputed activations (drop-path draws included) and compiled blocks give the plain run's losses."""
    import ivn_fast.finetune as ft
    from ivn_fast.train.parallelize import compile_blocks

    compiled = []
    monkeypatch.setattr(ft, "compile_blocks", lambda m: compiled.append(compile_blocks(m, backend="aot_eager")) or 2)
    args = ["--checkpoint", str(tiny_checkpoint), "--train-list", "synthetic:direction:16", "--val-list",
            "synthetic:direction:8", "--epochs", "1", "--batch", "8", "--workers", "0", "--segments", "1",
            "--crops", "1", "--lr", "1e-3", "--drop-path", "0.2"]
    runs = {}
    for name, extra in (("plain", []), ("fast", ["--activation-checkpointing", mode, "--compile"])):
        assert finetune_main(args + extra + ["--output-dir", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "finetune.json").read_text())
    assert compiled == [2]  # the tiny encoder's two blocks
    assert "activation checkpointing" in (tmp_path / "fast" / "train.log").read_text()
    assert runs["fast"]["train_loss"] == pytest.approx(runs["plain"]["train_loss"], rel=1e-5)
    assert runs["fast"]["curve"] == runs["plain"]["curve"]


def test_two_processes_fine_tune_as_one_does(tiny_checkpoint, tmp_path):
    def run(nproc: int) -> dict:
        out = tmp_path / str(nproc)
        torchrun("ivn_fast.finetune", nproc, "--checkpoint", str(tiny_checkpoint), "--train-list",
                 "synthetic:direction:16", "--val-list", "synthetic:direction:8", "--epochs", "2", "--batch", "8",
                 "--workers", "0", "--segments", "1", "--crops", "1", "--drop-path", "0", "--cutmix", "0",
                 "--lr", "1e-3", "--output-dir", str(out))
        return json.loads((out / "finetune.json").read_text())

    one, two = run(1), run(2)
    assert two["curve"] == one["curve"] and two["top5"] == one["top5"]
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)


def test_a_step_with_a_non_finite_loss_is_skipped(caplog):
    import logging

    from ivn_fast.fit import fit

    model = nn.Linear(2, 1)
    before = model.weight.detach().clone()
    calls = []

    def loss_fn(m, x):
        calls.append(len(calls))
        loss = m(x).pow(2).mean()
        return loss * float("nan") if len(calls) == 1 else loss * 0.0  # only the first step would move it

    with caplog.at_level(logging.WARNING, logger="ivn_fast"):
        curve, losses = fit(model, lambda epoch: [(torch.ones(4, 2),), (torch.ones(4, 2),)], 2, loss_fn,
                            lambda m: 0.0, epochs=1, lr=0.1, weight_decay=0.0, device=torch.device("cpu"))
    assert len(calls) == 2 and torch.equal(model.weight, before) and losses == [0.0]
    assert "step 1 (epoch 1): the loss is not finite; the step is skipped" in caplog.text


def test_eval_speed_cpu_smoke(tmp_path, capsys):
    from bench.eval_speed import main as eval_speed

    assert eval_speed(["--cpu-smoke", "--json", str(tmp_path / "e.json")]) == 0
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["encode fp32", "encode bf16", "fine-tune step bf16"]
    assert all(r["clips_per_s"] > 0 and r["flops"] > 0 for r in rows)
    assert rows[2]["flops"] > 2.5 * rows[0]["flops"]  # forward and backward of the same encoder
    assert "fine-tune step bf16" in capsys.readouterr().out
