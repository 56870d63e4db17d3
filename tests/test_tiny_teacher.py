"""The shipped tiny SigLIP teacher is semantic: its features name shapes and its pooling looks at the object."""

import json

import torch

from ivn_fast.config import ASSETS
from ivn_fast.data.synthetic import SHAPES, SyntheticVideos
from ivn_fast.data.transforms import denormalize
from ivn_fast.models.teacher import SemanticTeacher

PATH = ASSETS / "tiny_siglip"


def _batch(ds: SyntheticVideos, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in indices]
    return torch.stack([it["video"] for it in items]), torch.tensor([it["shape"] for it in items])


def test_report_records_a_high_held_out_accuracy():
    report = json.loads((PATH / "report.json").read_text())
    assert report["val_accuracy"] >= 0.75, report


@torch.no_grad()
def test_teacher_features_separate_shapes_and_attention_finds_the_object():
    teacher = SemanticTeacher.from_pretrained(str(PATH), num_layers=3, student_depth=6)
    ds = SyntheticVideos(num_videos=144, num_frames=2, size=112, seed=123)
    video, shapes = _batch(ds, range(144))
    out = teacher(video, (8, 8))
    feats = torch.nn.functional.normalize(out.final, dim=-1)
    # nearest class mean: means from the first half, accuracy on the second
    train, test = slice(0, 96), slice(96, 144)
    means = torch.stack([feats[train][shapes[train] == c].mean(0) for c in range(len(SHAPES))])
    predicted = (feats[test] @ means.T).argmax(-1)
    accuracy = (predicted == shapes[test]).float().mean().item()
    assert accuracy > 0.7, accuracy

    # the pooling head's attention puts more mass on the object's patches than their share of the frame
    pixels = denormalize(video, channel_dim=1)  # [B, 3, T, H, W]
    background = pixels.median(dim=-1, keepdim=True).values.median(dim=-2, keepdim=True).values
    obj = (pixels - background).abs().sum(1) > 0.3  # [B, T, H, W]
    obj_patches = obj.unflatten(2, (8, 14)).unflatten(4, (8, 14)).float().mean((3, 5)).flatten(2) > 0.2
    share = obj_patches.float().mean()
    mass = (out.attn * obj_patches).sum(-1).mean()
    assert mass > 2 * share, (float(mass), float(share))
