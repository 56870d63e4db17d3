"""Video lists in the field's formats, mixed into one table of clips.

One line per video, in any of:

- ``path label`` (VideoMAE / UMT), space or comma separated; a first line whose label is not a
  number is a header; a line holding only a path has no label (-1);
- ``source path total_time start end label``, the released multi-source format: ``start`` and
  ``end`` (seconds) trim the video, -1 means the whole video; ``total_time`` is kept for
  reference (frame positions come from the file's own clock);
- ``frame_dir total_frames label`` (TSN / mmaction rawframes): a folder of frame images; the
  count is not kept (the folder's own images are counted when it is read);
- a directory instead of a file: every video under it, recursively, with no label.

Blank lines and lines starting with ``#`` are ignored; relative paths are joined onto the root
prefix. A list spec mixes several: ``k400.txt,ssv2.txt:2`` repeats every SSv2 clip twice per
epoch; a fractional weight takes a fixed seeded share of a list (0.5: half of it). A path listed
more than once, in one list or several, is kept at its first occurrence.

The table is stored as flat numpy arrays rather than Python objects, so DataLoader workers
forked from the main process share it without copying it page by page.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("ivn_fast")

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ts", ".ogv")
NO_LABEL = -1
MAX_LABEL = 2**31 - 1


class ListError(ValueError):
    """A list that cannot feed the run: unreadable (naming the file and line), empty, or too short."""


@dataclass(frozen=True)
class VideoEntry:
    path: str
    label: int = NO_LABEL
    source: str = ""
    start: float = -1.0  # seconds into the video where the clip's window begins; < 0: the beginning
    end: float = -1.0  # seconds where it ends; < 0: the end of the video


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _parse_line(line: str, where: str) -> VideoEntry | None:
    """One entry, or None for a line in no known format (a header, if it comes first)."""
    fields = line.split()
    if len(fields) >= 6:
        try:
            total, start, end = (float(x) for x in fields[-4:-1])
        except ValueError:
            pass
        else:
            label = _int(fields[-1])
            if label is None:
                raise ListError(f"{where}: label {fields[-1]!r} is not an integer")
            if not all(math.isfinite(v) for v in (total, start, end)):
                raise ListError(f"{where}: total_time, start and end must be finite numbers of seconds")
            whole = -1.0 in (total, start, end)
            if not whole and 0 <= end <= start:
                raise ListError(f"{where}: the window ends ({end:g} s) before it starts ({start:g} s)")
            return VideoEntry(" ".join(fields[1:-4]), label, fields[0], -1.0 if whole else start,
                              -1.0 if whole else end)
    if len(fields) == 3 and _int(fields[1]) is not None and _int(fields[2]) is not None:
        return VideoEntry(fields[0], int(fields[2]))  # rawframes: the count is the folder's business
    for sep in (",", None):
        parts = line.rsplit(sep, 1)
        if len(parts) == 2 and _int(parts[1].strip()) is not None:
            return VideoEntry(parts[0].strip(), int(parts[1]))
    if "," not in line and len(fields) == 1:
        return VideoEntry(fields[0])
    return None


def read_list(path: str | os.PathLike, root: str = "", num_classes: int = 0) -> list[VideoEntry]:
    """The entries of one list file; the source of lines without one is the file's stem.

    Labels must be -1 (none) or in [0, num_classes) (any >= 0 when num_classes is 0); a label
    outside is an error naming the line, since it would otherwise surface only mid-run.
    """
    p = Path(path)
    entries: list[VideoEntry] = []
    first = True
    number = 0
    try:
        with open(p, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first path
            for number, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                where = f"{p}:{number}"
                entry = _parse_line(line, where)
                if entry is None:
                    if first:
                        first = False
                        # loud where the line names a video: a real first entry may be lost
                        named = line.split()[0].lower().endswith(VIDEO_EXTENSIONS)
                        log.log(logging.WARNING if named else logging.INFO,
                                "%s: %r is not an entry; read as a header line", where, line)
                        continue
                    raise ListError(f"{where}: cannot read {line!r} as 'path label', 'frame_dir "
                                    "total_frames label' or 'source path total_time start end label'")
                first = False
                if entry.label != NO_LABEL and not 0 <= entry.label < (num_classes or MAX_LABEL + 1):
                    bound = f"[0, {num_classes})" if num_classes else f"[0, {MAX_LABEL}]"
                    raise ListError(f"{where}: label {entry.label} is outside the class range {bound} "
                                    "(data.num_classes; -1 marks a clip with no label)")
                video = entry.path if not root or os.path.isabs(entry.path) else os.path.join(root, entry.path)
                entries.append(VideoEntry(video, entry.label, entry.source or p.stem, entry.start, entry.end))
    except UnicodeDecodeError as e:
        raise ListError(f"{p}: not UTF-8 text after line {number} ({e.reason})") from None
    return entries


def scan_directory(path: str | os.PathLike) -> list[VideoEntry]:
    """Every video file under a directory (by extension), sorted, unlabelled, source = its name."""
    p = Path(path)
    found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
    return [VideoEntry(f, NO_LABEL, p.name) for f in found]


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """``a.txt,b.txt:2,videos/`` -> [(a.txt, 1.0), (b.txt, 2.0), (videos/, 1.0)]."""
    parts = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        path, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep:
            try:
                weight = float(tail)
            except ValueError:
                pass
            else:
                path = head
        if not (math.isfinite(weight) and weight > 0):
            raise ListError(f"{item}: weight must be a finite number > 0")
        parts.append((path, weight))
    if not parts:
        raise ListError(f"no list in {spec!r}")
    return parts


class VideoList:
    """The mixed, de-duplicated table of clips: entry i is self[i]."""

    def __init__(self, entries: list[VideoEntry], no_flip_sources: tuple[str, ...] = ()):
        if not entries:
            raise ListError("the video list is empty")
        encoded = [e.path.encode("utf-8") for e in entries]
        self._offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._paths = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.sources = sorted({e.source for e in entries})
        code = {s: i for i, s in enumerate(self.sources)}
        self._source = np.array([code[e.source] for e in entries], dtype=np.int32)
        self.labels = np.array([e.label for e in entries], dtype=np.int64)
        self._window = np.array([(e.start, e.end) for e in entries], dtype=np.float64)
        keys = tuple(k.lower() for k in no_flip_sources if k)
        self.flip_source = np.array([not any(k in s.lower() for k in keys) for s in self.sources], dtype=bool)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> VideoEntry:
        path = self._paths[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8")
        start, end = self._window[i]
        return VideoEntry(path, int(self.labels[i]), self.sources[self._source[i]], float(start), float(end))

    def flips(self, i: int) -> bool:
        """Whether clip i may be mirrored (not for sources where left and right carry meaning)."""
        return bool(self.flip_source[self._source[i]])


def load_lists(spec: str, *, root: str = "", num_classes: int = 0, no_flip_sources: tuple[str, ...] = (),
               seed: int = 0) -> VideoList:
    """Read, check, de-duplicate and weight every list in a spec (see the module docstring)."""
    seen: set[str] = set()
    mixed: list[VideoEntry] = []
    duplicates = 0
    for n, (path, weight) in enumerate(parse_spec(spec)):
        if os.path.isdir(path):
            entries = scan_directory(path)
        elif os.path.isfile(path):
            entries = read_list(path, root, num_classes)
        else:
            raise ListError(f"video list not found: {path}")
        unique = []
        for e in entries:
            if e.path in seen:
                duplicates += 1
                continue
            seen.add(e.path)
            unique.append(e)
        whole, frac = divmod(weight, 1.0)
        take = np.random.default_rng([seed, n]).permutation(len(unique))[:round(frac * len(unique))]
        added = unique * int(whole) + [unique[i] for i in sorted(take)]
        mixed.extend(added)
        if added:
            log.info("video list %s: %d clips, weight %g: %d per epoch", path, len(unique), weight, len(added))
        else:
            log.warning("video list %s: %d clips, weight %g: none taken", path, len(unique), weight)
    if duplicates:
        log.info("video lists: %d repeated paths dropped (first occurrence kept)", duplicates)
    return VideoList(mixed, no_flip_sources)
