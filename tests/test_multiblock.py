"""Stage 2 multi-block masks against their specification."""

import pytest
import torch

from ivn_fast.masks import mask_bool
from ivn_fast.masks.multiblock import BlockSpec, block_size, multiblock_mask

GRID = (16, 16, 16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_size_matches_scale_and_aspect(seed):
    g = torch.Generator().manual_seed(seed)
    for spec in (BlockSpec(8, 0.15), BlockSpec(2, 0.7)):
        h, w = block_size(spec, 16, 16, torch.device("cpu"), g)
        assert abs(h * w - 0.15 * 256 if spec.scale == 0.15 else h * w - 0.7 * 256) <= 0.25 * spec.scale * 256
        assert 0.75 * 0.7 <= h / w <= 1.5 / 0.7  # rounding widens the ratio range a little


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_views_follow_the_released_statistics(seed):
    g = torch.Generator().manual_seed(seed)
    small = multiblock_mask(BlockSpec(8, 0.15), 16, GRID, generator=g)
    large = multiblock_mask(BlockSpec(2, 0.7), 16, GRID, generator=g)
    for view in (small, large):
        vis = view.vis_idx
        assert bool((vis[:, 1:] > vis[:, :-1]).all())
        assert vis.shape[1] <= 400 * 16 // 8
        assert view.masked_frac == pytest.approx(1 - vis.shape[1] / 4096)
    # about 80% hidden for the 8-block view, about 90% for the 2-block view (DESIGN.md section 2)
    assert 0.7 < small.masked_frac < 0.9 and 0.8 < large.masked_frac < 0.99


def test_same_spatial_pattern_in_every_frame_before_truncation():
    view = multiblock_mask(BlockSpec(8, 0.15), 4, (4, 8, 8), max_keep_per_8=None, generator=torch.Generator())
    hidden = mask_bool(view.vis_idx, 256).view(4, 4, 64)
    # the batch minimum cuts the latest frames first: frame 0 keeps every context position of the clip
    full = ~hidden[:, 0]
    for f in range(1, 4):
        assert bool(((~hidden[:, f]) <= full).all())


def test_earliest_truncation_keeps_the_lowest_indices():
    g = torch.Generator().manual_seed(0)
    view = multiblock_mask(BlockSpec(8, 0.15), 8, GRID, generator=g)
    k = view.vis_idx.shape[1]
    for row in view.vis_idx:
        pattern = (row[row < 256]).tolist()  # frame 0 keeps the clip's whole spatial context
        assert k >= len(pattern)
        every = torch.tensor([f * 256 + p for f in range(16) for p in pattern])
        assert torch.equal(row, every[:k])
    assert (view.vis_idx // 256 >= 12).float().mean() < 0.05


def test_uniform_truncation_spreads_over_time():
    g = torch.Generator().manual_seed(0)
    view = multiblock_mask(BlockSpec(8, 0.15), 8, GRID, truncation="uniform", generator=g)
    frames = view.vis_idx // 256
    assert (frames >= 12).float().mean() > 0.15


def test_errors():
    with pytest.raises(ValueError, match="truncation"):
        multiblock_mask(BlockSpec(8, 0.15), 2, GRID, truncation="latest")
    with pytest.raises(ValueError, match="scale"):
        multiblock_mask(BlockSpec(8, 0.0), 2, GRID)
    with pytest.raises(RuntimeError, match="no context"):
        multiblock_mask(BlockSpec(4, 1.0, (1.0, 1.0)), 2, (2, 4, 4), max_tries=3)
