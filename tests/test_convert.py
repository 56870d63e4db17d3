import torch

from ivn_fast.config import EncoderConfig
from ivn_fast.models.convert import convert_released_encoder
from ivn_fast.models.encoder import VideoEncoder


def released_state(dim=32, depth=2, ncls=4, grid=(2, 2, 2), p=14, prefix="module."):
    """A synthetic state dict with the released encoder's key names and shapes."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    n = grid[0] * grid[1] * grid[2]
    sd = {
        "patch_embed.proj.weight": r(dim, 3, 1, p, p), "patch_embed.proj.bias": r(dim),
        "patch_embed.norm_before.weight": r(3 * p * p), "patch_embed.norm.weight": r(dim),
        "cls_token": r(1, ncls, dim), "pos_embed": r(1, ncls + n, dim),
        "clip_projector.norm1_q.weight": r(dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({
            b + "norm1.weight": r(dim), b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.q_norm.weight": r(dim),
            b + "attn.k_norm.weight": r(dim), b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
            b + "ls1.gamma": r(dim), b + "norm2.weight": r(dim), b + "mlp.fc1.weight": r(4 * dim, dim),
            b + "mlp.fc1.bias": r(4 * dim), b + "mlp.fc2.weight": r(dim, 4 * dim), b + "mlp.fc2.bias": r(dim),
            b + "ls2.gamma": r(dim),
        })
    return {prefix + k: v for k, v in sd.items()}


def test_released_keys_load_strictly_and_patch_embedding_matches_conv3d():
    sd = released_state()
    ours, unused = convert_released_encoder(sd)
    enc = VideoEncoder(EncoderConfig(embed_dim=32, depth=2, num_heads=2, drop_path=0.0), (2, 2, 2)).eval()
    enc.load_state_dict(ours, strict=True)
    assert unused == ["module.clip_projector.norm1_q.weight"]
    # the released patch embedding: norm over (h, w, c) patch vectors, Conv3d, norm
    video = torch.randn(1, 3, 2, 28, 28)
    pe = enc.patch_embed
    x = video.permute(0, 2, 3, 4, 1).reshape(1, 2, 2, 14, 2, 14, 3).permute(0, 1, 2, 4, 3, 5, 6).reshape(1, 8, -1)
    x = pe.norm_in(x).reshape(1, 2, 2, 2, 14, 14, 3).permute(0, 6, 1, 2, 4, 3, 5).reshape(1, 3, 2, 28, 28)
    ref = torch.nn.functional.conv3d(x, sd["module.patch_embed.proj.weight"], sd["module.patch_embed.proj.bias"],
                                     stride=(1, 14, 14))
    ref = pe.norm_out(ref.flatten(2).transpose(1, 2))
    torch.testing.assert_close(pe(video), ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(enc.pos_embed, sd["module.pos_embed"][0])
