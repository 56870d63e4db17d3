"""The released InternVideo-Next checkpoints load into our encoder.

The key names and shapes below are written out from the released model definitions
(InternVideo-Next/models/InternVideo_next.py, _s1.py, _s2.py and diffloss.py, with the shipped
launch scripts' settings): the encoder, its `clip_projector` attention pooling, the Stage 1
alignment heads, ModernBERT predictor and diffusion decoder, and the Stage 2 heads.
"""

import pytest
import torch
import torch.nn.functional as F

import ivn_fast
from ivn_fast.config import EncoderConfig
from ivn_fast.models.convert import convert_released_encoder, read_released, released_encoder_config
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.probe import main as probe_main

BERT, BERT_MLP, VOCAB = 1024, 2624, 50368  # ModernBERT-large


def encoder_shapes(dim: int, depth: int, *, ncls: int = 4, tokens: int = 16 * 16 * 16, p: int = 14) -> dict:
    shapes = {"cls_token": (1, ncls, dim), "pos_embed": (1, ncls + tokens, dim),
              "patch_embed.proj.weight": (dim, 3, 1, p, p), "patch_embed.proj.bias": (dim,),
              "patch_embed.norm_before.weight": (3 * p * p,), "patch_embed.norm.weight": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (dim,), b + "attn.qkv.weight": (3 * dim, dim), b + "attn.q_norm.weight": (dim,),
            b + "attn.k_norm.weight": (dim,), b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "ls1.gamma": (dim,), b + "norm2.weight": (dim,), b + "mlp.fc1.weight": (4 * dim, dim),
            b + "mlp.fc1.bias": (4 * dim,), b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,),
            b + "ls2.gamma": (dim,),
        })
    return shapes


def attention_pool_shapes(prefix: str, dim: int, out: int) -> dict:
    shapes = {f"{prefix}norm1_{n}.{w}": (dim,) for n in "qkv" for w in ("weight", "bias")}
    shapes.update({f"{prefix}cross_attn.{n}.weight": (dim, dim) for n in "qkv"})
    shapes.update({f"{prefix}cross_attn.{n}_bias": (dim,) for n in "qkv"})
    shapes.update({f"{prefix}cross_attn.proj.weight": (out, dim), f"{prefix}cross_attn.proj.bias": (out,)})
    return shapes


def mlp_decoder_shapes(prefix: str, cin: int, cout: int) -> dict:
    return {f"{prefix}head.0.weight": (cin, cin), f"{prefix}head.0.bias": (cin,),
            f"{prefix}head.2.weight": (cout, cin), f"{prefix}head.2.bias": (cout,),
            f"{prefix}norm.weight": (cout,), f"{prefix}norm.bias": (cout,)}


def modernbert_shapes(layers: int = 5) -> dict:
    p = "bert_decoder."
    shapes = {p + "embeddings.tok_embeddings.weight": (VOCAB, BERT), p + "embeddings.norm.weight": (BERT,),
              p + "final_norm.weight": (BERT,)}
    for i in range(layers):
        b = f"{p}layers.{i}."
        shapes.update({b + "attn_norm.weight": (BERT,), b + "attn.Wqkv.weight": (3 * BERT, BERT),
                       b + "attn.Wo.weight": (BERT, BERT), b + "mlp_norm.weight": (BERT,),
                       b + "mlp.Wi.weight": (2 * BERT_MLP, BERT), b + "mlp.Wo.weight": (BERT, BERT_MLP)})
    return shapes


def diffloss_shapes(width: int = 1536, depth: int = 6, z: int = BERT, target: int = 588) -> dict:
    p = "diffloss.net."
    shapes = {p + "time_embed.mlp.0.weight": (width, 256), p + "time_embed.mlp.0.bias": (width,),
              p + "time_embed.mlp.2.weight": (width, width), p + "time_embed.mlp.2.bias": (width,),
              p + "cond_embed.weight": (width, z), p + "cond_embed.bias": (width,),
              p + "input_proj.weight": (width, target), p + "input_proj.bias": (width,),
              p + "final_layer.linear.weight": (2 * target, width), p + "final_layer.linear.bias": (2 * target,),
              p + "final_layer.adaLN_modulation.1.weight": (2 * width, width),
              p + "final_layer.adaLN_modulation.1.bias": (2 * width,)}
    for i in range(depth):
        b = f"{p}res_blocks.{i}."
        shapes.update({b + "in_ln.weight": (width,), b + "in_ln.bias": (width,),
                       b + "mlp.0.weight": (width, width), b + "mlp.0.bias": (width,),
                       b + "mlp.2.weight": (width, width), b + "mlp.2.bias": (width,),
                       b + "adaLN_modulation.1.weight": (3 * width, width),
                       b + "adaLN_modulation.1.bias": (3 * width,)})
    return shapes


def released_shapes(kind: str, dim: int, depth: int) -> tuple[dict, dict]:
    """(encoder keys, the rest) of the released inference, Stage 1 or Stage 2 model with the
    shipped scripts' settings (SigLIP2-1B teacher: width 1536, 6 aligned layers)."""
    enc = encoder_shapes(dim, depth)
    rest = attention_pool_shapes("clip_projector.", dim, 768)
    if kind == "stage1":
        rest.update({"clip_pos_embed": enc["pos_embed"], "diff_pos_embed": enc["pos_embed"],
                     "bert_mask_token": (1, 1, dim), **modernbert_shapes(), **diffloss_shapes(),
                     **mlp_decoder_shapes("to_bert_proj.", dim, BERT),
                     **mlp_decoder_shapes("final_clip_decoder.", 768, 1536)})
        for i in range(6):
            rest.update(mlp_decoder_shapes(f"clip_decoder.{i}.", dim, 1536))
    elif kind == "stage2":
        rest.update({"clip_pos_embed": enc["pos_embed"], "diff_pos_embed": enc["pos_embed"],
                     "bert_mask_token": (1, 1, dim), **modernbert_shapes(),
                     **mlp_decoder_shapes("to_bert_proj.", dim, BERT),
                     **mlp_decoder_shapes("selfdist_decoder.", BERT, dim),
                     **mlp_decoder_shapes("selfdist_normproj_decoder.", dim, dim),
                     **mlp_decoder_shapes("selfdist_proj_clip.", 768, dim)})
    return enc, rest


