"""Stage 2 end to end: starts from Stage 1, keeps or moves its target as configured, resumes exactly."""

import json
import shutil

import pytest
import torch

from ivn_fast.config import build_config
from ivn_fast.pretrain import main
from ivn_fast.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from ivn_fast.train.distributed import World
from ivn_fast.train.stage2 import find_stage1_checkpoint
from ivn_fast.train.trainer import Trainer

TINY = ["--train.progress", "false", "--train.tensorboard", "false", "--data.num_workers", "0",
        "--data.synthetic_videos", "64", "--train.batch_size", "4", "--model.encoder.depth", "3",
        "--model.teacher.num_layers", "2", "--model.decoder.sampling_steps", "5", "--train.log_every", "1",
        "--optim.warmup_steps", "2"]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    assert main(TINY + ["--max-steps", "3", "--output_dir", str(out)]) == 0
    return out


def _stage2_config(stage1, out, *extra):
    args = dict(zip(TINY[::2], TINY[1::2]))
    tree: dict = {}
    from ivn_fast.config import set_dotted

    for key, value in args.items():
        set_dotted(tree, key[2:], value)
    for key, value in zip(extra[::2], extra[1::2]):
        set_dotted(tree, key, value)
    set_dotted(tree, "train.stage", 2)
    set_dotted(tree, "stage2.init", str(latest_checkpoint(stage1 / "checkpoints")))
    set_dotted(tree, "output_dir", str(out))
    return build_config("tiny", tree)


