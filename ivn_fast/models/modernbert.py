"""ModernBERT encoder layers, weight-compatible with transformers' ModernBertModel.

The predictor reuses the last k layers of a pretrained ModernBERT without its embeddings or
final norm. Writing the layer ourselves keeps its attention on our one entry point (flash
attention with a sliding window on GPU) and frees us from transformers' layer-call API, which
changes between versions; `load_modernbert_layers` reads only the needed tensors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import ModernBertConfig
from transformers.activations import ACT2FN

from ivn_fast.models.attention import attention

LOCAL, GLOBAL = "sliding_attention", "full_attention"


def modernbert_large_config() -> ModernBertConfig:
    """ModernBERT-Large's shapes, for building the predictor without its weights directory."""
    return ModernBertConfig(
        hidden_size=1024,
        intermediate_size=2624,
        num_attention_heads=16,
        num_hidden_layers=28,
        global_attn_every_n_layers=3,
        local_attention=128,
        global_rope_theta=160_000.0,
        local_rope_theta=10_000.0,
        norm_eps=1e-5,
        norm_bias=False,
        attention_bias=False,
        mlp_bias=False,
        hidden_activation="gelu",
    )


def layer_type(config: ModernBertConfig, layer_id: int) -> str:
    """LOCAL or GLOBAL for a layer, counted in the full model's numbering."""
    types = getattr(config, "layer_types", None)
    if types:
        return types[layer_id]
    every = getattr(config, "global_attn_every_n_layers", 3)
    return GLOBAL if layer_id % every == 0 else LOCAL


def rope_theta(config: ModernBertConfig, kind: str) -> float:
    """RoPE base of a layer type; reads the v5 `rope_parameters` or the older flat fields."""
    params = getattr(config, "rope_parameters", None)
    if params and kind in params:
        p = params[kind]
        if p.get("rope_type", "default") != "default":
            raise ValueError(f"ModernBERT rope_type {p['rope_type']!r} is not supported (only 'default')")
        return float(p["rope_theta"])
    return float(config.global_rope_theta if kind == GLOBAL else config.local_rope_theta)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


class ModernBertAttention(nn.Module):
    """Fused-QKV self-attention with rotary q/k; local layers see keys within `window` positions."""

    def __init__(self, config: ModernBertConfig, layer_id: int):
        super().__init__()
        dim, heads = config.hidden_size, config.num_attention_heads
        if dim % heads:
            raise ValueError(f"ModernBERT width {dim} is not divisible by {heads} heads")
        self.num_heads, self.head_dim = heads, dim // heads
        kind = layer_type(config, layer_id)
        self.window = config.local_attention // 2 if kind == LOCAL else None
        self.theta = rope_theta(config, kind)
        self.dropout = float(config.attention_dropout)
        self.Wqkv = nn.Linear(dim, 3 * dim, bias=config.attention_bias)
        self.Wo = nn.Linear(dim, dim, bias=config.attention_bias)
        self.out_drop = nn.Dropout(self.dropout)

    def _cos_sin(self, seq: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        half = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / self.theta**half
        freqs = torch.arange(seq, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [S, 1, D] broadcasts over heads
        return emb.cos(), emb.sin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        q, k, v = self.Wqkv(x).view(b, s, 3, self.num_heads, self.head_dim).unbind(dim=2)
        cos, sin = self._cos_sin(s, x.device)
        q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
        p = self.dropout if self.training else 0.0
        out = attention(q, k, v, window=self.window, dropout_p=p)
        return self.out_drop(self.Wo(out.reshape(b, s, c)))


class ModernBertMLP(nn.Module):
    """GLU feed-forward: Wi makes (input, gate); act(input) * gate goes through Wo."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_activation]
        self.drop = nn.Dropout(float(config.mlp_dropout))
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(self.act(inp) * gate))


class ModernBertLayer(nn.Module):
    """Pre-norm layer; parameter names match transformers so its state dict loads as is."""

    def __init__(self, config: ModernBertConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.attention_type = layer_type(config, layer_id)
        dim, eps, bias = config.hidden_size, config.norm_eps, config.norm_bias
        self.attn_norm = nn.Identity() if layer_id == 0 else nn.LayerNorm(dim, eps=eps, bias=bias)
        self.attn = ModernBertAttention(config, layer_id)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps, bias=bias)
        self.mlp = ModernBertMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


def _init_layer(layer: ModernBertLayer, config: ModernBertConfig) -> None:
    """transformers' ModernBERT init: truncated normal, output projections scaled down by depth."""
    cutoff = config.initializer_cutoff_factor or 3.0
    std_in = config.initializer_range
    std_out = std_in / math.sqrt(2.0 * config.num_hidden_layers)
    for linear, std in ((layer.attn.Wqkv, std_in), (layer.attn.Wo, std_out),
                        (layer.mlp.Wi, std_in), (layer.mlp.Wo, std_out)):
        nn.init.trunc_normal_(linear.weight, std=std, a=-cutoff * std, b=cutoff * std)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


def _read_config(path: Path) -> ModernBertConfig:
    if not path.is_dir():
        raise FileNotFoundError(f"ModernBERT directory not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"ModernBERT directory {path} holds no config.json")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "modernbert":
        raise ValueError(f"{config_file} describes a {model_type!r} model, not ModernBERT")
    return ModernBertConfig.from_pretrained(str(path))


def _weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it (single file or a sharded index)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    single = path / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(f"ModernBERT directory {path} holds no model.safetensors or model.safetensors.index.json")


def _load_weights(layers: nn.ModuleList, path: Path) -> None:
    """Copy the needed layers' tensors in; accepts ModernBertModel keys and ModernBertForMaskedLM's `model.`."""
    files = _weight_files(path)
    prefix = "model." if any(k.startswith("model.layers.") for k in files) else ""
    wanted: dict[Path, dict[str, torch.Tensor]] = {}
    for layer in layers:
        for name, tensor in layer.state_dict().items():
            key = f"{prefix}layers.{layer.layer_id}.{name}"
            if key not in files:
                raise ValueError(f"ModernBERT weights in {path} lack {key}")
            wanted.setdefault(files[key], {})[key] = tensor
    for file, targets in wanted.items():
        with safe_open(str(file), framework="pt") as f:
            for key, tensor in targets.items():
                src = f.get_tensor(key)
                if src.shape != tensor.shape:
                    raise ValueError(f"{file}: {key} has shape {tuple(src.shape)}, expected {tuple(tensor.shape)}")
                with torch.no_grad():
                    tensor.copy_(src)


def load_modernbert_layers(
    path: str | None, num_layers: int, init: bool = True, dtype: torch.dtype | None = None
) -> tuple[nn.ModuleList, ModernBertConfig]:
    """The last `num_layers` layers of a ModernBERT and its config.

    init=True copies the pretrained weights from `path` (config.json + safetensors); init=False
    gives the same shapes with fresh weights, and needs only config.json (or no path at all,
    which means ModernBERT-Large's shapes).
    """
    if path is None:
        if init:
            raise ValueError("initialising the predictor from ModernBERT needs a weights directory (path is None)")
        config = modernbert_large_config()
    else:
        config = _read_config(Path(path))
    total = config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers must be in [1, {total}] for this ModernBERT, got {num_layers}")
    layers = nn.ModuleList(ModernBertLayer(config, i) for i in range(total - num_layers, total))
    for layer in layers:
        _init_layer(layer, config)
    if init:
        _load_weights(layers, Path(path))
    if dtype is not None:
        layers.to(dtype)
    return layers, config
