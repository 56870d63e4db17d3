import math

import pytest
import torch
from torch.distributed.checkpoint.api import CheckpointException

from ivn_fast.config import OptimConfig
from ivn_fast.data.loader import StepBatchSampler
from ivn_fast.train import checkpoint as ckpt
from ivn_fast.train.optim import LRSchedule, param_groups
from ivn_fast.train.checkpoint import config_diff


def take(it, n):
    return [next(it) for _ in range(n)]


def test_sampler_epochs_are_permutations_and_resume_is_exact():
    s = StepBatchSampler(10, 4, seed=3)
    stream = sum(take(iter(s), 15), [])  # 60 clips: exactly 6 epochs, batches straddling epoch ends
    for e in range(6):
        assert sorted(stream[10 * e:10 * e + 10]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a fresh order each epoch
    batches = take(iter(s), 6)
    assert take(iter(StepBatchSampler(10, 4, seed=3, start_step=3)), 3) == batches[3:6]
    assert take(iter(StepBatchSampler(10, 4, seed=4)), 2) != batches[:2]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_never_share_or_drop_a_clip_in_an_epoch(world):
    n, global_batch, steps = 50, 12, 25  # 300 clips read: exactly 6 epochs
    per_rank = [take(iter(StepBatchSampler(n, global_batch, rank=r, world=world, seed=1)), steps)
                for r in range(world)]
    full = take(iter(StepBatchSampler(n, global_batch, seed=1)), steps)
    stream = []
    for step in range(steps):
        assert sum((per_rank[r][step] for r in range(world)), []) == full[step]  # same global batch
        stream += full[step]
    for e in range(6):
        assert sorted(stream[n * e:n * e + n]) == list(range(n))  # every clip once per epoch


def test_epoch_keys_carry_the_epoch_of_each_clip():
    keys = sum(take(iter(StepBatchSampler(10, 4, seed=0, epoch_keys=True)), 5), [])
    assert [k // 10 for k in keys] == [0] * 10 + [1] * 10


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


def _save(root, step, keep=2):
    return ckpt.save_checkpoint(root, step, tensors={"model": {"w": torch.full((3, 2), float(step))}},
                                meta={"step": step, "config": {}}, local={"rng": ckpt.rng_state()}, keep=keep)


def test_checkpoints_are_atomic_and_pruned(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    latest = ckpt.latest_checkpoint(tmp_path)
    state = ckpt.load_checkpoint(latest)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.full((3, 2), 3.0))
    assert ckpt.load_local(latest, 0) is not None and ckpt.load_local(latest, 1) is None

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointException):  # DCP's wrapper of the OSError
        _save(tmp_path, 4)
    # the interrupted save left no complete-looking checkpoint behind, and the next save clears it away
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003"
    assert [p.name for p in tmp_path.glob(".tmp_*")] == [".tmp_step_00000004"]
    monkeypatch.undo()
    _save(tmp_path, 5)
    assert not list(tmp_path.glob(".tmp_*")) and ckpt.latest_checkpoint(tmp_path).name == "step_00000005"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.load_checkpoint(tmp_path / "step_00000009")


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