def test_hand_written_decoder_shapes_match_the_documented_parameter_count():
    assert sum(torch.Size(s).numel() for s in diffloss_shapes().values()) == 82_607_256


@pytest.mark.parametrize("kind", ["inference", "stage1", "stage2"])
@pytest.mark.parametrize("size,dim,depth,heads", [("B", 768, 12, 12), ("L", 1024, 24, 16)])
def test_released_checkpoints_load_strictly_at_their_real_shapes(kind, size, dim, depth, heads):
    enc, rest = released_shapes(kind, dim, depth)
    prefix = "module." if kind != "inference" else ""  # DeepSpeed's wrapper around training models
    sd = {prefix + k: torch.empty(s, device="meta") for k, s in {**enc, **rest}.items()}
    ours, unused = convert_released_encoder(sd)
    assert sorted(unused) == sorted(prefix + k for k in rest)
    cfg, grid = released_encoder_config(ours)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.num_cls) == (dim, depth, heads, 4.0, 4)
    assert grid == (16, 16, 16)
    with torch.device("meta"):
        encoder = VideoEncoder(cfg, grid)
    encoder.load_state_dict(ours, strict=True)


def _small_released(dim=32, depth=2, ncls=4, tokens=8, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = {**encoder_shapes(dim, depth, ncls=ncls, tokens=tokens),
              **attention_pool_shapes("clip_projector.", dim, 16)}
    return {k: (1.0 if k.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm_before.weight")) else 0.0)
            + 0.2 * torch.randn(s, generator=g) for k, s in shapes.items()}


def released_forward(sd: dict, video: torch.Tensor, heads: int, depth: int, p: int = 14) -> torch.Tensor:
    """The released encoder's forward, written from its definition: RMSNorm over each raw patch
    in (h, w, c) order, Conv3d, RMSNorm, CLS tokens, joint position table, pre-norm blocks with
    QK-RMSNorm over the full width and LayerScale."""
    def rms(x, w):
        return F.rms_norm(x, (x.shape[-1],), w, eps=1e-6)

    b, c, t, h, w = video.shape
    x = video.permute(0, 2, 3, 4, 1).reshape(b, t, h // p, p, w // p, p, c).permute(0, 1, 2, 4, 3, 5, 6)
    x = rms(x.reshape(b, -1, p * p * c), sd["patch_embed.norm_before.weight"])
    x = x.reshape(b, t, h // p, w // p, p, p, c).permute(0, 6, 1, 2, 4, 3, 5).reshape(b, c, t, h, w)
    x = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(1, p, p))
    x = rms(x.flatten(2).transpose(1, 2), sd["patch_embed.norm.weight"])
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], 1) + sd["pos_embed"]
    for i in range(depth):
        k = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        q, kk, v = F.linear(rms(x, k("norm1.weight")), k("attn.qkv.weight")).chunk(3, -1)
        q, kk = rms(q, k("attn.q_norm.weight")), rms(kk, k("attn.k_norm.weight"))
        split = lambda z: z.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(kk), split(v)).transpose(1, 2).flatten(2)
        x = x + k("ls1.gamma") * F.linear(a, k("attn.proj.weight"), k("attn.proj.bias"))
        y = F.gelu(F.linear(rms(x, k("norm2.weight")), k("mlp.fc1.weight"), k("mlp.fc1.bias")))
        x = x + k("ls2.gamma") * F.linear(y, k("mlp.fc2.weight"), k("mlp.fc2.bias"))
    return x


def test_converted_encoder_computes_the_released_forward():
    sd = _small_released()
    ours, unused = convert_released_encoder({"module." + k: v for k, v in sd.items()})
    assert all(k.startswith("module.clip_projector.") for k in unused) and len(unused) == 14
    enc = VideoEncoder(EncoderConfig(embed_dim=32, depth=2, num_heads=2, drop_path=0.0), (2, 2, 2)).eval()
    enc.load_state_dict(ours, strict=True)
    video = torch.randn(2, 3, 2, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(enc(video).tokens, released_forward(sd, video, heads=2, depth=2),
                                   rtol=1e-4, atol=1e-4)


def test_separable_position_tables_are_refused():
    with pytest.raises(ValueError, match="separable position tables"):
        convert_released_encoder({"pos_embed_spatial": torch.zeros(1, 4, 8)})


def test_released_file_loads_and_probes(tmp_path):
    sd = _small_released(tokens=16 * 2 * 2)  # a 16-frame table, as released
    torch.save({"module": sd, "epoch": 3}, tmp_path / "released.pth")
    assert read_released(tmp_path / "released.pth").keys() == sd.keys()
    enc = ivn_fast.load_encoder(tmp_path / "released.pth")
    assert enc.grid == (16, 2, 2) and enc.cfg.num_heads == 1  # head dim 64, at least one head
    torch.testing.assert_close(enc.pos_embed, sd["pos_embed"][0])
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="no state dict"):
        read_released(tmp_path / "empty.pth")
    args = ["--checkpoint", str(tmp_path / "released.pth"), "--frames", "2", "--size", "28", "--heads", "2",
            "--train-list", "synthetic:shape:12", "--val-list", "synthetic:shape:6", "--epochs", "1"]
    assert probe_main(args) == 0
