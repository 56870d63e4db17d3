"""Frame sampling against hand-computed cases, and the crop geometry of training and test views."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ivn_fast.config import ASSETS
from ivn_fast.data.augment import SCALES, Crop, cut, fixed_offsets, multiscale_crop, view_crop
from ivn_fast.data.sampling import clip_indices, dense_indices, sparse_indices
from ivn_fast.data.transforms import denormalize
from ivn_fast.models.teacher import SemanticTeacher


def test_sparse_one_frame_per_segment():
    # 30 frames, 4 segments of 7.5: floor((i + u_i) * 7.5)
    assert sparse_indices(30, 4, np.array([0.0, 0.99, 0.5, 0.25])).tolist() == [0, 14, 18, 24]
    assert clip_indices(30, 4).tolist() == [3, 11, 18, 26]  # test time: segment centres
    # 3 temporal views of 40 frames: positions 1/4, 2/4, 3/4 of each 10-frame segment
    views = [clip_indices(40, 4, view=v, views=3).tolist() for v in range(3)]
    assert views == [[2, 12, 22, 32], [5, 15, 25, 35], [7, 17, 27, 37]]


def test_sparse_training_draws_within_each_segment_reproducibly():
    for seed in range(20):
        a = clip_indices(50, 8, rng=np.random.default_rng(seed))
        assert a.tolist() == clip_indices(50, 8, rng=np.random.default_rng(seed)).tolist()
        for i, k in enumerate(a):
            assert i * 50 // 8 <= k < (i + 1) * 50 / 8


def test_dense_windows_and_test_views():
    assert dense_indices(100, 4, 4, 10).tolist() == [10, 14, 18, 22]
    assert clip_indices(100, 4, mode="dense", stride=4).tolist() == [43, 47, 51, 55]  # (100 - 13) // 2
    views = [clip_indices(100, 4, mode="dense", stride=4, view=v, views=3)[0] for v in range(3)]
    assert views == [0, 44, 87]
    for seed in range(10):
        a = clip_indices(100, 4, mode="dense", stride=4, rng=np.random.default_rng(seed))
        assert np.all(np.diff(a) == 4) and 0 <= a[0] and a[-1] <= 99


def test_short_videos_are_padded_by_the_documented_rules():
    assert clip_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # sparse: frames repeat in order
    assert clip_indices(5, 4, mode="dense", stride=2).tolist() == [0, 2, 4, 4]  # dense: last frame repeats
    assert clip_indices(1, 4, rng=np.random.default_rng(0)).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        clip_indices(0, 4)


def test_fixed_offsets_are_the_thirteen_grid_positions():
    offsets = fixed_offsets(240, 320, 160, 160)  # steps 20 (rows) and 40 (columns)
    assert len(offsets) == 13 and len(set(offsets)) == 13
    assert {(0, 0), (0, 160), (80, 0), (80, 160), (40, 80), (20, 40), (60, 120)} <= set(offsets)


def test_multiscale_crop_sizes_pairs_offsets_and_flip():
    h, w, size = 240, 320, 224
    sides = [int(240 * s) for s in SCALES]  # 240, 210, 180, 158
    rng = np.random.default_rng(0)
    seen, flips = set(), 0
    for _ in range(600):
        c = multiscale_crop(h, w, size, rng)
        i, j = sides.index(c.height), sides.index(c.width)
        assert abs(i - j) <= 1
        assert (c.top, c.left) in fixed_offsets(h, w, c.height, c.width)
        seen.add((c.height, c.width))
        flips += c.flip
    assert len(seen) == 10 and 240 < flips < 360
    assert not any(multiscale_crop(h, w, size, rng, flip=False).flip for _ in range(50))
    # a side within 3 px of the input size snaps to it
    assert {multiscale_crop(226, 226, 224, rng).height for _ in range(200)} == {224, 197, 169, 149}
    # a frame 1 px high still gives a crop to resize (int(1 * 0.875) would be none)
    thin = [multiscale_crop(1, 16, 112, rng) for _ in range(50)]
    assert all(c.height == 1 and 1 <= c.width <= 16 for c in thin)
    assert cut(torch.zeros(2, 1, 16, 3, dtype=torch.uint8), thin[0], 8).shape == (3, 2, 8, 8)


def test_view_crops_slide_along_the_longer_side():
    assert [view_crop(240, 320, v, 3) for v in range(3)] == [Crop(0, 0, 240, 240), Crop(0, 40, 240, 240),
                                                             Crop(0, 80, 240, 240)]
    assert view_crop(320, 240) == Crop(40, 0, 240, 240)


def test_cut_crops_resizes_flips_and_normalises():
    t, h, w = 3, 40, 60
    xx = torch.arange(w).view(1, 1, w).expand(t, h, w)
    frames = torch.stack([xx * 4, torch.full_like(xx, 128), torch.full_like(xx, 30)], -1).to(torch.uint8)
    left = cut(frames, Crop(0, 0, 40, 30), 16)
    right = cut(frames, Crop(0, 30, 40, 30), 16)
    assert left.shape == (3, t, 16, 16) and left.dtype == torch.float32
    px = denormalize(left, channel_dim=0)
    assert float(px.min()) >= -1e-6 and float(px.max()) <= 1 + 1e-6
    assert float(px[1].mean()) == pytest.approx(128 / 255, abs=1 / 255)
    assert float(left[0].mean()) < float(right[0].mean())  # red rises to the right
    flipped = cut(frames, Crop(0, 0, 40, 30, flip=True), 16)
    assert torch.equal(flipped, left.flip(-1))


def test_teacher_resizes_the_students_own_crop():
    """The teacher takes the student's clip and resizes it itself: one crop serves both."""
    teacher = SemanticTeacher.from_pretrained(str(ASSETS / "tiny_siglip"), num_layers=1)
    frames = torch.randint(0, 256, (2, 50, 70, 3), dtype=torch.uint8)
    clip = cut(frames, Crop(5, 10, 40, 50), 112)[None]  # [1, 3, 2, 112, 112]
    grid = (8, 8)  # 112 / 14
    expected = F.interpolate(clip[0].permute(1, 0, 2, 3), size=(128, 128), mode="bicubic", align_corners=False)
    assert torch.allclose(teacher._frames(clip, grid), expected * teacher.scale + teacher.shift, atol=1e-6)
