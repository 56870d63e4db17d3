"""Video-LLM evaluation of a frozen encoder: the paper's chat-model probe (VideoChat-Flash's first
stage), where only an MLP connector between the frozen encoder and a frozen language model trains.

    python -m ivn_fast.vlm --checkpoint CKPT --train-list synthetic:captions --val-list synthetic:captions \\
        --mcq-list synthetic:mcq [--plot PNG] [--json OUT]
    torchrun --nproc-per-node 8 -m ivn_fast.vlm --checkpoint CKPT --llm /models/qwen2-7b \\
        --train-list webvid.jsonl,smit.jsonl --val-list msrvtt_val.json --mcq-list mvbench.json --root /data

Each frame's patch tokens are average-pooled to `--tokens-per-frame` tokens and a two-layer GELU MLP
(LLaVA's projector) maps them into the language model's input space, in front of the instruction
(`--instruction`) and the caption. The connector learns to make the frozen model say the caption:
next-token cross-entropy on the caption's tokens only. `--llm` is a local directory holding a
causal language model and its tokenizer (`save_pretrained`; the paper connects Qwen2-7B); nothing is
downloaded. `builtin` (the default) is a small Llama-style model that first learns the synthetic
captions' language from the training captions' text alone (`--lm-steps`), then stays frozen: each
caption follows the instruction and another phrasing of the same clip's caption, so the model
learns to say again what came before it, the use of context a pretrained LLM brings.

Each epoch ends with the validation captions' loss per token. At the end, `--mcq-list` is answered:
each option is scored by the frozen model's mean log-probability per token after the clip and the
question, and the best-scored one is the answer (MVBench's multiple choice, scored by likelihood).
The result also gives the accuracy without the clip (`blind_accuracy`: the language model's prior
over the options), which the connector has to beat. `synthetic:mcq[:CLIPS]` asks, for each clip,
which of four captions is its own: the true one and three with its shape, colour, direction or
speed changed (the word asked about goes round the clips; speed has three values, so three
options). MCQ files are JSON or JSONL records of a video, its "question", "options" (or
"candidates") and "answer" (an index or the option's text).

Caption lists, features, processes and precision work as in `ivn_fast.lit`. `--plot` draws the
curves and PLOT-captions.png: validation clips with the caption the model generates (greedy).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.data.captions import ASKED, Question, read_questions, synthetic_question, vocabulary
from ivn_fast.data.lists import ListError
from ivn_fast.data.transforms import denormalize
from ivn_fast.features import Source
from ivn_fast.fit import Batches, fit
from ivn_fast.lit import CAPTION_LISTS, Captioned, caption_task, draw_caption
from ivn_fast.models.encoder import VideoEncoder
from ivn_fast.models.layers import Mlp
from ivn_fast.models.llm import builtin_causal_lm, freeze, load_causal_lm
from ivn_fast.probe import (SEEDS, SyntheticViews, Task, add_clip_options, add_device_options, add_feature_options,
                            add_fit_options, add_input_options, check_at_least_one, clip_shape, open_encoder,
                            parse_synthetic, report, sources, start_processes, video_task)
from ivn_fast.train.distributed import World, data_parallel, shutdown, sum_over_ranks
from ivn_fast.viz import save_clip_grid, save_curves

log = logging.getLogger("ivn_fast")

# VideoChat-Flash's first stage at toy scale: AdamW at this rate, no decay, cosine
LR, WEIGHT_DECAY, BATCH, EPOCHS, LM_STEPS = 1e-3, 0.0, 32, 10, 400
INSTRUCTION = "describe the video ."
GENERATED_WORDS = 16  # greedy decoding length of the picture's captions


@dataclasses.dataclass(frozen=True)
class Asked:
    """A split of multiple-choice items: the task (its items' task.label key holds the item's row) and the items."""

    task: Task
    questions: list[Question]


def mcq_task(spec: str, args: argparse.Namespace, frames: int, size: int) -> Asked:
    """'synthetic:mcq[:CLIPS]' (a clip of its own seed, which of four captions is its own) or MCQ files."""
    if spec.split(":")[0] == "synthetic":
        _, clips = parse_synthetic(spec, "mcq", ("mcq",))
        data = SyntheticViews(clips, frames, size, seed=SEEDS["mcq"])
        described = {"data": "synthetic questions", "clips": clips, "seed": SEEDS["mcq"], "frames": frames,
                     "size": size}
        questions = [synthetic_question(data.clips, i, args.instruction) for i in range(clips)]
        return Asked(Task(data, "index", 0, described), questions)
    try:
        videos, questions = read_questions(spec.split(","), args.root)
    except ListError as e:
        raise ValueError(f"--mcq-list: {e}") from None
    task = video_task(videos, "val", "label", 0, {"data": "questions", "lists": spec.split(",")}, frames=frames,
                      size=size, segments=1, crops=1, sampling=args.sampling, stride=args.stride, seed=args.seed,
                      flip=False)
    return Asked(task, questions)


class Connector(nn.Module):
    """Frozen tokens [B, S, C] -> language-model inputs [B, P, H]: each frame's patch grid average-pooled
    to side x side tokens (the CLS tokens left out), then a two-layer GELU MLP."""

    def __init__(self, width: int, lm_width: int, grid: tuple[int, int, int], num_cls: int, side: int):
        super().__init__()
        self.grid, self.num_cls, self.side = grid, num_cls, side
        self.mlp = Mlp(width, lm_width, lm_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, c = tokens.shape
        t, h, w = self.grid
        frames = tokens[:, self.num_cls:].reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(frames, self.side).flatten(2).transpose(1, 2).reshape(b, -1, c)
        return self.mlp(pooled)


class VideoLLM(nn.Module):
    """The connector (trained) in front of a frozen causal language model."""

    def __init__(self, connector: Connector, lm: nn.Module):
        super().__init__()
        self.connector, self.lm = connector, freeze(lm)

    def train(self, mode: bool = True) -> VideoLLM:
        self.connector.train(mode)  # the language model stays in eval mode (no dropout): it is frozen
        return self

    def forward(self, tokens: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities [B] of the target tokens of ids [B, L] (mask: real tokens), after
        the clip's tokens (None: no clip), and their counts [B]."""
        text = self.lm.get_input_embeddings()(ids)
        if tokens is None:
            embeds, full_mask, start = text, mask, 0
        else:
            visual = self.connector(tokens).to(text.dtype)
            embeds = torch.cat([visual, text], 1)
            full_mask = torch.cat([mask.new_ones(visual.shape[:2]), mask], 1)
            start = visual.shape[1]
        logits = self.lm(inputs_embeds=embeds, attention_mask=full_mask).logits[:, start:-1].float()
        scored = target[:, 1:] & mask[:, 1:].bool()
        logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        return (logp * scored).sum(1), scored.sum(1)


