"""End to end: the entry point trains, logs, checkpoints, draws, and resumes exactly."""

import json
import math
import shutil
import subprocess
import sys

import pytest

from ivn_fast.pretrain import main

TINY = ["--train.progress", "false", "--train.tensorboard", "false", "--data.num_workers", "0",
        "--data.synthetic_videos", "64", "--train.batch_size", "4", "--model.encoder.depth", "3",
        "--model.teacher.num_layers", "2", "--model.decoder.sampling_steps", "5", "--train.log_every", "1",
        "--optim.warmup_steps", "2"]


def losses(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_twenty_steps_loss_falls_and_outputs_exist(tmp_path):
    out = tmp_path / "run"
    assert main(TINY + ["--max-steps", "20", "--output_dir", str(out), "--train.ckpt_every", "10"]) == 0
    records = losses(out)
    assert [r["step"] for r in records] == list(range(1, 21))
    for key in ("loss", "loss_mid", "loss_final", "loss_recon", "lr", "clips_per_s"):
        assert key in records[0]
    first = sum(r["loss"] for r in records[:4]) / 4
    last = sum(r["loss"] for r in records[-4:]) / 4
    assert last < first, (first, last)
    assert (out / "recon.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]


def test_kill_and_resume_gives_the_same_losses(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    args = TINY + ["--max-steps", "8", "--train.ckpt_every", "5", "--train.keep_checkpoints", "3"]
    assert main(args + ["--output_dir", str(full)]) == 0
    # a run killed right after its step-5 checkpoint: same directory, later state gone
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000008")
    lines = (part / "metrics.jsonl").read_text().splitlines()[:5]
    (part / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(args + ["--output_dir", str(part), "--resume"]) == 0
    a = {r["step"]: r for r in losses(full)}
    b = {r["step"]: r for r in losses(part)}
    assert sorted(b) == list(range(1, 9))
    for step in (6, 7, 8):
        for key in ("loss", "loss_mid", "loss_final", "loss_recon", "lr"):
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-6, abs=1e-8), (step, key)


def test_resume_refuses_other_shapes_and_damage_and_names_schedule_changes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--max-steps", "2", "--output_dir", str(out)]) == 0
    config = (out / "config.json").read_text()
    assert main(TINY + ["--max-steps", "4", "--output_dir", str(out), "--resume", "--model.encoder.depth", "2"]) == 2
    err = capsys.readouterr().err
    assert "model.encoder.depth" in err and "model.teacher.num_layers" not in err
    assert (out / "config.json").read_text() == config  # the refused run's config is not recorded
    # without --resume, an earlier run's checkpoints are neither continued nor pruned away
    assert main(TINY + ["--max-steps", "4", "--output_dir", str(out)]) == 2
    assert "holds an earlier run's checkpoints (newest step_00000002): pass --resume" in capsys.readouterr().err
    last = (out / "train.log").read_text().splitlines()[-1]  # the log says why the run stopped
    assert " ERROR " in last and last.endswith("pass --resume to continue it, or another --output_dir to start afresh")
    assert main(TINY + ["--max-steps", "3", "--output_dir", str(out), "--resume", "--optim.lr", "0.01"]) == 0
    assert "resuming with optim.lr = 0.01 (the checkpoint's run had 0.0015)" in (out / "train.log").read_text()
    shard = next((out / "checkpoints" / "step_00000003").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(TINY + ["--max-steps", "4", "--output_dir", str(out), "--resume", "--optim.lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step_00000003 cannot be read" in err and "move it aside" in err


def test_a_non_finite_step_is_skipped_counted_and_left_out_of_the_averages(tmp_path, monkeypatch):
    from ivn_fast.train.stage1 import Stage1Task

    real, calls = Stage1Task.losses, []

    def third_is_nan(self, model, video):
        terms = real(self, model, video)
        calls.append(None)
        if len(calls) == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Stage1Task, "losses", third_is_nan)
    out = tmp_path / "run"
    assert main(TINY + ["--max-steps", "6", "--train.log_every", "2", "--output_dir", str(out)]) == 0
    log = (out / "train.log").read_text()
    assert "step 3: non-finite loss or gradient on some rank, update skipped (1 so far)" in log

    def strict(token):
        raise AssertionError(f"{token} is not JSON")

    records = [json.loads(line, parse_constant=strict) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"]) for r in records] == [(2, 0), (4, 1), (6, 1)]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)


def test_profile_writes_a_trace_and_the_top_operators(tmp_path):
    out = tmp_path / "run"
    assert main(TINY + ["--max-steps", "7", "--output_dir", str(out), "--profile"]) == 0
    trace = json.loads((out / "profile" / "trace.json").read_text())
    assert trace["traceEvents"], "empty trace"
    table = (out / "profile" / "top_ops.txt").read_text()
    assert "aten::" in table and "Self CPU" in table


def test_synthetic_training_and_probing_need_no_video_decoder():
    """GPU machines without PyAV (or DALI) still train and probe on the built-in set."""
    code = ("import sys; sys.modules['av'] = None\n"
            "import ivn_fast.train.trainer, ivn_fast.probe, ivn_fast.data.build\n"
            "from ivn_fast.config import build_config\n"
            "from ivn_fast.data.build import build_train_data\n"
            "import torch\n"
            "data = build_train_data(build_config('tiny', {'data': {'num_workers': 0}}), rank=0, world=1, "
            "start_step=0, device=torch.device('cpu'))\n"
            "print(tuple(next(iter(data.batches))['video'].shape))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(8, 3, 8, 112, 112)"


def test_log_line_names_terms_and_gpu_memory():
    from ivn_fast.train.metrics import format_line

    record = {"step": 20, "loss": 1.5, "loss_mid": 0.5, "loss_recon": 1.0, "lr": 1e-3, "grad_norm": 2.0,
              "clips_per_s": 45.25, "data_wait_frac": 0.031}
    line = format_line(record, 300)
    assert line == "step 20/300 | loss 1.5000 (mid 0.5000 recon 1.0000) | lr 1.00e-03 | grad 2.00 | 45.2 clips/s | data 3%"
    assert format_line({**record, "peak_mem_gb": 41.27}, 300).endswith("| peak 41.3 GB")
    skipped = format_line({**record, "loss": None, "skipped_steps": 3}, 300)
    assert "every step of this window skipped" in skipped and skipped.endswith("| skipped 3")
