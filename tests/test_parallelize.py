"""Speed-ups applied from outside the model: activation checkpointing changes memory, not maths."""

import copy

import pytest
import torch

from bench.memory import SavedBytes
from ivn_fast.config import build_config
from ivn_fast.models.stage1 import Stage1Model
from ivn_fast.train.parallelize import checkpoint_blocks, repeated_blocks
from ivn_fast.train.stage1 import token_grid


def _model_and_batch():
    cfg = build_config("tiny", {"data": {"num_frames": 4}, "model": {"encoder": {"drop_path": 0.2}}})
    grid = token_grid(cfg)
    torch.manual_seed(0)
    model = Stage1Model(cfg.model, grid, teacher_width=64, teacher_final_width=32)
    b, n = 2, grid[0] * grid[1] * grid[2]
    video = torch.randn(b, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size)
    vis_idx = torch.rand(b, n).argsort(dim=1)[:, : n // 5].sort(dim=1).values
    return model, video, vis_idx


def _loss_and_grads(model, video, vis_idx):
    torch.manual_seed(1)  # drop-path and the decoder's t and noise
    out = model(video, vis_idx)
    loss = out.recon + out.mid.sum() * 0.01 + out.final.sum() * 0.01
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("mode", ["full", "selective", "op"])
def test_checkpointing_gives_the_same_loss_and_gradients(mode):
    model, video, vis_idx = _model_and_batch()
    wrapped = copy.deepcopy(model)
    blocks = len(list(repeated_blocks(wrapped)))
    count = checkpoint_blocks(wrapped, mode)
    assert count == ((blocks + 1) // 2 if mode == "selective" else blocks)
    assert list(wrapped.state_dict()) == list(model.state_dict())  # names unchanged
    ref, ref_grads = _loss_and_grads(model.train(), video, vis_idx)
    got, got_grads = _loss_and_grads(wrapped.train(), video, vis_idx)
    assert torch.equal(got, ref)
    for a, r in zip(got_grads, ref_grads):
        assert (a is None) == (r is None)
        if r is not None:
            assert torch.allclose(a, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["full", "op"])
def test_checkpointed_blocks_still_compile(mode):
    """Checkpointing comes before per-block compile; the compiled blocks must trace through it
    (no graph breaks, graphs captured) and give the eager loss and gradients."""
    import torch._dynamo

    from ivn_fast.train.parallelize import compile_blocks

    model, video, vis_idx = _model_and_batch()
    wrapped = copy.deepcopy(model)
    checkpoint_blocks(wrapped, mode)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compile_blocks(wrapped, backend="aot_eager")
    ref, ref_grads = _loss_and_grads(model.train(), video, vis_idx)
    got, got_grads = _loss_and_grads(wrapped.train(), video, vis_idx)
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= 3, dict(counters["stats"])  # encoder, predictor, decoder blocks
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert torch.allclose(got, ref, rtol=1e-6)
    for a, r in zip(got_grads, ref_grads):
        if r is not None:
            assert torch.allclose(a, r, rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()


def test_bad_mode_is_an_error():
    model, _, _ = _model_and_batch()
    with pytest.raises(ValueError, match="none, full, selective, op"):
        checkpoint_blocks(model, "some")


def test_blocks_of_different_drop_path_rates_share_one_graph():
    import torch._dynamo

    from ivn_fast.config import EncoderConfig
    from ivn_fast.models.encoder import VideoEncoder
    from ivn_fast.train.parallelize import compile_blocks

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    encoder = VideoEncoder(EncoderConfig(embed_dim=32, depth=12, num_heads=2, drop_path=0.3), (2, 2, 2)).train()
    assert compile_blocks(encoder, backend="eager") == 12
    encoder(torch.randn(2, 3, 2, 28, 28)).tokens.sum().backward()
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # rate 0 and rate > 0
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def test_memory_budget_makes_compiled_blocks_save_less():
    """`budget`: the compiler's partitioner recomputes within each block until what it saves fits,
    with the eager loss and gradients."""
    import torch._dynamo

    from ivn_fast.train.parallelize import compile_blocks, set_memory_budget

    model, video, vis_idx = _model_and_batch()
    ref, ref_grads = _loss_and_grads(model.train(), video, vis_idx)
    saved = {}
    for budget in (1.0, 0.1):
        wrapped = copy.deepcopy(model)
        assert checkpoint_blocks(wrapped, "budget") == 0
        set_memory_budget(budget)
        torch._dynamo.reset()
        compile_blocks(wrapped, backend="aot_eager_decomp_partition")  # inductor's partitioner, no C++ build
        recorder = SavedBytes(wrapped, depth=1)
        try:
            with recorder.recording():
                got, got_grads = _loss_and_grads(wrapped.train(), video, vis_idx)
        finally:
            set_memory_budget(1.0)
            torch._dynamo.reset()
        saved[budget] = sum(recorder.by_module.values())
        assert torch.allclose(got, ref, rtol=1e-5)
        for a, r in zip(got_grads, ref_grads):
            if r is not None:
                assert torch.allclose(a, r, rtol=1e-4, atol=1e-6)
    assert saved[0.1] < 0.8 * saved[1.0], saved
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_memory_budget(1.5)
