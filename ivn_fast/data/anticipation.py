"""Action anticipation clips, as EPIC-KITCHENS-100 poses the task: the context that ends a fixed
time before an action starts, labelled with that action's verb, noun and (verb, noun) pair.

Annotations are EPIC-KITCHENS-100's CSV files (EPIC_100_train.csv, EPIC_100_validation.csv):
`video_id`, `start_timestamp` (HH:MM:SS.ff), `verb_class` and `noun_class` are read, and
`participant_id` where present (else the part of `video_id` before its `_`). The action classes
are the (verb, noun) pairs of the training segments; a validation segment whose pair never occurs
in training keeps action -1 (its verb and noun are still scored).

A context clip holds `frames` frames, one per 1/fps seconds, sampled sparsely (one per equal part
of the window, jittered in training) from [start - anticipation - frames / fps, start -
anticipation]. A segment that starts before `anticipation` seconds have passed has no context and
is left out, counted in the log.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from torch.utils.data import Dataset

from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.lists import VideoEntry, VideoList
from ivn_fast.data.synthetic import SyntheticVideos

log = logging.getLogger("ivn_fast")

COLUMNS = ("video_id", "start_timestamp", "verb_class", "noun_class")
VIDEO_PATTERN = "{participant_id}/videos/{video_id}.MP4"  # EPIC-KITCHENS-100's download layout
TARGET_KEYS = ("verb", "noun", "action")


@dataclass(frozen=True)
class Segment:
    path: str
    start: float  # seconds into the video where the action begins
    verb: int
    noun: int


def parse_timestamp(text: str) -> float:
    """Seconds of 'HH:MM:SS.ff' (or 'MM:SS.ff', or plain seconds)."""
    seconds = 0.0
    for part in text.strip().split(":"):
        seconds = 60 * seconds + float(part)
    return seconds


def read_segments(path: str, *, root: str = "", pattern: str = VIDEO_PATTERN) -> list[Segment]:
    """The annotated actions of one CSV file; a missing column or a bad row is a ValueError naming it."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: no column(s) {', '.join(missing)} (EPIC-KITCHENS-100's annotation CSV has them)")
        segments = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                video = row["video_id"].strip()
                participant = (row.get("participant_id") or video.split("_")[0]).strip()
                segment = Segment(os.path.join(root, pattern.format(participant_id=participant, video_id=video)),
                                  parse_timestamp(row["start_timestamp"]), int(row["verb_class"]),
                                  int(row["noun_class"]))
            except (ValueError, KeyError, AttributeError) as e:
                raise ValueError(f"{where}: cannot read this action ({type(e).__name__}: {e})") from None
            if min(segment.verb, segment.noun) < 0 or segment.start < 0:
                raise ValueError(f"{where}: classes and start time must be >= 0")
            segments.append(segment)
    if not segments:
        raise ValueError(f"{path}: no actions")
    return segments


class Actions:
    """The action classes: the (verb, noun) pairs seen in training, in sorted order."""

    def __init__(self, pairs: Sequence[tuple[int, int]]):
        self.pairs = sorted(set(pairs))
        self._index = {p: i for i, p in enumerate(self.pairs)}

    def __len__(self) -> int:
        return len(self.pairs)

    def index(self, verb: int, noun: int) -> int:
        """The action class of (verb, noun), or -1 for a pair training never saw."""
        return self._index.get((verb, noun), -1)


class AnticipationClips(Dataset):
    """Context clips [3, frames, size, size] of annotated actions, with their verb, noun and action."""

    def __init__(self, segments: Sequence[Segment], *, frames: int, size: int, fps: float, anticipation: float,
                 train: bool, seed: int, flip: bool = True):
        kept = [s for s in segments if s.start - anticipation > 0]
        if len(kept) < len(segments):
            log.info("%d of %d actions start within %.2f s of their video's start: no context, left out",
                     len(segments) - len(kept), len(segments), anticipation)
        if not kept:
            raise ValueError("no action leaves any context before it")
        self.segments = kept
        self.pairs = [(s.verb, s.noun) for s in kept]
        self.actions = Actions(self.pairs)
        # each entry's label is its row, so a replaced unreadable video brings its own classes
        entries = [VideoEntry(s.path, i, start=max(0.0, s.start - anticipation - frames / fps),
                              end=s.start - anticipation) for i, s in enumerate(kept)]
        self.clips = VideoClips(VideoList(entries), num_frames=frames, size=size, sampling="sparse", flip=flip,
                                seed=seed, train=train)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int) -> dict:
        item = self.clips[key]
        verb, noun = self.pairs[item["label"]]
        return {"video": item["video"], "verb": verb, "noun": noun, "action": self.actions.index(verb, noun),
                "skipped": item["skipped"]}


class SyntheticAnticipation(Dataset):
    """The built-in set's clips cut before their last `future` frames: verb the direction of motion,
    noun the shape."""

    def __init__(self, num_videos: int, frames: int, future: int, size: int, *, seed: int):
        self.clips = SyntheticVideos(num_videos, frames + future, size, seed=seed)
        self.frames = frames
        labels = [self.clips.labels(i) for i in range(num_videos)]
        self.pairs = [(lab["direction"], lab["shape"]) for lab in labels]
        self.actions = Actions(self.pairs)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int) -> dict:
        index = int(key) % len(self)  # a streamed probe's epoch keys: the clips stay as they are
        verb, noun = self.pairs[index]
        return {"video": self.clips[index]["video"][:, :self.frames], "verb": verb, "noun": noun,
                "action": self.actions.index(verb, noun)}


def class_counts(*datasets: AnticipationClips | SyntheticAnticipation) -> tuple[int, int]:
    """Verb and noun classes: one past the largest seen in any split."""
    verbs = max(v for d in datasets for v, _ in d.pairs) + 1
    nouns = max(n for d in datasets for _, n in d.pairs) + 1
    return verbs, nouns
