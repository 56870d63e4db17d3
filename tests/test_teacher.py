import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    Siglip2VisionConfig,
    Siglip2VisionModel,
)
from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

from ivn_fast.config import build_config
from ivn_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ivn_fast.models.teacher import ATTN_IMPLEMENTATION, SemanticTeacher, teacher_layer_indices
from ivn_fast.train.parallelize import compile_blocks
from ivn_fast.train.stage1 import token_grid

PATCH, DIM, HEADS, DEPTH = 8, 32, 2, 7
VISION = dict(patch_size=PATCH, hidden_size=DIM, intermediate_size=64, num_hidden_layers=DEPTH,
              num_attention_heads=HEADS)


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(image_size=32, **VISION)).eval()
    path = tmp_path_factory.mktemp("siglip")
    model.save_pretrained(path)
    return str(path), model


@pytest.fixture(scope="module")
def siglip2(tmp_path_factory):
    torch.manual_seed(1)
    model = Siglip2VisionModel(Siglip2VisionConfig(num_patches=16, **VISION)).eval()
    path = tmp_path_factory.mktemp("siglip2")
    model.save_pretrained(path)
    return str(path), model


def frames_for(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The teacher's input computed independently: bicubic resize, ImageNet -> SigLIP (0.5, 0.5) stats."""
    b, c, t, h, w = video.shape
    x = video.transpose(1, 2).reshape(b * t, c, h, w)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean - 0.5) / 0.5


def head_attention(model, tokens: torch.Tensor) -> torch.Tensor:
    """Probe-to-token attention of the pooling head from its q/k projections, mean over heads."""
    mha = model.head.attention
    wq, wk, _ = mha.in_proj_weight.chunk(3)
    bq, bk, _ = mha.in_proj_bias.chunk(3)
    q = (model.head.probe[0] @ wq.T + bq).view(1, HEADS, DIM // HEADS)  # [1, H, d]
    k = (tokens @ wk.T + bk).view(tokens.shape[0], -1, HEADS, DIM // HEADS)  # [N, L, H, d]
    logits = torch.einsum("qhd,nlhd->nhl", q, k) / (DIM // HEADS) ** 0.5
    return logits.softmax(-1).mean(1)  # [N, L]


def reference(model, pixel_inputs: dict, indices, b: int, t: int):
    with torch.no_grad():
        out = model(**pixel_inputs, output_hidden_states=True)
        layers = torch.stack([F.normalize(out.hidden_states[i], dim=-1) for i in indices])
        final = F.normalize(out.pooler_output, dim=-1).view(b, t, -1).mean(1)
        attn = head_attention(model, out.last_hidden_state).view(b, t, -1)
    return layers.reshape(len(indices), b, -1, DIM), final, attn


def check(out, ref_layers, ref_final, ref_attn, tol=1e-5):
    torch.testing.assert_close(out.layers, ref_layers, atol=tol, rtol=tol)
    torch.testing.assert_close(out.final, ref_final, atol=tol, rtol=tol)
    torch.testing.assert_close(out.attn, ref_attn, atol=tol, rtol=tol)


def test_layer_rule_reproduces_released_choices():
    assert teacher_layer_indices(40, 6) == (23, 26, 30, 33, 36, 39)  # ViT-B student, interval 3.33
    assert teacher_layer_indices(40, 6, student_depth=24) == (31, 33, 34, 36, 38, 39)  # ViT-L, 1.67
    assert teacher_layer_indices(DEPTH, 3) == (4, 5, 6)
    assert teacher_layer_indices(4, 4, student_depth=12) == (0, 1, 2, 3)  # never repeats a layer
    with pytest.raises(ValueError):
        teacher_layer_indices(4, 5)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])  # the native grid (32 px / 8) and another
def test_siglip_matches_transformers(siglip, grid):
    path, model = siglip
    teacher = SemanticTeacher.from_pretrained(path, num_layers=3)
    assert teacher.model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert teacher.layer_indices == (4, 5, 6) and teacher.width == teacher.final_width == DIM
    torch.manual_seed(0)
    b, t = 2, 3
    video = torch.randn(b, 3, t, 28, 28)
    out = teacher(video, grid)
    n = grid[0] * grid[1]
    assert out.layers.shape == (3, b, t * n, DIM) and out.final.shape == (b, DIM) and out.attn.shape == (b, t, n)
    pixels = frames_for(video, (grid[0] * PATCH, grid[1] * PATCH))
    check(out, *reference(model, {"pixel_values": pixels, "interpolate_pos_encoding": True}, (4, 5, 6), b, t))
    torch.testing.assert_close(out.attn.sum(-1), torch.ones(b, t))
    torch.testing.assert_close(out.layers.norm(dim=-1), torch.ones(3, b, t * n))


def test_siglip2_matches_transformers(siglip2):
    path, model = siglip2
    teacher = SemanticTeacher.from_pretrained(path, num_layers=2)
    torch.manual_seed(0)
    b, t, grid = 2, 2, (3, 5)
    video = torch.randn(b, 3, t, 32, 32)
    out = teacher(video, grid)
    assert out.layers.shape == (2, b, t * 15, DIM) and out.attn.shape == (b, t, 15)
    pixels = frames_for(video, (grid[0] * PATCH, grid[1] * PATCH))
    inputs = {
        "pixel_values": torch.stack([torch.from_numpy(convert_image_to_patches(f.numpy(), PATCH)) for f in pixels]),
        "pixel_attention_mask": torch.ones(b * t, 15, dtype=torch.long),
        "spatial_shapes": torch.tensor([grid] * (b * t)),
    }
    check(out, *reference(model, inputs, teacher.layer_indices, b, t))
    torch.testing.assert_close(out.attn.sum(-1), torch.ones(b, t))


@pytest.mark.parametrize("which", ["siglip", "siglip2"])
def test_our_attention_matches_eager(siglip, siglip2, which):
    path = (siglip if which == "siglip" else siglip2)[0]
    ours = SemanticTeacher.from_pretrained(path, num_layers=3)
    eager = SemanticTeacher.from_pretrained(path, num_layers=3, attn_implementation="eager")
    video = torch.randn(1, 3, 2, 24, 24)
    check(ours(video, (3, 3)), *vars(eager(video, (3, 3))).values())


def test_fixed_resolution_resizes_tokens(siglip):
    """At a fixed teacher resolution the 6x6 token maps are resized to the student's 4x4 grid."""
    path = siglip[0]
    teacher = SemanticTeacher.from_pretrained(path, num_layers=2, resolution=48)
    video = torch.randn(2, 3, 2, 28, 28)
    out = teacher(video, (4, 4))
    assert out.layers.shape == (2, 2, 2 * 16, DIM) and out.attn.shape == (2, 2, 16)
    torch.testing.assert_close(out.attn.sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(out.layers.norm(dim=-1), torch.ones(2, 2, 32))
    assert (out.attn >= 0).all()
    full = SemanticTeacher.from_pretrained(path, num_layers=2)(video, (6, 6))  # same 48 px input
    coarse = F.interpolate(full.attn.view(4, 1, 6, 6), size=(4, 4), mode="bilinear", align_corners=False)
    coarse = coarse.view(2, 2, 16)
    torch.testing.assert_close(out.attn, coarse / coarse.sum(-1, keepdim=True))


def test_full_siglip_model_directory(tmp_path):
    torch.manual_seed(2)
    config = SiglipConfig(
        vision_config=dict(image_size=32, **VISION),
        text_config=dict(hidden_size=DIM, intermediate_size=64, num_hidden_layers=1, num_attention_heads=HEADS,
                         vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    )
    full = SiglipModel(config).eval()
    full.save_pretrained(tmp_path)
    teacher = SemanticTeacher.from_pretrained(str(tmp_path), num_layers=2)
    assert isinstance(teacher.model, SiglipVisionModel)
    for name, value in full.vision_model.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[name], value), name


def test_preprocessor_stats_are_used(siglip, tmp_path):
    """With ImageNet stats in preprocessor_config.json the teacher sees the video unchanged."""
    path, model = siglip
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)})
    )
    teacher = SemanticTeacher.from_pretrained(str(tmp_path), num_layers=1)
    video = torch.randn(1, 3, 2, 32, 32)
    seen = []
    handle = teacher.model.embeddings.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    teacher(video, (4, 4))
    handle.remove()
    torch.testing.assert_close(seen[0], video.transpose(1, 2).reshape(2, 3, 32, 32))