def text_batch(tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """ids and mask [B, L] of each prompt followed by its answer, and which tokens are the answer's (after
    the prompt's own tokens: the longest prefix the two tokenisations share)."""
    full = tokenizer([f"{p} {a}" for p, a in zip(prompts, answers)], padding=True, return_tensors="pt")
    ids, mask = full["input_ids"], full["attention_mask"]
    target = torch.zeros_like(ids, dtype=torch.bool)
    for i, prompt in enumerate(tokenizer(list(prompts))["input_ids"]):
        row = ids[i].tolist()
        shared = next((j for j, (a, b) in enumerate(zip(prompt, row)) if a != b), min(len(prompt), len(row)))
        target[i, shared:] = mask[i, shared:].bool()
    return ids, mask, target


def caption_batches(batches: Batches, captions: list[list[str]], tokenizer, instruction: str, seed: int) -> Batches:
    """(tokens, rows) batches as (tokens, ids, mask, target) of the instruction and one caption per clip."""

    def epoch(e: int) -> Iterator[tuple[torch.Tensor, ...]]:
        for tokens, rows in batches(e):
            texts = [draw_caption(captions[r], seed, e, r) for r in rows.tolist()]
            yield tokens, *text_batch(tokenizer, [instruction] * len(texts), texts)

    return epoch


@torch.no_grad()
def caption_loss(model: VideoLLM, source: Source, captions: list[list[str]], tokenizer, instruction: str,
                 device: torch.device) -> float:
    """Mean negative log-likelihood per token of every clip's first caption, over all processes."""
    model.eval()
    total, count = 0.0, 0.0
    for tokens, rows in source.batches():
        batch = text_batch(tokenizer, [instruction] * len(rows), [captions[r][0] for r in rows.tolist()])
        logp, n = model(tokens[:, 0].to(device), *(t.to(device) for t in batch))
        total, count = total - logp.sum().item(), count + n.sum().item()
    total, count = sum_over_ranks([total, count])
    return total / max(count, 1.0)


@torch.no_grad()
def answer(model: VideoLLM, source: Source, questions: list[Question], tokenizer, device: torch.device) -> dict:
    """Multiple-choice accuracy: each option scored by its mean log-probability per token after the clip
    and the prompt; per asked word too where the items say (synthetic ones); and, from the same pass,
    the accuracy without the clip (`blind_accuracy`)."""
    model.eval()
    kinds = ("", *ASKED)
    right, seen, blind = [0] * len(kinds), [0] * len(kinds), 0
    for tokens, rows in source.batches():
        items = [questions[r] for r in rows.tolist()]
        repeats = torch.tensor([len(q.options) for q in items])
        batch = [t.to(device) for t in text_batch(tokenizer, [q.prompt for q in items for _ in q.options],
                                                  [o for q in items for o in q.options])]

        def picks(visual: torch.Tensor | None) -> list[int]:
            logp, n = model(visual, *batch)
            return [int(s.argmax()) for s in (logp / n.clamp(min=1)).cpu().split(repeats.tolist())]

        seeing = picks(tokens[:, 0].repeat_interleave(repeats, 0).to(device))
        for q, pick, guess in zip(items, seeing, picks(None)):
            blind += int(guess == q.answer)
            for i in {0, kinds.index(q.kind)}:  # every item, and its word's own count
                right[i] += int(pick == q.answer)
                seen[i] += 1
    totals = sum_over_ranks(right + seen + [blind])
    right, seen = totals[:len(kinds)], totals[len(kinds):2 * len(kinds)]
    return {"accuracy": right[0] / max(seen[0], 1), "questions": seen[0],
            "blind_accuracy": totals[-1] / max(seen[0], 1)} | {
        f"accuracy_{k}": right[i] / seen[i] for i, k in enumerate(kinds) if k and seen[i]}


@torch.no_grad()
def generate(model: VideoLLM, tokens: torch.Tensor, tokenizer, instruction: str, device: torch.device,
             words: int = GENERATED_WORDS) -> list[str]:
    """Greedy continuations of the instruction after clips' tokens [B, S, C], up to the end token."""
    model.eval()
    prompt = tokenizer([instruction] * len(tokens), return_tensors="pt")["input_ids"]
    ends = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    prompt = prompt[:, :-1] if int(prompt[0, -1]) in ends else prompt  # the model's own end token comes last
    visual = model.connector(tokens.to(device))
    ids = prompt.to(device)
    for _ in range(words):
        embeds = torch.cat([visual.to(model.lm.dtype), model.lm.get_input_embeddings()(ids)], 1)
        ids = torch.cat([ids, model.lm(inputs_embeds=embeds).logits[:, -1:].argmax(-1)], 1)
    out = []
    for row in ids[:, prompt.shape[1]:].tolist():
        cut = next((i for i, t in enumerate(row) if t in ends), len(row))
        out.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.vlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser, CAPTION_LISTS)
    parser.add_argument("--llm", default="builtin",
                        help="local directory of a causal language model and its tokenizer, or builtin: a small one "
                             "trained first on the training captions' text")
    parser.add_argument("--lm-steps", type=int, default=LM_STEPS, help="training steps of the built-in language model")
    parser.add_argument("--mcq-list", default="",
                        help="answer these multiple-choice items at the end: synthetic:mcq[:CLIPS] or MCQ files "
                             "(.json / .jsonl, comma-separated)")
    parser.add_argument("--tokens-per-frame", type=int, default=16,
                        help="each frame's patch grid is average-pooled to this many tokens (a square number)")
    parser.add_argument("--instruction", default=INSTRUCTION, help="the text between the clip and its caption")
    add_fit_options(parser, "the connector", epochs=EPOCHS, batch=BATCH, lr=LR, weight_decay=WEIGHT_DECAY)
    add_clip_options(parser)
    add_feature_options(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the connector, the built-in language model and the data order")
    add_device_options(parser, "the frozen encoder's forward and the language model's (a loaded one is held in "
                               "bf16 then); the connector's weights and optimiser stay float32")
    parser.add_argument("--json", type=Path, help="write the result, with the settings it ran, here")
    parser.add_argument("--plot", type=Path,
                        help="draw the curves here (PNG): validation caption loss and training loss per epoch; "
                             "and PLOT-captions.png, validation clips with the captions the model generates")
    return parser


def language_model(args: argparse.Namespace, train: Captioned, device: torch.device):
    """The frozen language model of --llm, and its tokenizer (padding on the right: targets follow prompts).
    The built-in one's words are the synthetic ones and its training texts'."""
    if args.llm == "builtin":  # each caption after the instruction and another of the clip's: it learns to read back
        rng = np.random.default_rng(args.seed)
        texts = [f"{captions[rng.integers(len(captions))]} {args.instruction} {c}" for captions in train.captions
                 for c in captions]
        tokenizer, lm = builtin_causal_lm(vocabulary(texts), texts, steps=args.lm_steps, seed=args.seed)
    else:
        tokenizer, lm = load_causal_lm(args.llm, dtype=args.amp or torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer, lm.to(device)


def train_vlm(args: argparse.Namespace, encoder: VideoEncoder, splits: dict[str, Captioned], mcq: Asked | None,
              grid: tuple[int, int, int], device: torch.device, world: World) -> dict:
    """Train the connector on the training captions; the validation caption loss after each epoch, the
    multiple-choice accuracy (and the blind one) at the end; with --plot, the curves and the captions."""
    tasks = {split: c.task for split, c in splits.items()} | ({"mcq": mcq.task} if mcq else {})
    source, mode, _ = sources(args, encoder, tasks, device, world)
    tokenizer, lm = language_model(args, splits["train"], device)
    torch.manual_seed(args.seed)
    side = round(args.tokens_per_frame ** 0.5)
    model = VideoLLM(Connector(encoder.cfg.embed_dim, lm.config.hidden_size, grid, encoder.cfg.num_cls, side), lm)
    model.connector.to(device)
    batches = caption_batches(source["train"].epochs(args.batch, args.seed), splits["train"].captions, tokenizer,
                              args.instruction, args.seed)

    def loss(m: nn.Module, tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
             target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=args.amp or torch.float32, enabled=args.amp is not None):
            logp, n = m(tokens, ids, mask, target)
        # per caption token of the whole batch: DDP's mean over processes of each one's share
        tokens_in_batch = sum_over_ranks([float(n.sum())])[0]
        return -logp.sum() * world.size / max(tokens_in_batch, 1.0)

    def validate(_: nn.Module) -> float:
        return caption_loss(model, source["val"], splits["val"].captions, tokenizer, args.instruction, device)

    opt = torch.optim.AdamW(model.connector.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    curve, losses = fit(data_parallel(model, world), batches, source["train"].steps(args.batch), loss, validate,
                        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, device=device, optimizer=opt)
    record = {"curve": curve, "train_loss": [v / world.size for v in sum_over_ranks(losses)], "features": mode,
              "visual_tokens": grid[0] * side * side}
    if mcq is not None:
        record["mcq"] = answer(model, source["mcq"], mcq.questions, tokenizer, device)
    if args.plot and world.is_main:
        save_curves({"validation caption loss": {"per token": curve}, "training loss": {"per token": losses}},
                    args.plot, f"video-LLM connector, {'random encoder' if args.random_init else args.checkpoint}")
        tokens, rows = source["val"].first(4)
        said = generate(model, tokens[:, 0], tokenizer, args.instruction, device)
        data = splits["val"].task.data
        clips = torch.stack([denormalize(_first_view(data[r]["video"]), channel_dim=0) for r in rows.tolist()])
        titles = [f'says "{s}"; true "{splits["val"].captions[r][0]}"' for s, r in zip(said, rows.tolist())]
        save_clip_grid({"clip": clips}, args.plot.with_name(f"{args.plot.stem}-captions.png"), clips=len(clips),
                       titles=titles)
    return record


def _first_view(video: torch.Tensor) -> torch.Tensor:
    return video if video.dim() == 4 else video[0]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_at_least_one(args, ("epochs", "batch", "stride", "tokens_per_frame"))
        args.segments = args.crops = 1  # one view per clip: the clip is the language model's input
        args.flip = False
        if round(args.tokens_per_frame ** 0.5) ** 2 != args.tokens_per_frame:
            raise ValueError(f"--tokens-per-frame {args.tokens_per_frame} is not a square number")
        if args.llm != "builtin" and not Path(args.llm).is_dir():
            raise ValueError(f"--llm {args.llm}: not a directory (save_pretrained writes one)")
        device, world = start_processes(args)
        encoder = open_encoder(args, device, world)
        frames, size = clip_shape(args, encoder)
        grid = (frames, size // encoder.cfg.patch_size, size // encoder.cfg.patch_size)
        if args.tokens_per_frame > grid[1] * grid[2]:
            raise ValueError(f"--tokens-per-frame {args.tokens_per_frame} exceeds a frame's {grid[1] * grid[2]} tokens")
        splits = {split: caption_task(spec, split, args, frames, size)
                  for split, spec in (("train", args.train_list), ("val", args.val_list))}
        mcq = mcq_task(args.mcq_list, args, frames, size) if args.mcq_list else None
    except (ValueError, FileNotFoundError) as e:
        print(f"ivn_fast.vlm: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        record = train_vlm(args, encoder, splits, mcq, grid, device, world)
    finally:
        shutdown()
    if not world.is_main:
        return 0
    record.update({"frames": frames, "size": size, "data": {s: c.task.spec for s, c in splits.items()} |
                   ({"mcq": mcq.task.spec} if mcq else {})})
    summary = (f"video-LLM connector ({args.llm} language model{', random encoder' if args.random_init else ''}): "
               f"validation caption loss {record['curve'][-1]:.3f} per token")
    if mcq is not None:
        m = record["mcq"]
        summary += (f"; multiple choice {m['accuracy']:.3f} over {m['questions']} items (blind "
                    f"{m['blind_accuracy']:.3f})")
    report(args, record, summary, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
