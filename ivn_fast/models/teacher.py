"""The frozen semantic teacher T: a SigLIP / SigLIP2 vision tower run on every frame.

One forward pass gives everything Stage 1 needs from T: the alignment targets (hidden states
of a few layers spread over its depth), the pooled target (its attention-pooling head), and
the masking weights (that head's probe-to-token attention). Frames are resized so T's patch
grid equals the student's token grid, hence T's tokens line up with the student's one to one.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Siglip2VisionModel, SiglipVisionModel
from transformers.utils import logging as hf_logging

from ivn_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ivn_fast.models.attention import attention

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
_MODEL_CLASSES = {
    "siglip_vision_model": SiglipVisionModel,
    "siglip": SiglipVisionModel,
    "siglip2_vision_model": Siglip2VisionModel,
    "siglip2": Siglip2VisionModel,
}
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
ATTN_IMPLEMENTATION = "ivn_fast"


def _hf_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention hook ([B, H, S, D] in, [B, S, H, D] out) onto our entry point;
    masked or causal calls go to transformers' SDPA path."""
    if attention_mask is not None or kwargs.get("is_causal"):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    d = query.shape[-1]
    if scaling is not None and not math.isclose(scaling, d**-0.5):
        query = query * (scaling * d**0.5)
    out = attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p=dropout)
    return out, None


