"""Probe heads on frozen encoder tokens: V-JEPA's attentive probe, a linear probe, and the
readouts of the tracking and depth probes."""

from __future__ import annotations

import math

import torch
from torch import nn

from ivn_fast.models.heads import AttentionPool
from ivn_fast.models.layers import Mlp
from ivn_fast.models.patches import unpatchify

PROBE_KINDS = ("attentive", "linear")


class AttentiveProbe(nn.Module):
    """One learnable query cross-attends to the tokens (LayerNorm on keys and values), a residual
    on the query, a 4x MLP block, then a linear classifier: [B, S, C] -> [B, num_classes]. With
    several queries (a dense probe's one per output patch) each gives its own outputs: [B, Q, num_classes]."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, num_queries: int = 1):
        super().__init__()
        self.pool = AttentionPool(dim, num_heads, query="learned", num_queries=num_queries)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.head = nn.Linear(dim, num_classes)

    def read(self, tokens: torch.Tensor) -> torch.Tensor:
        """The queries after attending to the tokens and the MLP block: [B, dim] or [B, Q, dim]."""
        queries = self.pool.queries if self.pool.queries.shape[1] > 1 else self.pool.queries[:, 0]
        x = queries.to(tokens.dtype) + self.pool(tokens)
        return x + self.mlp(self.norm(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.read(tokens))


class AnticipationProbe(AttentiveProbe):
    """The action anticipation readout (the paper's EK100 probe): the encoder's context tokens (the first
    `context` rows, width `dim`) and the predictor's tokens of the future frames (the rest, width
    `future_dim`, projected to `dim`), each zero-padded to the wider width, are read by three learned
    queries of one attentive block, each with its own classifier: (verb, noun, action) logits. The
    inherited `head` is the verb's."""

    def __init__(self, dim: int, future_dim: int, context: int, classes: tuple[int, int, int], num_heads: int):
        super().__init__(dim, classes[0], num_heads, num_queries=3)
        self.dim, self.future_dim, self.context = dim, future_dim, context
        self.future_proj = nn.Linear(future_dim, dim) if future_dim else None
        self.noun_head = nn.Linear(dim, classes[1])
        self.action_head = nn.Linear(dim, classes[2])

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = tokens[:, :self.context, :self.dim]
        if self.future_proj is not None:
            x = torch.cat([x, self.future_proj(tokens[:, self.context:, :self.future_dim])], 1)
        verb, noun, action = self.read(x).unbind(1)
        return self.head(verb), self.noun_head(noun), self.action_head(action)


class LinearProbe(nn.Module):
    """A linear classifier on the mean of the tokens (after a parameter-free LayerNorm)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(tokens.mean(1)))


class TrackingProbe(nn.Module):
    """The paper's object-tracking probe (Scaling 4D's readout): each object's first-frame box is
    encoded into a query, one cross-attention layer reads the frozen tokens (the attentive probe's
    block, with the queries given), and a linear layer decodes the object's box in every later frame.

    Boxes are (x0, y0, x1, y1) in fractions of the frame. The query encoder is an MLP on the
    coordinates and their sines and cosines at `bands` octaves, since an MLP on four raw numbers
    resolves positions poorly. The decoded values are offsets from the first box and start at zero,
    so an untrained probe predicts a box that stays put: the baseline results are read against.
    """

    def __init__(self, dim: int, num_frames: int, num_heads: int, *, bands: int = 8):
        super().__init__()
        if num_frames < 2:
            raise ValueError(f"tracking needs at least 2 frames, got {num_frames}")
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(bands, dtype=torch.float32), persistent=False)
        self.box_encoder = nn.Sequential(nn.Linear(4 * (1 + 2 * bands), dim), nn.GELU(), nn.Linear(dim, dim))
        self.pool = AttentionPool(dim, num_heads, query="given")
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.head = nn.Linear(dim, 4 * (num_frames - 1))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """tokens [B, S, C], first-frame boxes [B, O, 4] -> boxes in frames 1..T-1, [B, O, T-1, 4]."""
        angles = (first[..., None] * self.freqs).flatten(-2)
        q = self.box_encoder(torch.cat([first, angles.sin(), angles.cos()], -1).to(tokens.dtype))
        x = q + self.pool(tokens, q)
        x = x + self.mlp(self.norm(x))
        return first[:, :, None] + self.head(x).unflatten(-1, (-1, 4)).to(first.dtype)


class DepthProbe(nn.Module):
    """Depth [B, T, H, W] from tokens [B, S, C]: one learned query per patch of the clip's token
    grid, each decoding that patch's p x p depths."""

    def __init__(self, dim: int, grid: tuple[int, int, int], patch: int, num_heads: int):
        super().__init__()
        self.grid, self.patch = grid, patch
        self.readout = AttentiveProbe(dim, patch * patch, num_heads, num_queries=math.prod(grid))

    def start_at(self, depth: float) -> None:
        """Start every patch's readout at `depth` metres."""
        with torch.no_grad():
            self.readout.head.bias.fill_(depth)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(self.readout(tokens), self.patch, self.grid, channels=1)[:, 0]


def build_probe(kind: str, dim: int, num_classes: int, num_heads: int) -> nn.Module:
    if kind == "attentive":
        return AttentiveProbe(dim, num_classes, num_heads)
    if kind == "linear":
        return LinearProbe(dim, num_classes)
    raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
