"""Videos with captions, for the video-text (LiT) evaluation: caption files in the field's format, and
captions of the built-in synthetic clips.

A caption file is JSON (a list of records, as UMT's and InternVideo's annotation files are) or JSONL
(one record per line). A record names a video and its caption or captions:

    {"video": "msrvtt/video7010.mp4", "caption": "a man is singing on stage"}
    {"video": "anet/v_abc.mp4", "caption": ["a dog runs", "it jumps"], "start": 4.0, "end": 19.5}

`start` and `end` (seconds) cut a window out of the video. Records of the same video and window
are merged into one video with all their captions (MSR-VTT's training file lists each of a video's
twenty captions as its own record). Relative paths are joined onto the root.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ivn_fast.data.lists import ListError, VideoEntry, VideoList
from ivn_fast.data.synthetic import COLOURS, DIRECTIONS, SHAPES, SPEEDS, SyntheticVideos

# Captions of a synthetic clip; training draws one per clip and epoch, validation uses the first.
SYNTHETIC_TEMPLATES = (
    "a {size} {colour} {shape} moving {direction} at {speed} speed",
    "a {speed} {colour} {shape} heading {direction}",
    "{size} {shape} in {colour}, going {direction}, {speed}",
)
SIZES = ("small", "large")
WORDS = re.compile(r"\w+|[^\w\s]+")  # how a caption splits into words (the built-in tokenizer's rule)


_WORDS = {"shape": SHAPES, "direction": DIRECTIONS, "speed": SPEEDS, "colour": COLOURS, "size": SIZES}


def _words(videos: SyntheticVideos, index: int) -> dict[str, str]:
    """What clip `index` shows, word by word: its shape, colour, size, direction and speed."""
    labels, look = videos.labels(index), videos.look(index)
    return {"shape": SHAPES[labels["shape"]], "direction": DIRECTIONS[labels["direction"]],
            "speed": SPEEDS[labels["speed"]], "colour": COLOURS[look.colour], "size": SIZES[not look.small]}


def synthetic_captions(videos: SyntheticVideos, index: int) -> list[str]:
    """Every template's caption of clip `index`."""
    return [t.format(**_words(videos, index)) for t in SYNTHETIC_TEMPLATES]


@dataclass(frozen=True)
class Question:
    """A multiple-choice item: the prompt, the options, the right one's index, and the word it asks about
    (synthetic items)."""

    prompt: str
    options: list[str]
    answer: int
    kind: str = ""


# the words a synthetic question asks about, in turn over the clips
ASKED = ("shape", "colour", "direction", "speed")


def synthetic_question(videos: SyntheticVideos, index: int, prompt: str, options: int = 4) -> Question:
    """Which caption is clip `index`'s: its first caption among up to `options` with one word changed
    (the shape, colour, direction or speed, in turn over the clips), in an order drawn from the index."""
    words = _words(videos, index)
    kind = ASKED[index % len(ASKED)]
    rng = np.random.default_rng([index, 17])
    others = [w for w in _WORDS[kind] if w != words[kind]]
    picked = [words[kind]] + [others[i] for i in rng.permutation(len(others))[:options - 1]]
    order = rng.permutation(len(picked))
    captions = [SYNTHETIC_TEMPLATES[0].format(**{**words, kind: picked[i]}) for i in order]
    return Question(prompt, captions, int(np.flatnonzero(order == 0)[0]), kind)


def synthetic_prompts(label: str) -> list[str]:
    """Zero-shot prompts of a synthetic label ("{}" its class name): the first template with every value
    of the other words, to be averaged (CLIP's prompt ensembling, over what the label leaves open)."""
    others = [k for k in _WORDS if k != label]
    return [SYNTHETIC_TEMPLATES[0].format(**dict(zip(others, values)), **{label: "{}"})
            for values in itertools.product(*(_WORDS[k] for k in others))]


