"""One config tree for every entry point: dataclasses with help text, presets, dotted overrides.

A field's help lives next to its default (``field(..., metadata={"help": ...})``) so ``--help``,
the docs and validation never drift apart. Presets are partial trees applied over the defaults;
command-line ``--a.b.c VALUE`` overrides come last.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivn_fast.data.lists import ListError, parse_spec, read_list

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ASSETS = Path(__file__).resolve().parent / "assets"
AC_MODES = ("none", "full", "selective", "op", "budget")  # train.activation_checkpointing (train/parallelize.py)


class ConfigError(ValueError):
    """A bad config value or path, reported as one line naming the field."""


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta, **kw)


def _section(cls: type) -> Any:
    return field(default_factory=cls)


@dataclass
class EncoderConfig:
    embed_dim: int = _f(768, "encoder width (ViT-B 768, ViT-L 1024)")
    depth: int = _f(12, "number of transformer blocks (ViT-B 12, ViT-L 24)")
    num_heads: int = _f(12, "attention heads per block")
    mlp_ratio: float = _f(4.0, "MLP hidden width / encoder width")
    patch_size: int = _f(14, "spatial patch size in pixels (one frame per tubelet)")
    num_cls: int = _f(4, "learnable CLS tokens prepended to the visible tokens")
    qk_norm: bool = _f(True, "RMSNorm on queries and keys")
    layerscale: float = _f(1e-5, "LayerScale init value (0 disables LayerScale)")
    drop_path: float = _f(0.1, "stochastic-depth rate of the last block (linear ramp from 0)")


@dataclass
class PredictorConfig:
    kind: str = _f("modernbert", "predictor architecture", ("modernbert", "vit"))
    path: str = _f("", "local directory of a ModernBERT model (config.json + safetensors); "
                       "empty with init=false uses the built-in ModernBERT-Large shapes")
    num_layers: int = _f(5, "how many of ModernBERT's last layers form the predictor (k)")
    init: bool = _f(True, "initialise the layers from the pretrained weights in `path`")
    vit_depth: int = _f(5, "depth of the plain ViT predictor (kind=vit)")
    vit_width: int = _f(1024, "width of the plain ViT predictor (kind=vit)")
    vit_heads: int = _f(16, "heads of the plain ViT predictor (kind=vit)")


@dataclass
class DecoderConfig:
    kind: str = _f("diffusion", "pixel decoder: diffusion MLP, linear head or 3-layer MLP head",
                   ("diffusion", "linear", "mlp"))
    width: int = _f(1536, "decoder width")
    depth: int = _f(6, "residual blocks of the diffusion MLP")
    batch_mul: int = _f(1, "noise draws per masked token per step (diffusion_batch_mul)")
    sampling_steps: int = _f(100, "respaced sampling steps for reconstructions")
    fp32: bool = _f(True, "run the diffusion head in float32 under autocast (the reference's choice); false "
                          "runs its matrix products in bf16 and keeps its residual stream float32")


@dataclass
class TeacherConfig:
    path: str = _f(str(ASSETS / "tiny_siglip"),
                   "local directory of a SigLIP / SigLIP2 vision model saved by transformers")
    num_layers: int = _f(6, "teacher layers (and last student blocks) used for alignment")


@dataclass
class ModelConfig:
    encoder: EncoderConfig = _section(EncoderConfig)
    predictor: PredictorConfig = _section(PredictorConfig)
    decoder: DecoderConfig = _section(DecoderConfig)
    teacher: TeacherConfig = _section(TeacherConfig)
    pool_heads: int = _f(16, "heads of the attention pooling that makes the final feature")
    pool_dim: int = _f(768, "width of the attention-pooled final feature before its head")


@dataclass
class MaskConfig:
    kind: str = _f("semantic", "Stage 1 mask: teacher-attention sampling, strict top-k, random, tube",
                   ("semantic", "topk", "random", "tube"))
    ratio: float = _f(0.8, "fraction of tokens masked (released scripts use 0.75)")


@dataclass
class LossConfig:
    terms: str = _f("both", "which Stage 1 objectives to train (Table 1a)", ("both", "align", "recon"))
    w_mid: float = _f(1.0, "weight of the per-token alignment of the last student blocks")
    w_final: float = _f(1.0, "weight of the attention-pooled final-feature alignment")
    w_recon: float = _f(1.0, "weight of the pixel reconstruction loss")


@dataclass
class Stage2Config:
    init: str = _f("", "Stage 1 checkpoint to start from (a step_XXXXXXXX directory); empty: the newest under "
                       "OUTPUT_DIR/checkpoints")
    target: str = _f("stage1", "what the student predicts: tokens of the frozen Stage 1 encoder on the full clip, "
                               "or the external SigLIP teacher's (Table 3 ablation)", ("stage1", "siglip"))
    momentum: float = _f(1.0, "EMA momentum of the Stage 1 target encoder (1.0 keeps it frozen, the paper's "
                              "choice; 0.9998 is the momentum ablation)")
    init_predictor: bool = _f(True, "start the predictor from Stage 1 (false: fresh weights, the zero-init ablation)")
    w_visible: float = _f(0.0, "weight of the extra unmasked-token alignment loss (Table 3 ablation)")
    w_recon: float = _f(0.0, "weight of the extra pixel loss through the Stage 1 decoder (Table 3 ablation)")
    small_blocks: int = _f(8, "blocks in the first mask view")
    small_scale: float = _f(0.15, "fraction of a frame one block of the first view covers")
    large_blocks: int = _f(2, "blocks in the second mask view")
    large_scale: float = _f(0.7, "fraction of a frame one block of the second view covers")
    aspect_min: float = _f(0.75, "smallest block height / width")
    aspect_max: float = _f(1.5, "largest block height / width")
    max_keep: int = _f(400, "most context tokens per 8 frames (0: no cap beyond the batch minimum)")
    truncation: str = _f("earliest", "which context tokens survive the cut: the lowest indices (earliest frames, "
                                     "released) or a uniform random subset", ("earliest", "uniform"))


@dataclass
class DataConfig:
    source: str = _f("synthetic", "training data: the built-in synthetic set, or the videos of data.train_list (a "
                                  "non-empty train_list selects list)", ("synthetic", "list"))
    num_frames: int = _f(16, "frames per clip")
    size: int = _f(224, "frame height and width in pixels (multiple of the patch size)")
    synthetic_videos: int = _f(4096, "clips in the built-in synthetic set")
    num_workers: int = _f(2, "DataLoader worker processes")
    train_list: str = _f("", "video lists to train on, comma-separated: list files ('path label', or 'source path "
                             "total_time start end label') or directories to scan, each optionally LIST:WEIGHT "
                             "(repeat factor); a path listed twice is kept once")
    root: str = _f("", "prefix joined onto relative paths in the list files")
    num_classes: int = _f(0, "labels must lie in [0, num_classes) (0: any label >= 0); -1 marks a clip with no label")
    sampling: str = _f("sparse", "frames of a clip: one per equal segment of the video (sparse), or num_frames "
                                 "frames data.stride apart (dense)", ("sparse", "dense"))
    stride: int = _f(4, "frame step of dense sampling")
    min_frames: int = _f(4, "videos with fewer frames (in their trimmed window) are skipped as too_short; shorter "
                            "than num_frames but long enough, they are padded by repeating frames")
    flip: bool = _f(True, "mirror training clips half the time (never those of data.no_flip_sources)")
    no_flip_sources: str = _f("ssv2,sth", "comma-separated source names whose clips are never mirrored (a source "
                                          "matches when it contains one, case-insensitively): left and right "
                                          "carry meaning there")
    decoder: str = _f("auto", "video decoder: NVIDIA DALI on the GPU, PyAV in DataLoader workers on the CPU "
                              "(auto: DALI when a GPU and DALI are present)", ("auto", "pyav", "dali"))
    decode_threads: int = _f(1, "FFmpeg decoding threads per DataLoader worker (PyAV)")
    native_cut: str = _f("auto", "cut PyAV clips of yuv420p video straight from the YUV planes with the native op "
                                 "(csrc/yuv_cut.cpp, compiled on first use with the system C++ compiler), instead of "
                                 "converting whole frames to RGB: auto uses it where it builds, on stops the run if it "
                                 "cannot, off keeps the PyTorch path", ("auto", "on", "off"))
    max_bad_fraction: float = _f(0.01, "stop the run when more than this share of the sampled videos could not "
                                       "be read (judged after 256 samples); bad ones are replaced until then")


@dataclass
class OptimConfig:
    lr: float = _f(1e-3, "base learning rate (per 256 clips when scale_lr is on)")
    scale_lr: bool = _f(True, "multiply lr, min_lr and warmup_lr by global_batch / 256")
    min_lr: float = _f(1e-5, "final learning rate of the cosine decay")
    warmup_lr: float = _f(1e-6, "learning rate at step 0 of the warmup")
    warmup_steps: int = _f(2685, "linear warmup steps")
    weight_decay: float = _f(0.05, "AdamW weight decay (not on norms, biases, tables, tokens)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.98, "AdamW beta2")
    eps: float = _f(1e-6, "AdamW epsilon")
    grad_clip: float = _f(5.0, "gradient-norm clip (0 disables)")


@dataclass
class TrainConfig:
    stage: int = _f(1, "pretraining stage: 1 (semantic-guided pixel reconstruction) or 2 (latent prediction "
                       "against the Stage 1 model); 2 applies the preset's Stage 2 settings")
    batch_size: int = _f(2048, "global batch in clips (split evenly over processes)")
    max_steps: int = _f(26850, "optimiser steps in the whole run")
    seed: int = _f(0, "seed for model init, data order and masks")
    precision: str = _f("auto", "bf16 autocast on GPU, fp32 on CPU under auto", ("auto", "bf16", "fp32"))
    device: str = _f("auto", "cuda when available, else cpu", ("auto", "cuda", "cpu"))
    attention: str = _f("auto", "attention backend: FlashAttention (FA4, FA3 or FA2, the newest installed for this "
                                "GPU), xformers, FlexAttention (block-sparse windows), cuDNN through SDPA, or SDPA "
                                "with PyTorch's choice; auto follows "
                                "this GPU's measured table (measured on first use and cached under "
                                "$IVN_FAST_CACHE, default ~/.cache/ivn_fast), SDPA on CPU",
                        ("auto", "flash_attn", "xformers", "flex", "cudnn", "sdpa"))
    kernels: str = _f("auto", "masked-token and diffusion-decoder ops: fused Triton kernels or the PyTorch "
                              "reference (auto: Triton on CUDA when importable, else torch)",
                      ("auto", "triton", "torch"))
    activation_checkpointing: str = _f("none", "recompute block activations in the backward instead of keeping "
                                               "them: every repeated block (full), every other one (selective), "
                                               "or every block's cheap elementwise work only, keeping its matrix "
                                               "products and attention outputs (op); or, with train.compile, let "
                                               "the compiler pick what each block recomputes to keep at most "
                                               "train.ac_budget of its activations (budget)", AC_MODES)
    ac_budget: float = _f(0.5, "under activation_checkpointing=budget: the share of each compiled block's "
                               "activations kept for backward (1 keeps what compile keeps anyway, 0 recomputes "
                               "all it can); torch.compile's memory-budget partitioner recomputes the cheapest "
                               "work first")
    compile: bool = _f(False, "torch.compile each repeated block (encoder, predictor, decoder, teacher layers) "
                              "in place; one compiled graph per block type")
    shard_teacher: bool = _f(False, "with several processes, shard the frozen teacher's weights with FSDP2 like the "
                                    "student's (for the 1B teacher) instead of keeping a whole copy on every process")
    profile: bool = _f(False, "record steps 4-6 with the torch profiler: a Chrome trace and the top operators in "
                              "OUTPUT_DIR/profile, the table also logged")
    log_every: int = _f(10, "steps between log lines and metric records")
    ckpt_every: int = _f(1000, "steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = _f(2, "newest checkpoints kept on disk")
    picture_every: int = _f(0, "steps between recon.png refreshes (0: only at the end)")
    tensorboard: bool = _f(True, "write TensorBoard events next to metrics.jsonl")
    progress: bool = _f(True, "show a progress bar")


@dataclass
class Config:
    model: ModelConfig = _section(ModelConfig)
    mask: MaskConfig = _section(MaskConfig)
    loss: LossConfig = _section(LossConfig)
    stage2: Stage2Config = _section(Stage2Config)
    data: DataConfig = _section(DataConfig)
    optim: OptimConfig = _section(OptimConfig)
    train: TrainConfig = _section(TrainConfig)
    output_dir: str = _f("runs/ivn", "where checkpoints, metrics and pictures go")


# --------------------------------------------------------------------------- presets

_VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "drop_path": 0.1}
_VIT_L = {"embed_dim": 1024, "depth": 24, "num_heads": 16, "drop_path": 0.2}
_MODERNBERT_L = {"kind": "modernbert", "path": "weights/ModernBERT-large", "num_layers": 5, "init": True}
_SIGLIP2_L = "weights/siglip2-large-patch16-256"
_SIGLIP2_1B = "weights/siglip2-giant-opt-patch16-256"


def _paper_run(encoder: dict, teacher: str, frames: int, batch: int, videos: int, epochs: int,
               warmup_epochs: int = 5) -> dict:
    """A preset on the paper's schedule: `epochs` over `videos` clips, the first `warmup_epochs`
    of them warming up."""
    per_epoch = videos // batch
    return {
        "model": {"encoder": encoder, "predictor": _MODERNBERT_L, "teacher": {"path": teacher}},
        "data": {"num_frames": frames, "size": 224},
        "train": {"batch_size": batch, "max_steps": per_epoch * epochs},
        "optim": {"warmup_steps": per_epoch * warmup_epochs},
    }


def _released_run(encoder: dict, mask_ratio: float, name: str) -> dict:
    """The released Stage 1 launch scripts, where they differ from the paper: mask ratio 0.75 (B)
    or 0.7 (L), 62 epochs with 7 of warmup (and a ViT-L that is built as a ViT-L: the script's
    model name builds a ViT-B)."""
    return {**_paper_run(encoder, _SIGLIP2_1B, 16, 2048, 1_100_000, 62, warmup_epochs=7),
            "mask": {"ratio": mask_ratio}, "output_dir": f"runs/{name}"}


PRESETS: dict[str, tuple[str, dict]] = {
    "tiny": (
        "CPU-sized default: tiny encoder, tiny ModernBERT-architecture predictor, the shipped tiny "
        "SigLIP teacher, synthetic clips; a few minutes on 2 cores",
        {
            "model": {
                "encoder": {"embed_dim": 128, "depth": 6, "num_heads": 2, "drop_path": 0.0},
                "predictor": {"path": str(ASSETS / "tiny_modernbert"), "num_layers": 2, "init": False},
                "decoder": {"width": 256, "depth": 3, "sampling_steps": 50},
                "teacher": {"num_layers": 3},
                "pool_heads": 2,
                "pool_dim": 128,
            },
            "data": {"num_frames": 8, "size": 112, "num_workers": 2},
            "optim": {"lr": 1.5e-3, "scale_lr": False, "min_lr": 1e-4, "warmup_lr": 1e-5, "warmup_steps": 30},
            "train": {"batch_size": 8, "max_steps": 300, "log_every": 10, "ckpt_every": 100},
            "output_dir": "runs/tiny",
        },
    ),
    "vit-b-ablation": (
        "paper ablation setting: ViT-B/14, 8 frames, SigLIP2-L teacher, batch 1024, 30 epochs of K710",
        {**_paper_run(_VIT_B, _SIGLIP2_L, 8, 1024, 660_000, 30), "output_dir": "runs/vit-b-ablation"},
    ),
    "vit-b": (
        "paper final Stage 1: ViT-B/14, 16 frames, SigLIP2-1B teacher, batch 2048, 50 epochs of K-Mash",
        {**_paper_run(_VIT_B, _SIGLIP2_1B, 16, 2048, 1_100_000, 50), "output_dir": "runs/vit-b"},
    ),
    "vit-l": (
        "paper final Stage 1: ViT-L/14, 16 frames, SigLIP2-1B teacher, batch 2048, 50 epochs of K-Mash",
        {**_paper_run(_VIT_L, _SIGLIP2_1B, 16, 2048, 1_100_000, 50), "output_dir": "runs/vit-l"},
    ),
    "vit-b-released": (
        "vit-b as the released launch script runs it: mask ratio 0.75, 62 epochs with 7 of warmup",
        _released_run(_VIT_B, 0.75, "vit-b-released"),
    ),
    "vit-l-released": (
        "vit-l as the released launch script runs it: mask ratio 0.7, 62 epochs with 7 of warmup",
        _released_run(_VIT_L, 0.7, "vit-l-released"),
    ),
}
DEFAULT_PRESET = "tiny"


def _paper_stage2(frames: int, batch: int, videos: int, epochs: int) -> dict:
    """Stage 2 on the paper's schedule: lr 1e-4 per 256 clips like Stage 1's 1e-3 (the released
    launcher scales both by batch / 256, min_lr too), no warmup."""
    return {
        "data": {"num_frames": frames},
        "train": {"batch_size": batch, "max_steps": videos // batch * epochs},
        "optim": {"lr": 1e-4, "warmup_steps": 0},
    }


# Applied over a preset when train.stage is 2 (before any file or command-line override).
STAGE2_PRESETS: dict[str, dict] = {
    "tiny": {"optim": {"lr": 5e-4, "warmup_steps": 10, "min_lr": 5e-5}, "train": {"max_steps": 200}},
    "vit-b-ablation": _paper_stage2(8, 1024, 660_000, 30),
    "vit-b": _paper_stage2(32, 2048, 1_100_000, 100),
    "vit-l": _paper_stage2(32, 1024, 1_100_000, 100),
    # the scripts: 101 epochs, the ViT-B one at 14 clips x 128 GPUs
    "vit-b-released": _paper_stage2(32, 1792, 1_100_000, 101),
    "vit-l-released": _paper_stage2(32, 1024, 1_100_000, 101),
}


# --------------------------------------------------------------------------- tree helpers


def fields_flat(cls: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field, type]]:
    """Every leaf field as (dotted name, field, resolved type), in declaration order."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.extend(fields_flat(tp, name + "."))
        else:
            out.append((name, f, tp))
    return out


