import pytest
import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertModel

from ivn_fast.config import ASSETS
from ivn_fast.models.modernbert import GLOBAL, LOCAL, load_modernbert_layers
from ivn_fast.models.predictor import Predictor

DEPTH, WIDTH, SEQ = 6, 64, 40


def sharpen(model: ModernBertModel) -> None:
    """Scale q/k/v up so attention is peaked: with the 0.02 init it is nearly uniform and
    neither the window nor the RoPE base would show in the outputs."""
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.Wqkv.weight.mul_(10.0)


def tiny_config() -> ModernBertConfig:
    # local_attention 8 -> each local query sees 4 keys either side, far fewer than SEQ
    return ModernBertConfig(
        hidden_size=WIDTH, intermediate_size=96, num_attention_heads=4, num_hidden_layers=DEPTH,
        global_attn_every_n_layers=3, local_attention=8, vocab_size=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, cls_token_id=1, sep_token_id=2,
    )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = ModernBertModel(tiny_config()).eval()
    sharpen(model)
    path = tmp_path_factory.mktemp("modernbert")
    model.save_pretrained(path)
    return str(path), model


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    torch.manual_seed(1)
    model = ModernBertForMaskedLM(tiny_config()).eval()
    sharpen(model.model)
    path = tmp_path_factory.mktemp("modernbert_mlm")
    model.save_pretrained(path)
    return str(path), model


def hf_tail(model: ModernBertModel, k: int, x: torch.Tensor) -> torch.Tensor:
    """The whole transformers model, with x substituted as the input of layer L-k: the output
    is final_norm(layers[L-k:](x)) computed by transformers itself."""

    def substitute(module, args, kwargs):
        if args:
            return (x,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x}

    handle = model.layers[len(model.layers) - k].register_forward_pre_hook(substitute, with_kwargs=True)
    try:
        with torch.no_grad():
            return model(inputs_embeds=torch.randn_like(x)).last_hidden_state
    finally:
        handle.remove()