def test_frozen(siglip):
    teacher = SemanticTeacher.from_pretrained(siglip[0], num_layers=2)
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(1, 3, 1, 32, 32, requires_grad=True), (4, 4))
    assert not (out.layers.requires_grad or out.final.requires_grad or out.attn.requires_grad)


def test_errors_name_the_path(tmp_path, siglip):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SemanticTeacher.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        SemanticTeacher.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        SemanticTeacher.from_pretrained(str(tmp_path))
    headless = tmp_path / "headless"
    SiglipVisionModel(SiglipVisionConfig(image_size=32, vision_use_head=False, **VISION)).save_pretrained(headless)
    with pytest.raises(ValueError, match="head"):
        SemanticTeacher.from_pretrained(str(headless))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((Path(siglip[0]) / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no_weights"):
        SemanticTeacher.from_pretrained(str(no_weights))


def test_compiled_layers_under_bf16_autocast_match_eager():
    """The patch embedding hands the encoder a transposed view, which inductor's CPU code for the
    compiled layers read wrongly under bf16 autocast (NaN); the layers now get a contiguous copy."""
    cfg = build_config("tiny")
    teacher = SemanticTeacher.from_pretrained(cfg.model.teacher.path, num_layers=cfg.model.teacher.num_layers)
    video = torch.randn(8, 3, cfg.data.num_frames, cfg.data.size, cfg.data.size, generator=torch.Generator().manual_seed(0))
    grid = token_grid(cfg)[1:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = teacher(video, grid)
        assert compile_blocks(teacher) == teacher.model.config.num_hidden_layers
        got = teacher(video, grid)
    for a, b in ((got.layers, want.layers), (got.final, want.final)):
        assert torch.isfinite(a).all()
        assert (a.float() - b.float()).norm() < 2e-2 * b.float().norm()
