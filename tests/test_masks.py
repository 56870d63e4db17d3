"""Stage 1 masks: exact visible counts, the sampling law, and clear errors."""

import pytest
import torch

from ivn_fast.masks import (
    make_stage1_mask,
    mask_bool,
    random_mask,
    semantic_mask,
    topk_mask,
    tube_mask,
    visible_per_frame,
)

B, T, L = 3, 4, 49


def _per_frame_counts(vis_idx: torch.Tensor, frames: int, length: int) -> torch.Tensor:
    return torch.stack([((vis_idx // length) == f).sum(-1) for f in range(frames)], dim=-1)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.8, 0.9])
def test_visible_per_frame_follows_the_released_rule(ratio):
    assert visible_per_frame(L, ratio) == L - int(L * ratio)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_range_is_an_error(ratio):
    with pytest.raises(ValueError, match="mask ratio"):
        visible_per_frame(L, ratio)


@pytest.mark.parametrize("kind", ["semantic", "topk", "random", "tube"])
def test_every_kind_keeps_exactly_k_sorted_unique_tokens(kind):
    g = torch.Generator().manual_seed(1)
    attn = torch.rand(B, T, L, generator=g).softmax(-1)
    vis = make_stage1_mask(kind, attn=attn, batch=B, frames=T, tokens_per_frame=L, ratio=0.75, device="cpu",
                           generator=g)
    k = visible_per_frame(L, 0.75)
    assert vis.shape == (B, T * k) and vis.dtype == torch.long
    assert bool((vis[:, 1:] > vis[:, :-1]).all()), "indices must be sorted and unique"
    assert int(vis.min()) >= 0 and int(vis.max()) < T * L
    if kind != "random":  # random draws over the whole clip; the others per frame
        assert bool((_per_frame_counts(vis, T, L) == k).all())


def test_semantic_inclusion_follows_the_attention_weights():
    # one visible token per frame: P(token j) is exactly its weight
    length, draws = 5, 20000
    weights = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    attn = weights.expand(draws, 1, length).contiguous()
    vis = semantic_mask(attn, ratio=0.8, generator=torch.Generator().manual_seed(0))
    assert vis.shape == (draws, 1)
    freq = torch.bincount(vis.flatten(), minlength=length).float() / draws
    assert torch.allclose(freq, weights, atol=0.015), freq
    assert int(freq[-1] * draws) == 0, "a zero-weight token must never be drawn while others remain"


def test_semantic_mask_survives_nan_negative_and_all_zero_rows():
    attn = torch.rand(2, 3, L)
    attn[0, 0] = float("nan")
    attn[0, 1] = 0.0
    attn[1, 2, :10] = -1.0
    vis = semantic_mask(attn, 0.75, generator=torch.Generator().manual_seed(0))
    assert bool((_per_frame_counts(vis, 3, L) == visible_per_frame(L, 0.75)).all())


def test_topk_keeps_the_largest_weights_per_frame():
    attn = torch.rand(B, T, L)
    vis = topk_mask(attn, 0.75)
    k = visible_per_frame(L, 0.75)
    expected = attn.topk(k, dim=-1).indices.sort(-1).values + (torch.arange(T) * L).view(1, T, 1)
    assert torch.equal(vis, expected.reshape(B, T * k))


def test_tube_mask_repeats_the_same_positions_in_every_frame():
    vis = tube_mask(B, T, L, 0.75, generator=torch.Generator().manual_seed(3))
    local = (vis % L).view(B, T, -1)
    assert bool((local == local[:, :1]).all())
    assert not torch.equal(local[0, 0], local[1, 0]), "clips should get different tubes"


def test_random_mask_is_uniform_over_the_clip():
    draws = 4000
    vis = random_mask(draws, 2, 8, 0.75, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(vis.flatten(), minlength=16).float() / draws
    assert torch.allclose(freq, torch.full((16,), 0.25), atol=0.03), freq


def test_masks_repeat_with_the_same_generator_seed():
    attn = torch.rand(B, T, L)
    a = semantic_mask(attn, 0.75, generator=torch.Generator().manual_seed(5))
    b = semantic_mask(attn, 0.75, generator=torch.Generator().manual_seed(5))
    c = semantic_mask(attn, 0.75, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mask_bool_marks_everything_but_the_visible_tokens():
    vis = torch.tensor([[0, 2], [1, 3]])
    assert mask_bool(vis, 4).tolist() == [[False, True, False, True], [True, False, True, False]]


def test_bad_kind_and_bad_attention_shape_are_errors():
    with pytest.raises(ValueError, match="unknown mask kind"):
        make_stage1_mask("blocks", attn=None, batch=1, frames=1, tokens_per_frame=4, ratio=0.5, device="cpu")
    with pytest.raises(ValueError, match="needs the teacher attention"):
        make_stage1_mask("semantic", attn=None, batch=1, frames=1, tokens_per_frame=4, ratio=0.5, device="cpu")
    with pytest.raises(ValueError, match="shape"):
        make_stage1_mask("topk", attn=torch.rand(1, 2, 4), batch=1, frames=1, tokens_per_frame=4, ratio=0.5,
                         device="cpu")
