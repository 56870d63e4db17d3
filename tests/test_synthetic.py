"""The built-in synthetic set: deterministic, balanced, normalised, sized as asked."""

from collections import Counter

import pytest
import torch

from ivn_fast.data.synthetic import DIRECTIONS, SHAPES, SPEEDS, SyntheticVideos
from ivn_fast.data.transforms import denormalize


def test_clips_are_a_pure_function_of_seed_and_index():
    a, b = SyntheticVideos(10, 4, 32, seed=0), SyntheticVideos(10, 4, 32, seed=0)
    assert torch.equal(a[3]["video"], b[3]["video"])
    assert not torch.equal(a[3]["video"], a[4]["video"])
    assert not torch.equal(a[3]["video"], SyntheticVideos(10, 4, 32, seed=1)[3]["video"])


@pytest.mark.parametrize("frames,size", [(1, 28), (8, 56), (5, 70)])
def test_shape_and_pixel_range(frames, size):
    item = SyntheticVideos(4, frames, size)[2]
    assert item["video"].shape == (3, frames, size, size)
    pixels = denormalize(item["video"], channel_dim=0)
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5


def test_labels_are_balanced_over_a_block():
    combos = len(SHAPES) * len(DIRECTIONS) * len(SPEEDS)
    ds = SyntheticVideos(2 * combos, 2, 16)
    labels = [ds.labels(i) for i in range(2 * combos)]
    assert len({(d["shape"], d["direction"], d["speed"]) for d in labels[:combos]}) == combos
    for key, names in (("shape", SHAPES), ("direction", DIRECTIONS), ("speed", SPEEDS)):
        counts = Counter(d[key] for d in labels)
        assert set(counts) == set(range(len(names)))
        assert len(set(counts.values())) == 1, (key, counts)


def test_the_object_moves_in_its_labelled_direction():
    ds = SyntheticVideos(300, 8, 64)
    for i in range(0, 300, 7):
        item = ds[i]
        if SPEEDS[item["speed"]] == "slow":
            continue
        video = denormalize(item["video"], channel_dim=0)
        # the object is wherever frames differ from the median over time of a static background
        diff = (video - video.median(dim=1, keepdim=True).values).abs().sum(0)  # [T, H, W]
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        w0, w1 = diff[0], diff[-1]
        c0 = torch.stack([(w0 * xs).sum(), (w0 * ys).sum()]) / w0.sum()
        c1 = torch.stack([(w1 * xs).sum(), (w1 * ys).sum()]) / w1.sum()
        move = c1 - c0
        angle = torch.atan2(-move[1], move[0])  # rows grow downwards, north is up
        expected = torch.tensor(item["direction"] * torch.pi / 4)
        err = torch.atan2(torch.sin(angle - expected), torch.cos(angle - expected)).abs()
        assert float(err) < 0.5, (i, DIRECTIONS[item["direction"]], float(angle))


def test_bad_sizes_and_indices_are_errors():
    with pytest.raises(ValueError):
        SyntheticVideos(0, 8, 32)
    with pytest.raises(IndexError):
        SyntheticVideos(4, 2, 16)[4]
