"""FSDP2 on CPU (gloo): 2 processes train exactly like 1 on the same global batch, and a sharded
checkpoint written by 2 processes resumes on 1."""

import json
import os

import pytest
import torch
import torch.distributed as dist

from ivn_fast.config import build_config
from ivn_fast.models.stage1 import Stage1Model
from ivn_fast.train import checkpoint as ckpt
from ivn_fast.train.distributed import sum_over_ranks
from ivn_fast.train.parallelize import shard_model
from ivn_fast.train.stage1 import token_grid
from launch import torchrun as launch

# no random draw anywhere in the step (top-k masks from the fixed teacher, a regression decoder,
# no drop-path), so the two layouts see identical maths up to the order of float reductions
DETERMINISTIC = ["--mask.kind", "topk", "--model.decoder.kind", "linear", "--data.num_frames", "4",
                 "--data.size", "56", "--data.synthetic_videos", "64", "--data.num_workers", "0",
                 "--train.batch_size", "4", "--train.max_steps", "4", "--train.ckpt_every", "2",
                 "--train.log_every", "1", "--train.progress", "false", "--train.tensorboard", "false"]
TOLERANCE = 1e-5  # relative, on each step's loss and gradient norm


def torchrun(nproc: int, out_dir, *extra: str) -> list[dict]:
    launch("ivn_fast.pretrain", nproc, *DETERMINISTIC, "--output_dir", str(out_dir), *extra)
    sub = "stage2" if "--stage" in extra else ""
    return [json.loads(line) for line in (out_dir / sub / "metrics.jsonl").read_text().splitlines()]


def _close(a: list[dict], b: list[dict], key: str) -> bool:
    return all(abs(x[key] - y[key]) <= TOLERANCE * abs(y[key]) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    one = torchrun(1, root / "one")
    two = torchrun(2, root / "two", "--train.shard_teacher", "true")  # same maths, teacher in 6 + 1 shards
    # resume on 1 process from the 2-process checkpoint at step 2
    resumed = root / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    os.rename(root / "two" / "checkpoints" / "step_00000002", resumed / "checkpoints" / "step_00000002")
    after = torchrun(1, resumed, "--resume")
    return root, one, two, after


def test_two_processes_match_one(runs):
    root, one, two, _ = runs
    assert "FSDP2 over 2 processes: 12 student units, 7 teacher units" in (root / "two" / "train.log").read_text()
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    assert _close(two, one, "loss") and _close(two, one, "grad_norm")
    assert one[-1]["loss"] < one[0]["loss"]


def test_sharded_checkpoint_resumes_on_one_process(runs):
    root, one, _, after = runs
    assert [r["step"] for r in after] == [3, 4]
    assert _close(after, one[2:], "loss") and _close(after, one[2:], "grad_norm")
    written = ckpt.latest_checkpoint(root / "two" / "checkpoints")
    assert sorted(p.name for p in written.iterdir() if p.suffix == ".distcp") == ["__0_0.distcp", "__1_0.distcp"]
    assert ckpt.load_meta(written)["world_size"] == 2


def test_stage2_ema_target_is_sharded_and_checkpointed(runs):
    root, *_ = runs
    stage1 = ckpt.latest_checkpoint(root / "one" / "checkpoints")
    extra = ("--stage", "2", "--stage2.init", str(stage1), "--stage2.momentum", "0.9", "--train.max_steps", "2")
    records = torchrun(2, root / "stage2", *extra)
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == r["loss"] for r in records)
    saved = ckpt.latest_checkpoint(root / "stage2" / "stage2" / "checkpoints")
    target = ckpt.load_full(saved, "ema_target")
    start = ckpt.load_checkpoint(stage1)["model"]
    name = "encoder.blocks.0.mlp.fc1.weight"
    assert target[name].shape == start[name].shape and not torch.equal(target[name], start[name])


@pytest.mark.parametrize("fp32", [True, False])
def test_diffusion_head_precision_under_bf16_sharding(tmp_path, fp32):
    """One-process gloo group: blocks compute with bf16 weights; the diffusion head with float32
    ones, or (fp32 false) with bf16 ones and its float32 residual stream left uncast. The clip
    reaches the model uncast, so its pixel targets are the unsharded run's."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cfg = build_config("tiny", {"data": {"num_frames": 2, "size": 28}, "model": {"decoder": {"fp32": fp32}}})
        model = Stage1Model(cfg.model, token_grid(cfg), teacher_width=64, teacher_final_width=32)
        assert shard_model(model, torch.bfloat16) > len(model.encoder.blocks)
        seen = {}
        for name, module in (("root", model), ("encoder", model.encoder.blocks[0]),
                             ("decoder", model.decoder.net.blocks[0])):
            module.register_forward_pre_hook(
                lambda m, args, name=name: seen.__setitem__(name, (next(m.parameters()).dtype, args[0].dtype)))
        video = torch.randn(2, 3, 2, 28, 28)
        vis_idx = torch.arange(0, 8, 2).expand(2, -1).contiguous()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(video, vis_idx)
        out.recon.backward()
        assert seen["encoder"][0] == torch.bfloat16 and seen["root"][1] == torch.float32
        assert seen["decoder"] == ((torch.float32, torch.float32) if fp32 else (torch.bfloat16, torch.float32))
        assert all(p.grad is not None and p.grad.dtype == torch.float32
                   for p in model.decoder.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()


def _sum_worker(rank: int, init: str, out) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        out.put((rank, sum_over_ranks([rank + 1, 10 * rank])))
    finally:
        dist.destroy_process_group()


def test_counts_are_summed_over_processes(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_sum_worker, args=(r, f"file://{tmp_path / 'pg'}", out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {0: [3, 10], 1: [3, 10]}
    assert sum_over_ranks([4, 5]) == [4, 5]  # no process group: this process's own counts