def vocabulary(texts: Iterable[str] = ()) -> list[str]:
    """Every word a synthetic caption or prompt can hold, and those of `texts` (a run's captions and
    prompts): the words of the built-in text models."""
    fixed = (literal for t in SYNTHETIC_TEMPLATES for literal, *_ in string.Formatter().parse(t))
    text = " ".join((*fixed, *(w for words in _WORDS.values() for w in words), *texts))
    return sorted(set(WORDS.findall(text.lower())))


@dataclass(frozen=True)
class CaptionedVideos:
    """Videos (entry i's label is i, so a replaced video brings its own captions) and their captions."""

    videos: VideoList
    captions: list[list[str]]


def _records(path: str) -> list[tuple[str, dict]]:
    """(where, record) of a JSON list or a JSONL file."""
    if not os.path.isfile(path):
        raise ListError(f"caption file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ListError(f"{path}: not valid JSON ({e})") from None
        return [(f"{path}: record {i + 1}", r) for i, r in enumerate(records)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ListError(f"{path}:{n}: not valid JSON ({e})") from None
    return out


def _texts(caption: object, where: str) -> list[str]:
    texts = [caption] if isinstance(caption, str) else caption
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ListError(f"{where}: 'caption' must be a non-empty string or list of non-empty strings")
    return [t.strip() for t in texts]


def _window(record: dict, where: str) -> tuple[float, float]:
    try:
        start, end = float(record.get("start", -1.0)), float(record.get("end", -1.0))
    except (TypeError, ValueError):
        raise ListError(f"{where}: 'start' and 'end' must be seconds") from None
    if 0 <= end <= start:
        raise ListError(f"{where}: the window ends ({end:g} s) before it starts ({start:g} s)")
    return start, end


def read_captions(paths: Sequence[str], root: str = "") -> CaptionedVideos:
    """The videos and captions of caption files, read as one (see the module docstring)."""
    rows: dict[tuple[str, float, float], list[str]] = {}
    for where, record in (r for path in paths for r in _records(path)):
        if not isinstance(record, dict) or not isinstance(record.get("video"), str) or "caption" not in record:
            raise ListError(f"{where}: a record needs 'video' (a path) and 'caption'")
        start, end = _window(record, where)
        video = record["video"] if os.path.isabs(record["video"]) or not root else os.path.join(root, record["video"])
        rows.setdefault((video, start, end), []).extend(_texts(record["caption"], where))
    if not rows:
        raise ListError(f"{', '.join(paths)}: no records")
    entries = [VideoEntry(video, row, "", start, end) for row, (video, start, end) in enumerate(rows)]
    return CaptionedVideos(VideoList(entries), list(rows.values()))


def read_questions(paths: Sequence[str], root: str = "") -> tuple[VideoList, list[Question]]:
    """Multiple-choice items of JSON or JSONL files (MVBench's layout): records of a video, its
    "question", its "options" (or "candidates") and the "answer" (an index, or the right option's
    text), with an optional window ("start", "end"). Entry i's label is i."""
    entries, questions = [], []
    for where, record in (r for path in paths for r in _records(path)):
        if not isinstance(record, dict) or not isinstance(record.get("video"), str):
            raise ListError(f"{where}: a record needs 'video' (a path)")
        options = record.get("options", record.get("candidates"))
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(options, list) or len(options) < 2 or \
                not all(isinstance(o, str) and o.strip() for o in options):
            raise ListError(f"{where}: a record needs a 'question' and two or more 'options'")
        if isinstance(answer, str) and answer in options:
            answer = options.index(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
            raise ListError(f"{where}: 'answer' must be an option's index or its text, got {answer!r}")
        start, end = _window(record, where)
        video = record["video"] if os.path.isabs(record["video"]) or not root else os.path.join(root, record["video"])
        entries.append(VideoEntry(video, len(entries), "", start, end))
        questions.append(Question(question.strip(), [o.strip() for o in options], answer))
    if not entries:
        raise ListError(f"{', '.join(paths)}: no records")
    return VideoList(entries), questions
