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
from collections.abc import Sequence
from dataclasses import dataclass

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


def synthetic_captions(videos: SyntheticVideos, index: int) -> list[str]:
    """Every template's caption of clip `index`: its shape, colour, size, direction and speed."""
    labels, look = videos.labels(index), videos.look(index)
    words = {"shape": SHAPES[labels["shape"]], "direction": DIRECTIONS[labels["direction"]],
             "speed": SPEEDS[labels["speed"]], "colour": COLOURS[look.colour], "size": SIZES[not look.small]}
    return [t.format(**words) for t in SYNTHETIC_TEMPLATES]


def synthetic_prompts(label: str) -> list[str]:
    """Zero-shot prompts of a synthetic label ("{}" its class name): the first template with every value
    of the other words, to be averaged (CLIP's prompt ensembling, over what the label leaves open)."""
    others = [k for k in _WORDS if k != label]
    return [SYNTHETIC_TEMPLATES[0].format(**dict(zip(others, values)), **{label: "{}"})
            for values in itertools.product(*(_WORDS[k] for k in others))]


def synthetic_vocabulary() -> list[str]:
    """Every word a synthetic caption or prompt can hold (the built-in tokenizer's words)."""
    fixed = (literal for t in SYNTHETIC_TEMPLATES for literal, *_ in string.Formatter().parse(t))
    text = " ".join((*fixed, *(w for words in _WORDS.values() for w in words)))
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


def read_captions(paths: Sequence[str], root: str = "") -> CaptionedVideos:
    """The videos and captions of caption files, read as one (see the module docstring)."""
    rows: dict[tuple[str, float, float], list[str]] = {}
    for where, record in (r for path in paths for r in _records(path)):
        if not isinstance(record, dict) or not isinstance(record.get("video"), str) or "caption" not in record:
            raise ListError(f"{where}: a record needs 'video' (a path) and 'caption'")
        try:
            start, end = float(record.get("start", -1.0)), float(record.get("end", -1.0))
        except (TypeError, ValueError):
            raise ListError(f"{where}: 'start' and 'end' must be seconds") from None
        if 0 <= end <= start:
            raise ListError(f"{where}: the window ends ({end:g} s) before it starts ({start:g} s)")
        video = record["video"] if os.path.isabs(record["video"]) or not root else os.path.join(root, record["video"])
        rows.setdefault((video, start, end), []).extend(_texts(record["caption"], where))
    if not rows:
        raise ListError(f"{', '.join(paths)}: no records")
    entries = [VideoEntry(video, row, "", start, end) for row, (video, start, end) in enumerate(rows)]
    return CaptionedVideos(VideoList(entries), list(rows.values()))