def test_loss_falls_and_frozen_target_stays_bit_identical(stage1, tmp_path):
    cfg = _stage2_config(stage1, tmp_path, "train.max_steps", 12, "optim.lr", 2e-3)
    trainer = Trainer(cfg, World())
    before = {k: v.clone() for k, v in trainer.task.teacher.state_dict().items()}
    stage1_encoder = {k[len("encoder."):]: v for k, v in load_checkpoint(
        latest_checkpoint(stage1 / "checkpoints"))["model"].items() if k.startswith("encoder.")}
    for k, v in trainer.task.teacher.encoder.state_dict().items():
        assert torch.equal(v, stage1_encoder[k].to(v.dtype)), k  # the target is the Stage 1 encoder
    trainer.train()
    for k, v in trainer.task.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(trainer.model.encoder.blocks[0].mlp.fc1.weight,
                           stage1_encoder["blocks.0.mlp.fc1.weight"])
    losses = [r["loss"] for r in records(tmp_path / "stage2" / "metrics.jsonl")]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    first = records(tmp_path / "stage2" / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(first["loss_pred1"] + first["loss_pred2"])  # the views add
    assert 0.5 < first["mask1_hidden_frac"] < 1 and first["mask2_hidden_frac"] > first["mask1_hidden_frac"] - 0.1
    assert (tmp_path / "stage2" / "masks.png").stat().st_size > 0


def test_ema_target_moves_by_the_ema_rule(stage1, tmp_path):
    m = 0.9
    cfg = _stage2_config(stage1, tmp_path, "stage2.momentum", m, "train.max_steps", 1)
    trainer = Trainer(cfg, World())
    target0 = {k: v.clone() for k, v in trainer.task.teacher.encoder.named_parameters()}
    video = trainer.data.picture_batch[:1].repeat(4, 1, 1, 1, 1)
    trainer.train_step(video)
    student = dict(trainer.model.encoder.named_parameters())
    for name, p in trainer.task.teacher.encoder.named_parameters():
        expected = m * target0[name] + (1 - m) * student[name].detach()
        assert torch.allclose(p, expected, atol=1e-6), name
    assert any(not torch.equal(p, target0[n]) for n, p in trainer.task.teacher.encoder.named_parameters())


def test_ablation_switches_build_and_train(stage1, tmp_path):
    cfg = _stage2_config(stage1, tmp_path, "stage2.w_visible", 1.0, "stage2.w_recon", 1.0,
                         "stage2.init_predictor", False, "train.max_steps", 2)
    trainer = Trainer(cfg, World())
    last = trainer.train()
    assert {"loss_pred1", "loss_pred2", "loss_visible", "loss_recon"} <= set(last)


def test_stage2_resume_gives_the_same_losses(stage1, tmp_path):
    base = ["--stage", "2", "--init", str(latest_checkpoint(stage1 / "checkpoints")), "--max-steps", "6",
            "--train.ckpt_every", "3", "--train.keep_checkpoints", "3", "--stage2.momentum", "0.99"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(TINY + base + ["--output_dir", str(full)]) == 0
    shutil.copytree(full, part)
    shutil.rmtree(part / "stage2" / "checkpoints" / "step_00000006")
    lines = (part / "stage2" / "metrics.jsonl").read_text().splitlines()[:3]
    (part / "stage2" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(TINY + base + ["--output_dir", str(part), "--resume"]) == 0
    a = {r["step"]: r for r in records(full / "stage2" / "metrics.jsonl")}
    b = {r["step"]: r for r in records(part / "stage2" / "metrics.jsonl")}
    for step in (4, 5, 6):
        for key in ("loss", "loss_pred1", "loss_pred2", "lr", "mask1_hidden_frac"):
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-6, abs=1e-8), (step, key)


def test_default_init_is_the_newest_stage1_checkpoint(stage1, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stage1, out)
    assert main(TINY + ["--stage", "2", "--max-steps", "2", "--output_dir", str(out)]) == 0
    assert (out / "stage2" / "checkpoints" / "step_00000002").is_dir()


def test_resume_keeps_the_stage1_checkpoint_it_started_from(stage1, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stage1, out)
    assert main(TINY + ["--stage", "2", "--max-steps", "2", "--output_dir", str(out)]) == 0
    started = latest_checkpoint(out / "checkpoints")
    shutil.copytree(started, out / "checkpoints" / "step_00000099")  # Stage 1 trained on meanwhile
    assert main(TINY + ["--stage", "2", "--max-steps", "3", "--output_dir", str(out), "--resume"]) == 0
    meta = load_checkpoint(latest_checkpoint(out / "stage2" / "checkpoints"))
    assert meta["step"] == 3 and meta["task"]["stage1_checkpoint"] == str(started)
    shutil.rmtree(started)
    assert main(TINY + ["--stage", "2", "--max-steps", "4", "--output_dir", str(out), "--resume"]) == 2
    assert f"continues from Stage 1 checkpoint {started}, which is gone" in capsys.readouterr().err
    state = latest_checkpoint(out / "stage2" / "checkpoints") / "state.pt"
    state.write_bytes(state.read_bytes()[:50])
    assert main(TINY + ["--stage", "2", "--max-steps", "4", "--output_dir", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{state.parent} cannot be read" in err


def test_a_resumed_run_takes_the_stage1_checkpoint_it_recorded(stage1, tmp_path, caplog):
    cfg = build_config("tiny", {"train": {"stage": 2}, "output_dir": str(stage1)})
    newest = latest_checkpoint(stage1 / "checkpoints")
    older = tmp_path / "step_00000001"
    shutil.copytree(newest, older)
    assert find_stage1_checkpoint(cfg) == newest  # a fresh run: the newest
    assert find_stage1_checkpoint(cfg, {"stage1_checkpoint": str(older)}) == older
    with caplog.at_level("WARNING", logger="ivn_fast"):
        assert find_stage1_checkpoint(cfg, {}) == newest  # a checkpoint from before the record
    assert "does not record its Stage 1 checkpoint" in caplog.text
    with pytest.raises(CheckpointError, match="which is gone"):
        find_stage1_checkpoint(cfg, {"stage1_checkpoint": str(tmp_path / "step_00000002")})


def test_missing_stage1_says_how_to_make_one(tmp_path, capsys):
    assert main(TINY + ["--stage", "2", "--max-steps", "2", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Stage 1 checkpoint" in err and "train Stage 1 first" in err


def test_checkpoint_of_another_shape_names_the_fields(stage1, tmp_path, capsys):
    init = str(latest_checkpoint(stage1 / "checkpoints"))
    args = TINY + ["--stage", "2", "--init", init, "--max-steps", "2", "--output_dir", str(tmp_path),
                   "--model.encoder.depth", "2", "--model.encoder.embed_dim", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model.encoder.depth" in err and "model.encoder.embed_dim" in err
    assert "model.encoder.num_heads" not in err


def test_stage2_presets_follow_the_paper():
    b = build_config("vit-b", {"train": {"stage": 2}})
    l = build_config("vit-l", {"train": {"stage": 2}})
    assert (b.data.num_frames, b.train.batch_size, b.optim.warmup_steps) == (32, 2048, 0)
    assert b.train.max_steps == 1_100_000 // 2048 * 100 and l.train.batch_size == 1024
    # 1e-4 and 1e-5 per 256 clips, scaled by the batch as the released launcher does
    for cfg, peak in ((b, 8e-4), (l, 4e-4)):
        assert cfg.optim.scale_lr and cfg.optim.lr * cfg.train.batch_size / 256 == pytest.approx(peak)
        assert cfg.optim.min_lr * cfg.train.batch_size / 256 == pytest.approx(peak / 10)
    assert build_config("vit-b").data.num_frames == 16  # Stage 1 untouched
