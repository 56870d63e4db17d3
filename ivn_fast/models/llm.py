"""The frozen language model of the video-LLM evaluation: a causal LM and its tokenizer loaded from a
local directory (the paper connects Qwen2-7B), or a small built-in one that first learns the
synthetic captions' language from their text alone, then stays frozen like a pretrained LLM."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.models.text import word_tokenizer

log = logging.getLogger("ivn_fast")


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32):
    """The tokenizer and causal LM saved in a local directory (`save_pretrained`). Nothing is downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"language model directory not found: {path}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    return tokenizer, model


def builtin_causal_lm(words: Sequence[str], texts: Sequence[str], *, steps: int, seed: int, width: int = 128,
                      depth: int = 2, heads: int = 4, max_length: int = 48, batch: int = 64, lr: float = 3e-3):
    """A small Llama-style LM over `words`, trained for `steps` AdamW steps on next-token prediction over
    `texts` (drawn at random, from `seed`): a language model that knows the captions' language but has
    never seen a video."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer(words, max_length)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for _ in range(steps):
        picked = [texts[int(i)] for i in torch.randint(len(texts), (batch,), generator=g)]
        enc = tokenizer(picked, padding=True, return_tensors="pt")
        logits = model(**enc).logits[:, :-1]
        target = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    log.info("built-in language model: %d steps on %d texts, last loss %.3f", steps, len(texts), loss.item())
    return tokenizer, model.eval()


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