def _register_attention() -> str:
    """Our attention's name for transformers, or "sdpa" where this transformers cannot register one."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return "sdpa"
    AttentionInterface.register(ATTN_IMPLEMENTATION, _hf_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION


def teacher_layer_indices(depth: int, num_layers: int, student_depth: int | None = None) -> tuple[int, ...]:
    """Which hidden states (transformers' numbering: 0 = embeddings, i = output of block i-1)
    serve as alignment targets, shallowest first.

    Rule: h_i = depth - 1 - floor(i * step) for i < num_layers, step = round(depth / student_depth, 2),
    so the picks sit at the relative depths of the student's last `num_layers` blocks; the last
    pick is the input of the final block, and the final block's output is left to the pooled
    target. student_depth defaults to 2 * num_layers (aligning the student's last half). On the
    40-block SigLIP2-1B with 6 layers this gives 23, 26, 30, 33, 36, 39 for a 12-block student
    and 31, 33, 34, 36, 38, 39 for a 24-block one (return intervals 3.33 and 1.67).
    """
    if not 1 <= num_layers <= depth:
        raise ValueError(f"teacher num_layers must be in [1, {depth}], got {num_layers}")
    student_depth = student_depth or 2 * num_layers
    step = max(1.0, round(depth / student_depth, 2))
    picks = [depth - 1 - int(i * step) for i in range(num_layers)]
    if picks[-1] < 0:
        raise ValueError(f"cannot spread {num_layers} layers over a {depth}-block teacher at step {step}")
    return tuple(sorted(picks))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the load report (a full SigLIP's unused text tower) and progress bars while loading."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _read_stats(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = path / "preprocessor_config.json"
    if not pre.is_file():
        return SIGLIP_MEAN, SIGLIP_STD
    cfg = json.loads(pre.read_text())
    return tuple(cfg.get("image_mean", SIGLIP_MEAN)), tuple(cfg.get("image_std", SIGLIP_STD))


@dataclass
class TeacherOutput:
    layers: torch.Tensor  # [K, B, T*gh*gw, D] hidden states before the final norm, L2-normalised
    final: torch.Tensor  # [B, D_out] per-frame head output, L2-normalised, then averaged over frames
    attn: torch.Tensor  # [B, T, gh*gw] head's probe-to-token attention, mean over heads, rows sum to 1


class SemanticTeacher(nn.Module):
    """Frozen SigLIP / SigLIP2 vision tower; always in eval mode, never has gradients."""

    def __init__(
        self,
        model: SiglipVisionModel | Siglip2VisionModel,
        num_layers: int = 6,
        *,
        mean: tuple[float, ...] = SIGLIP_MEAN,
        std: tuple[float, ...] = SIGLIP_STD,
        student_depth: int | None = None,
        resolution: int | None = None,
    ):
        super().__init__()
        if getattr(model, "head", None) is None:
            raise ValueError("the teacher needs the attention-pooling head (vision_use_head=True)")
        self.model = model
        cfg = model.config
        self.naflex = isinstance(model, Siglip2VisionModel)
        self.patch_size = int(cfg.patch_size)
        self.width = self.final_width = int(cfg.hidden_size)
        if resolution is not None and resolution % self.patch_size:
            raise ValueError(f"teacher resolution {resolution} is not a multiple of its patch {self.patch_size}")
        self.resolution = resolution
        self.layer_indices = teacher_layer_indices(cfg.num_hidden_layers, num_layers, student_depth)
        in_mean, in_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        t_mean, t_std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        # ImageNet-normalised x -> teacher-normalised x * scale + shift, one affine map per channel
        self.register_buffer("scale", (in_std / t_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((in_mean - t_mean) / t_std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        model.encoder.register_forward_pre_hook(_contiguous_embeddings, with_kwargs=True)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        num_layers: int = 6,
        dtype: torch.dtype | None = None,
        *,
        student_depth: int | None = None,
        resolution: int | None = None,
        attn_implementation: str | None = None,
    ) -> SemanticTeacher:
        """Load a SigLIP / SigLIP2 vision model (or the vision tower of a full one) saved by transformers.

        `resolution` runs the teacher at a fixed square size (features then resized to the
        student grid) instead of at the student's grid; `attn_implementation` defaults to ours.
        """
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"teacher directory not found: {path}")
        config_file = p / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"teacher directory {path} holds no config.json")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type not in _MODEL_CLASSES:
            raise ValueError(f"{config_file}: model_type {model_type!r} is not a SigLIP or SigLIP2 model")
        if not any((p / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(f"teacher directory {path} holds no weights ({', '.join(_WEIGHT_FILES)})")
        with _quiet_transformers():
            model = _MODEL_CLASSES[model_type].from_pretrained(
                str(p),
                dtype=dtype or torch.float32,
                attn_implementation=attn_implementation or _register_attention(),
            )
        if getattr(model, "head", None) is None:
            raise ValueError(f"teacher at {path} has no attention-pooling head (vision_use_head is false)")
        mean, std = _read_stats(p)
        return cls(model, num_layers, mean=mean, std=std, student_depth=student_depth, resolution=resolution)

    def train(self, mode: bool = True) -> SemanticTeacher:
        return super().train(False)

    def _frames(self, video: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, 3, T, H, W] ImageNet-normalised -> [B*T, 3, h*p, w*p] in the teacher's normalisation."""
        b, c, t, h, w = video.shape
        p = self.patch_size
        size = (grid[0] * p, grid[1] * p) if self.resolution is None else (self.resolution, self.resolution)
        frames = video.float().permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        if (h, w) != size:
            frames = F.interpolate(frames, size=size, mode="bicubic", align_corners=False)
        frames = frames * self.scale + self.shift
        return frames.to(self.model.dtype)

    def _run(self, frames: torch.Tensor) -> torch.Tensor:
        """Last hidden state after the final norm, [N, h*w, D]."""
        if not self.naflex:
            return self.model(pixel_values=frames, interpolate_pos_encoding=True).last_hidden_state
        n, c, h, w = frames.shape
        p = self.patch_size
        patches = frames.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(n, (h // p) * (w // p), p * p * c)
        mask = torch.ones(patches.shape[:2], dtype=torch.long, device=frames.device)
        shapes = torch.tensor([[h // p, w // p]], device=frames.device).expand(n, 2)
        return self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state

    def _pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's forward, asking its attention for the head-averaged probe weights too."""
        head = self.model.head
        probe = head.probe.repeat(tokens.shape[0], 1, 1)
        pooled, weights = head.attention(probe, tokens, tokens, need_weights=True, average_attn_weights=True)
        pooled = pooled + head.mlp(head.layernorm(pooled))
        return pooled[:, 0], weights[:, 0]

    @torch.no_grad()
    def forward(self, video: torch.Tensor, grid: tuple[int, int]) -> TeacherOutput:
        b, t = video.shape[0], video.shape[2]
        gh, gw = grid
        frames = self._frames(video, grid)
        th, tw = frames.shape[-2] // self.patch_size, frames.shape[-1] // self.patch_size
        captured: dict[int, torch.Tensor] = {}

        def keep(index: int):
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                captured[index] = args[0] if args else kwargs["hidden_states"]

            return hook

        blocks = self.model.encoder.layers
        handles = [blocks[i].register_forward_pre_hook(keep(i), with_kwargs=True) for i in self.layer_indices]
        try:
            tokens = self._run(frames)
        finally:
            for handle in handles:
                handle.remove()
        pooled, weights = self._pool(tokens)

        layers = torch.stack([captured[i] for i in self.layer_indices])  # [K, B*T, th*tw, D]
        attn = weights.float()
        if (th, tw) != (gh, gw):
            layers = _resize_tokens(layers, (th, tw), (gh, gw))
            attn = _resize_tokens(attn[..., None], (th, tw), (gh, gw))[..., 0].clamp_min(0)
        attn = attn / attn.sum(-1, keepdim=True)  # exact in fp32 whatever the teacher's dtype
        layers = F.normalize(layers.float(), dim=-1).to(layers.dtype)
        final = F.normalize(pooled.float(), dim=-1).view(b, t, -1).mean(dim=1)
        k, d = layers.shape[0], layers.shape[-1]
        return TeacherOutput(
            layers=layers.reshape(k, b, t * gh * gw, d),
            final=final,
            attn=attn.view(b, t, gh * gw),
        )


def _contiguous_embeddings(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The patch embedding hands the encoder a transposed view. Inductor's CPU code for a compiled
    SigLIP layer reads such an input wrongly under bf16 autocast (NaN in about half the outputs,
    torch 2.13), so the layers get a contiguous copy: one pass over the embeddings per forward."""
    if "inputs_embeds" in kwargs:
        kwargs = {**kwargs, "inputs_embeds": kwargs["inputs_embeds"].contiguous()}
    else:
        args = (args[0].contiguous(), *args[1:])
    return args, kwargs


def _resize_tokens(x: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of token maps [..., h*w, C] from grid src to grid dst."""
    lead, c = x.shape[:-2], x.shape[-1]
    maps = x.reshape(-1, *src, c).permute(0, 3, 1, 2).float()
    maps = F.interpolate(maps, size=dst, mode="bilinear", align_corners=False)
    return maps.permute(0, 2, 3, 1).reshape(*lead, dst[0] * dst[1], c).to(x.dtype)