def ours_tail(layers, final_norm, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for layer in layers:
            x = layer(x)
        return final_norm(x)


@pytest.mark.parametrize("k", [2, 5])
def test_last_layers_match_transformers(bert_dir, k):
    path, model = bert_dir
    layers, config = load_modernbert_layers(path, k)
    assert [layer.layer_id for layer in layers] == list(range(DEPTH - k, DEPTH))
    x = torch.randn(2, SEQ, WIDTH)
    ref = hf_tail(model, k, x)
    ours = ours_tail(layers, model.final_norm, x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_window_and_rope_matter(bert_dir):
    """The comparison above would catch a wrong window or RoPE base: both change the output."""
    path, model = bert_dir
    x = torch.randn(2, SEQ, WIDTH)
    ref = hf_tail(model, 5, x)
    layers, _ = load_modernbert_layers(path, 5)
    assert [layer.attention_type for layer in layers] == [LOCAL, LOCAL, GLOBAL, LOCAL, LOCAL]
    assert [layer.attn.window for layer in layers] == [4, 4, None, 4, 4]
    assert [layer.attn.theta for layer in layers] == [1e4, 1e4, 1.6e5, 1e4, 1e4]
    layers[0].attn.window = None
    assert (ours_tail(layers, model.final_norm, x) - ref).abs().max() > 1e-3
    layers, _ = load_modernbert_layers(path, 5)
    layers[2].attn.theta = 1e4
    assert (ours_tail(layers, model.final_norm, x) - ref).abs().max() > 1e-3


def test_masked_lm_checkpoint(mlm_dir):
    path, model = mlm_dir
    layers, _ = load_modernbert_layers(path, 3)
    x = torch.randn(1, SEQ, WIDTH)
    torch.testing.assert_close(ours_tail(layers, model.model.final_norm, x), hf_tail(model.model, 3, x),
                               atol=1e-5, rtol=1e-5)


def test_sharded_checkpoint(bert_dir, tmp_path):
    _, model = bert_dir
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    layers, _ = load_modernbert_layers(str(tmp_path), 4)
    x = torch.randn(1, SEQ, WIDTH)
    torch.testing.assert_close(ours_tail(layers, model.final_norm, x), hf_tail(model, 4, x), atol=1e-5, rtol=1e-5)


def test_no_init_same_shapes_fresh_weights(bert_dir):
    path, model = bert_dir
    fresh, _ = load_modernbert_layers(path, 2, init=False)
    loaded, _ = load_modernbert_layers(path, 2, init=True)
    for (name, a), (_, b) in zip(fresh.state_dict().items(), loaded.state_dict().items()):
        assert a.shape == b.shape, name
    wqkv = fresh[0].attn.Wqkv.weight
    assert not torch.equal(wqkv, loaded[0].attn.Wqkv.weight)
    assert wqkv.abs().max() <= 2 * 0.02 + 1e-7  # truncated at initializer_cutoff_factor * std
    assert 0.01 < wqkv.std() < 0.02
    # projections into the residual stream start smaller, as in transformers
    assert fresh[0].attn.Wo.weight.std() < 0.5 * wqkv.std()


def test_dtype(bert_dir):
    layers, _ = load_modernbert_layers(bert_dir[0], 1, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in layers.parameters())


def test_errors_name_the_path(tmp_path, bert_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_modernbert_layers(str(missing), 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_modernbert_layers(str(tmp_path / "empty"), 2)
    with pytest.raises(FileNotFoundError, match="tiny_modernbert"):
        load_modernbert_layers(str(ASSETS / "tiny_modernbert"), 2, init=True)  # config only, no weights
    with pytest.raises(ValueError, match="num_layers"):
        load_modernbert_layers(bert_dir[0], DEPTH + 1)
    with pytest.raises(ValueError, match="path is None"):
        load_modernbert_layers(None, 5, init=True)


def test_shipped_tiny_config_builds_without_weights():
    layers, config = load_modernbert_layers(str(ASSETS / "tiny_modernbert"), 2, init=False)
    assert config.hidden_size == 128 and config.num_hidden_layers == 4
    assert [layer.attention_type for layer in layers] == [LOCAL, GLOBAL]
    x = torch.randn(1, 10, 128)
    for layer in layers:
        x = layer(x)
    assert x.shape == (1, 10, 128) and torch.isfinite(x).all()


def test_builtin_large_last_five_layer_types():
    with torch.device("meta"):
        layers, config = load_modernbert_layers(None, 5, init=False)
    assert config.hidden_size == 1024 and config.num_hidden_layers == 28
    assert [layer.layer_id for layer in layers] == [23, 24, 25, 26, 27]
    assert [layer.attention_type for layer in layers] == [LOCAL, GLOBAL, LOCAL, LOCAL, GLOBAL]
    assert [layer.attn.window for layer in layers] == [64, None, 64, 64, None]
    assert [layer.attn.theta for layer in layers] == [1e4, 1.6e5, 1e4, 1e4, 1.6e5]
    per_layer = 2 * 1024 + 1024 * 3 * 1024 + 1024 * 1024 + 1024 * 2 * 2624 + 2624 * 1024
    assert sum(p.numel() for p in layers.parameters()) == 5 * per_layer
    assert all(not hasattr(m, "bias") or m.bias is None for layer in layers for m in layer.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm)))


ENC, NUM_CLS, GRID = 32, 2, (2, 4, 4)


def feed(batch: int = 2, keep: int = 8, grid=GRID):
    n = grid[0] * grid[1] * grid[2]
    vis_idx = torch.stack([torch.randperm(n)[:keep].sort().values for _ in range(batch)])
    return torch.randn(batch, NUM_CLS + keep, ENC), vis_idx


@pytest.mark.parametrize("kind", ["modernbert", "vit"])
def test_predictor_shapes_and_gradients(bert_dir, kind):
    torch.manual_seed(0)
    pred = Predictor(enc_dim=ENC, num_cls=NUM_CLS, grid=GRID, kind=kind, path=bert_dir[0], num_layers=2,
                     vit_depth=2, vit_width=48, vit_heads=4)
    assert pred.width == (WIDTH if kind == "modernbert" else 48)
    x, vis_idx = feed()
    z = pred(x, vis_idx, GRID)
    assert z.shape == (2, 32, pred.width)
    z.square().mean().backward()
    for name in ("mask_token", "pos_embed"):
        g = getattr(pred, name).grad
        assert g is not None and g.abs().sum() > 0, name
    assert pred.pos_embed.grad[:NUM_CLS].abs().sum() > 0  # CLS rows are used too
    # a clip of another size resamples the position table
    x2, vis_idx2 = feed(grid=(4, 3, 3))
    assert pred(x2, vis_idx2, (4, 3, 3)).shape == (2, 36, pred.width)


def test_predictor_places_visible_tokens(bert_dir):
    """Changing one visible feature changes the outputs near its grid position the most."""
    torch.manual_seed(0)
    pred = Predictor(enc_dim=ENC, num_cls=NUM_CLS, grid=GRID, path=bert_dir[0], num_layers=1).eval()
    x, vis_idx = feed(batch=1)
    x2 = x.clone()
    x2[0, NUM_CLS + 3] += 5.0
    with torch.no_grad():
        delta = (pred(x2, vis_idx, GRID) - pred(x, vis_idx, GRID)).norm(dim=-1)[0]
    assert delta.argmax() == vis_idx[0, 3]


def test_predictor_init_flag(bert_dir):
    loaded = Predictor(enc_dim=ENC, num_cls=NUM_CLS, grid=GRID, path=bert_dir[0], num_layers=2)
    fresh = Predictor(enc_dim=ENC, num_cls=NUM_CLS, grid=GRID, path=bert_dir[0], num_layers=2, init=False)
    ref = bert_dir[1].layers[DEPTH - 1].mlp.Wi.weight
    assert torch.equal(loaded.layers[1].mlp.Wi.weight, ref)
    assert fresh.layers[1].mlp.Wi.weight.shape == ref.shape and not torch.equal(fresh.layers[1].mlp.Wi.weight, ref)
    with pytest.raises(ValueError, match="kind"):
        Predictor(enc_dim=ENC, num_cls=NUM_CLS, grid=GRID, kind="mlp", path=None, init=False)
