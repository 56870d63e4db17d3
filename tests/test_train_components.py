import math

import torch

from ivn_fast.config import OptimConfig
from ivn_fast.data.loader import StepBatchSampler
from ivn_fast.train import checkpoint as ckpt
from ivn_fast.train.optim import LRSchedule, param_groups
from ivn_fast.train.checkpoint import config_diff


def take(it, n):
    return [next(it) for _ in range(n)]


def test_sampler_epochs_are_permutations_and_resume_is_exact():
    s = StepBatchSampler(10, 4, seed=3)
    batches = take(iter(s), 6)  # 2 batches per epoch (the last 2 clips of each epoch are dropped)
    assert all(len(b) == 4 for b in batches)
    for e in range(3):
        epoch = batches[2 * e] + batches[2 * e + 1]
        assert len(set(epoch)) == 8
    resumed = take(iter(StepBatchSampler(10, 4, seed=3, start_step=3)), 3)
    assert resumed == batches[3:6]
    assert take(iter(StepBatchSampler(10, 4, seed=4)), 2) != batches[:2]


def test_sampler_ranks_split_the_global_batch():
    full = take(iter(StepBatchSampler(64, 8, seed=0)), 8)
    parts = [take(iter(StepBatchSampler(64, 8, rank=r, world=2, seed=0)), 8) for r in range(2)]
    for i in range(8):
        assert parts[0][i] + parts[1][i] == full[i]
        assert not set(parts[0][i]) & set(parts[1][i])


def test_lr_schedule_shape():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=10, scale_lr=True)
    s = LRSchedule(cfg, max_steps=110, global_batch=512)  # scaled by 512 / 256 = 2
    assert math.isclose(s(0), 2e-6) and math.isclose(s(5), 2e-6 + (2e-3 - 2e-6) / 2)
    assert math.isclose(s(10), 2e-3) and math.isclose(s(60), (2e-3 + 2e-5) / 2) and math.isclose(s(110), 2e-5)
    assert all(s(i) >= s(i + 1) for i in range(10, 110))


def test_no_decay_groups():
    m = torch.nn.Module()
    m.lin = torch.nn.Linear(3, 3)
    m.norm = torch.nn.LayerNorm(3)
    m.pos_embed = torch.nn.Parameter(torch.zeros(5, 3))
    decay, no_decay = param_groups(m, 0.05)
    assert [p.shape for p in decay["params"]] == [(3, 3)] and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


def test_checkpoints_are_atomic_and_pruned(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 3

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    try:
        ckpt.save_checkpoint(tmp_path, 4, {"step": 4}, keep=2)
    except OSError:
        pass
    # the interrupted save left no complete-looking checkpoint behind
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003"


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = torch.rand(3)
    ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_config_diff_names_fields():
    a = {"model": {"encoder": {"depth": 12, "embed_dim": 768}}, "train": {"max_steps": 5, "batch_size": 8}}
    b = {"model": {"encoder": {"depth": 6, "embed_dim": 768}}, "train": {"max_steps": 9, "batch_size": 8}}
    assert config_diff(a, b) == ["model.encoder.depth"]


def test_run_shorter_than_its_warmup_warms_up_over_its_length():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=30, scale_lr=False)
    schedule = LRSchedule(cfg, max_steps=10, global_batch=8)
    lrs = [schedule(s) for s in range(10)]
    assert lrs == sorted(lrs) and lrs[0] == 1e-6 and lrs[-1] < 1e-3
    assert schedule(10) == 1e-3  # the peak is reached where the run ends