def parse_value(text: str, tp: type, name: str) -> Any:
    """Turn command-line text into a field's type, or raise ConfigError naming the field."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return tp(text)
    except ValueError:
        raise ConfigError(f"{name}: cannot read {text!r} as {tp.__name__}") from None


def _merge(cfg: Any, tree: dict, prefix: str = "") -> None:
    names = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    for key, value in tree.items():
        key = key.replace("-", "_")
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{dotted}: no such config field")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a section, got {value!r}")
            _merge(current, value, dotted + ".")
            continue
        tp = hints[key]
        if isinstance(value, str) and tp is not str:
            value = parse_value(value, tp, dotted)
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, tp):
            raise ConfigError(f"{dotted}: expected {tp.__name__}, got {value!r}")
        setattr(cfg, key, value)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Put value at a dotted path of a nested dict."""
    *parents, leaf = dotted.replace("-", "_").split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def load_file(path: str) -> dict:
    """A YAML or TOML config file as a nested dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    text = p.read_text()
    if p.suffix == ".toml":
        return tomllib.loads(text)
    if p.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    raise ConfigError(f"--config: {path} must end in .yaml, .yml or .toml")


def build_config(preset: str = DEFAULT_PRESET, *trees: dict) -> Config:
    """Defaults, the preset, its Stage 2 settings when the trees ask for stage 2, then each tree
    in order (file, then command line)."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    probe = Config()
    for tree in (PRESETS[preset][1], *trees):
        _merge(probe, tree)
    if probe.train.stage != 2:
        return _select_source(probe)
    cfg = Config()
    for tree in (PRESETS[preset][1], STAGE2_PRESETS[preset], *trees):
        _merge(cfg, tree)
    return _select_source(cfg)


