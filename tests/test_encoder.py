import pytest
import torch

from ivn_fast.config import EncoderConfig
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.patches import patchify, unpatchify
from ivn_fast.models.pos_embed import resize_table, sincos_3d
from ivn_fast.models.tokens import gather_tokens, masked_complement, merge_tokens


def vit_params(dim: int, depth: int, tokens: int, patch: int = 14, cls: int = 4) -> int:
    """Closed-form parameter count of the released encoder layout."""
    p = 3 * patch * patch
    patch_embed = p + p * dim + dim + dim  # RMSNorm on the raw patch, projection, RMSNorm
    block = (dim                    # norm1
             + 3 * dim * dim        # qkv, no bias
             + 2 * dim              # q_norm, k_norm
             + dim * dim + dim      # proj
             + dim                  # ls1
             + dim                  # norm2
             + 4 * dim * dim + 4 * dim  # fc1
             + 4 * dim * dim + dim  # fc2
             + dim)                 # ls2
    return patch_embed + cls * dim + (cls + tokens) * dim + depth * block


def test_vit_b_parameter_count():
    with torch.device("meta"):
        enc = VideoEncoder(EncoderConfig(), (16, 16, 16))
    n = sum(p.numel() for p in enc.parameters())
    assert n == vit_params(768, 12, 16 * 256) == 88_650_828
    # ViT-B without its position table: the familiar ~85.5M
    assert n - enc.pos_embed.numel() == 85_502_028


def test_vit_l_parameter_count():
    with torch.device("meta"):
        enc = VideoEncoder(EncoderConfig(embed_dim=1024, depth=24, num_heads=16), (16, 16, 16))
    assert sum(p.numel() for p in enc.parameters()) == vit_params(1024, 24, 16 * 256)


def tiny():
    return VideoEncoder(EncoderConfig(embed_dim=64, depth=3, num_heads=2, drop_path=0.0), (4, 4, 4)).eval()


def test_visible_only_equals_gathering_inputs():
    """Running on visible tokens = running on a clip made of only those tokens (same positions)."""
    torch.manual_seed(0)
    enc = tiny()
    video = torch.randn(2, 3, 4, 56, 56)
    idx = torch.stack([torch.randperm(64)[:20].sort().values for _ in range(2)])
    out = enc(video, idx, return_layers=(0, 2))
    assert out.tokens.shape == (2, 4 + 20, 64) and len(out.layers) == 2
    assert torch.equal(out.layers[1], out.tokens)
    # reference: embed all tokens, add positions, pick the rows, run the blocks
    x = enc.patch_embed(video) + enc.pos_embed[4:]
    x = torch.cat([(enc.cls_token + enc.pos_embed[:4]).expand(2, -1, -1), x[torch.arange(2)[:, None], idx]], 1)
    for blk in enc.blocks:
        x = blk(x)
    torch.testing.assert_close(out.tokens, x)


def test_any_clip_size_divisible_by_patch():
    enc = tiny()
    out = enc(torch.randn(1, 3, 6, 28, 70))
    assert out.grid == (6, 2, 5) and out.tokens.shape == (1, 4 + 60, 64)
    try:
        enc(torch.randn(1, 3, 4, 30, 28))
    except ValueError as e:
        assert "divisible" in str(e)
    else:
        raise AssertionError("a frame size not divisible by the patch must be rejected")


def test_patch_embed_matches_conv3d_with_pre_norm():
    """Our linear patch embedding equals the released Conv3d layout (with both norms) after permuting the weight."""
    torch.manual_seed(0)
    enc = tiny()
    video = torch.randn(2, 3, 4, 28, 42)
    p = 14
    x = video.permute(0, 2, 3, 4, 1).reshape(2, 4, 2, p, 3, p, 3).permute(0, 1, 2, 4, 3, 5, 6).reshape(2, 24, -1)
    x = enc.patch_embed.norm_in(x).reshape(2, 4, 2, 3, p, p, 3).permute(0, 6, 1, 2, 4, 3, 5).reshape(2, 3, 4, 28, 42)
    w = enc.patch_embed.proj.weight.reshape(64, p, p, 3).permute(0, 3, 1, 2).unsqueeze(2)
    ref = torch.nn.functional.conv3d(x, w, enc.patch_embed.proj.bias, stride=(1, p, p))
    ref = enc.patch_embed.norm_out(ref.flatten(2).transpose(1, 2))
    torch.testing.assert_close(enc.patch_embed(video), ref, rtol=1e-5, atol=1e-5)


def test_sincos_table_layout_and_resize():
    t = sincos_3d(64, 2, 3, 4, num_cls=4)
    assert t.shape == (4 + 24, 64) and torch.all(t[:4] == 0)
    # temporal quarter depends only on t, spatial part only on (h, w)
    grid = t[4:].view(2, 3, 4, 64)
    assert torch.allclose(grid[0, 0, 0, :16], grid[0, 2, 3, :16]) and not torch.allclose(grid[0, 0, 0, :16], grid[1, 0, 0, :16])
    assert torch.allclose(grid[0, 1, 2, 16:], grid[1, 1, 2, 16:])
    r = resize_table(t, 4, (2, 3, 4), (4, 6, 8))
    assert r.shape == (4 + 4 * 6 * 8, 64) and torch.equal(r[:4], t[:4])
    assert torch.equal(resize_table(t, 4, (2, 3, 4), (2, 3, 4)), t)


def test_patchify_round_trip_channel_major():
    v = torch.randn(2, 3, 3, 28, 42)
    tok = patchify(v, 14)
    assert tok.shape == (2, 3 * 2 * 3, 588)
    # channel-major inside a patch: the first 196 values are channel 0 of the top-left patch
    assert torch.equal(tok[0, 0, :196], v[0, 0, 0, :14, :14].flatten())
    assert torch.equal(unpatchify(tok, 14, (3, 2, 3)), v)


def test_gather_merge_complement():
    torch.manual_seed(0)
    x, pos = torch.randn(2, 10, 4), torch.randn(10, 4)
    idx = torch.tensor([[1, 4, 7], [0, 2, 9]])
    g = gather_tokens(x, idx, pos)
    assert torch.equal(g[1, 2], x[1, 9] + pos[9])
    mt = torch.randn(4)
    m = merge_tokens(g, idx, mt, pos, 10)
    assert torch.equal(m[0, 4], g[0, 1] + pos[4]) and torch.equal(m[0, 5], mt + pos[5])
    comp = masked_complement(idx, 10)
    assert comp.tolist() == [[0, 2, 3, 5, 6, 8, 9], [1, 3, 4, 5, 6, 7, 8]]


def test_drop_path_ramps_from_zero_to_the_rate_and_can_be_reset():
    enc = VideoEncoder(EncoderConfig(embed_dim=32, depth=3, num_heads=2, drop_path=0.2), (2, 2, 2))
    assert [b.drop_path.keep.item() for b in enc.blocks] == pytest.approx([1.0, 0.9, 0.8])
    assert [b.drop_path.active for b in enc.blocks] == [False, True, True]
    enc.set_drop_path(0.0)  # what fine-tuning does with --drop-path 0
    assert not any(b.drop_path.active for b in enc.blocks)
    enc.set_drop_path(0.4)
    assert [b.drop_path.keep.item() for b in enc.blocks] == pytest.approx([1.0, 0.8, 0.6])
