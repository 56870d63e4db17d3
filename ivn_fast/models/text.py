"""The text tower of the video-text (LiT) evaluation: a transformers text model with its tokenizer,
loaded from a local directory (the paper starts from MobileCLIP-B's text encoder), or a small
built-in one over the synthetic captions' words and a run's own; then a projection into the joint space."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# [EOS] is not id 2: CLIP's text model reads an eos id of 2 as its legacy "pool at the largest id" rule
SPECIALS = ("[PAD]", "[UNK]", "[MASK]", "[BOS]", "[EOS]")


def word_tokenizer(words: Sequence[str], max_length: int):
    """A whole-word tokenizer (lower case; words and punctuation runs split as captions.WORDS does) with
    [BOS] ... [EOS] around every text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate((*SPECIALS, *sorted(set(words) - set(SPECIALS))))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[
        ("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   bos_token="[BOS]", eos_token="[EOS]", model_max_length=max_length)


def builtin_text_model(words: Sequence[str], *, width: int = 128, depth: int = 2, heads: int = 4,
                       max_length: int = 32):
    """A small CLIP-style text transformer with random weights over `words`, and its tokenizer: the
    text tower of runs without a pretrained one (LiT trains it whole)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = word_tokenizer(words, max_length)
    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=depth, num_attention_heads=heads, max_position_embeddings=max_length,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return tokenizer, CLIPTextModel(cfg)


def load_text_model(path: str):
    """The tokenizer and text model saved in a local directory (`save_pretrained`); of a two-tower
    checkpoint (CLIP, SigLIP) its text side. Nothing is downloaded."""
    from transformers import AutoModel, AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"text model directory not found: {path}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    if hasattr(model, "text_model") and hasattr(model, "vision_model"):
        model = model.text_model
    return tokenizer, model


class TextTower(nn.Module):
    """Texts -> L2-normalised [B, dim] embeddings: the text model's pooled output (its own pooling:
    CLIP's end token, SigLIP's last token; the mean over real tokens for a model without one), then a
    linear projection."""

    def __init__(self, tokenizer, model: nn.Module, dim: int):
        super().__init__()
        self.tokenizer, self.model = tokenizer, model
        cfg = model.config
        self.max_length = min(tokenizer.model_max_length, getattr(cfg, "max_position_embeddings", 512))
        self.proj = nn.Linear(cfg.hidden_size, dim)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask [B, L], padded to the longest text (cut at the model's length)."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            m = mask[..., None].to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(self.proj(pooled), dim=-1)