def _select_source(cfg: Config) -> Config:
    """A non-empty data.train_list means training on it, without also naming data.source."""
    if cfg.data.train_list:
        cfg.data.source = "list"
    return cfg


def run_dir(cfg: Config) -> Path:
    """Where a stage writes checkpoints, metrics and pictures: Stage 2 nests under Stage 1's output."""
    return Path(cfg.output_dir) / ("stage2" if cfg.train.stage == 2 else "")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(tree: dict) -> Config:
    cfg = Config()
    _merge(cfg, tree)
    return cfg


def dumps(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


# --------------------------------------------------------------------------- validation


def _check(ok: bool, name: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name} {message} (got {value!r})")


def validate(cfg: Config, *, check_paths: bool = True) -> None:
    """Reject a bad value or a missing weights directory before any work starts."""
    for name, f, _ in fields_flat():
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        if "choices" in f.metadata:
            _check(value in f.metadata["choices"], name, f"must be one of {list(f.metadata['choices'])}", value)
    e, m, d, t, o = cfg.model.encoder, cfg.mask, cfg.data, cfg.train, cfg.optim
    positive = {
        "model.encoder.embed_dim": e.embed_dim, "model.encoder.depth": e.depth,
        "model.encoder.num_heads": e.num_heads, "model.encoder.patch_size": e.patch_size,
        "model.predictor.num_layers": cfg.model.predictor.num_layers,
        "model.decoder.width": cfg.model.decoder.width, "model.decoder.depth": cfg.model.decoder.depth,
        "model.decoder.batch_mul": cfg.model.decoder.batch_mul,
        "model.decoder.sampling_steps": cfg.model.decoder.sampling_steps,
        "model.teacher.num_layers": cfg.model.teacher.num_layers,
        "model.pool_heads": cfg.model.pool_heads, "model.pool_dim": cfg.model.pool_dim,
        "data.num_frames": d.num_frames, "data.size": d.size, "data.synthetic_videos": d.synthetic_videos,
        "train.batch_size": t.batch_size, "train.max_steps": t.max_steps, "train.log_every": t.log_every,
        "train.ckpt_every": t.ckpt_every, "train.keep_checkpoints": t.keep_checkpoints,
        "optim.lr": o.lr,
    }
    for name, value in positive.items():
        _check(value > 0, name, "must be > 0", value)
    nonneg = {"model.encoder.num_cls": e.num_cls, "data.num_workers": d.num_workers,
              "optim.warmup_steps": o.warmup_steps, "optim.weight_decay": o.weight_decay,
              "optim.grad_clip": o.grad_clip, "optim.min_lr": o.min_lr, "optim.warmup_lr": o.warmup_lr,
              "train.picture_every": t.picture_every, "model.encoder.layerscale": e.layerscale}
    for name, value in nonneg.items():
        _check(value >= 0, name, "must be >= 0", value)
    _check(0.0 <= m.ratio < 1.0, "mask.ratio", "must be in [0, 1)", m.ratio)
    _validate_data(d, check_paths)
    _check(0.0 <= e.drop_path < 1.0, "model.encoder.drop_path", "must be in [0, 1)", e.drop_path)
    _check(e.embed_dim % e.num_heads == 0, "model.encoder.embed_dim", f"must be divisible by num_heads={e.num_heads}",
           e.embed_dim)
    _check(e.embed_dim % 16 == 0, "model.encoder.embed_dim", "must be a multiple of 16 (3D sine-cosine table)",
           e.embed_dim)
    _check(d.size % e.patch_size == 0, "data.size", f"must be a multiple of patch_size={e.patch_size}", d.size)
    _check(cfg.model.pool_heads > 0 and e.embed_dim % cfg.model.pool_heads == 0, "model.pool_heads",
           f"must divide model.encoder.embed_dim={e.embed_dim}", cfg.model.pool_heads)
    _check(cfg.model.teacher.num_layers <= e.depth, "model.teacher.num_layers",
           f"must be <= model.encoder.depth={e.depth}", cfg.model.teacher.num_layers)
    _check(0.0 < o.beta1 < 1.0 and 0.0 < o.beta2 < 1.0, "optim.beta1/beta2", "must be in (0, 1)",
           (o.beta1, o.beta2))
    _check(t.stage in (1, 2), "train.stage", "must be 1 or 2", t.stage)
    _check(t.activation_checkpointing != "budget" or t.compile, "train.activation_checkpointing",
           "budget is chosen by the compiler: it needs --train.compile true", t.activation_checkpointing)
    _check(0.0 <= t.ac_budget <= 1.0, "train.ac_budget", "must be in [0, 1]", t.ac_budget)
    s2 = cfg.stage2
    _check(0.0 < s2.momentum <= 1.0, "stage2.momentum", "must be in (0, 1]", s2.momentum)
    for name, value in (("stage2.small_scale", s2.small_scale), ("stage2.large_scale", s2.large_scale)):
        _check(0.0 < value <= 1.0, name, "must be in (0, 1]", value)
    for name, value in (("stage2.small_blocks", s2.small_blocks), ("stage2.large_blocks", s2.large_blocks),
                        ("stage2.aspect_min", s2.aspect_min)):
        _check(value > 0, name, "must be > 0", value)
    _check(s2.aspect_max >= s2.aspect_min, "stage2.aspect_max", f"must be >= stage2.aspect_min={s2.aspect_min}",
           s2.aspect_max)
    for name, value in (("stage2.max_keep", s2.max_keep), ("stage2.w_visible", s2.w_visible),
                        ("stage2.w_recon", s2.w_recon)):
        _check(value >= 0, name, "must be >= 0", value)
    if check_paths:
        if t.stage == 1 or s2.target == "siglip":
            _check_dir(cfg.model.teacher.path, "model.teacher.path", "config.json")
        if t.stage == 2 and s2.init:
            _check_dir(s2.init, "stage2.init", "state.pt")
        p = cfg.model.predictor
        if p.kind == "modernbert" and ((t.stage == 1 and p.init) or p.path):
            _check_dir(p.path, "model.predictor.path", "config.json")


def _validate_data(d: DataConfig, check_paths: bool) -> None:
    for name, value in (("data.stride", d.stride), ("data.min_frames", d.min_frames),
                        ("data.decode_threads", d.decode_threads)):
        _check(value > 0, name, "must be > 0", value)
    _check(d.num_classes >= 0, "data.num_classes", "must be >= 0", d.num_classes)
    _check(0.0 <= d.max_bad_fraction <= 1.0, "data.max_bad_fraction", "must be in [0, 1]", d.max_bad_fraction)
    _check(d.source != "list" or bool(d.train_list), "data.source", "list needs data.train_list", d.source)
    if d.decoder == "dali":
        from ivn_fast.data.dali import dali_available

        _check(dali_available(), "data.decoder", "dali needs NVIDIA DALI (pip install ivn-fast[gpu])", d.decoder)
    if check_paths and d.source == "list":
        try:
            for path, _ in parse_spec(d.train_list):
                _check(Path(path).exists(), "data.train_list", "names a list file or directory that does not exist",
                       path)
                if Path(path).is_file():
                    read_list(path, d.root, d.num_classes)  # a bad line or label stops the run here, named
        except ListError as e:
            raise ConfigError(f"data.train_list: {e}") from None


def _check_dir(path: str, name: str, must_hold: str) -> None:
    if not path:
        raise ConfigError(f"{name}: no directory given")
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{name}: directory not found: {path}")
    if not (p / must_hold).is_file():
        raise ConfigError(f"{name}: {path} holds no {must_hold}")
