"""Bad video files: why one was skipped, and when too many of them stop a run.

A file that cannot give a clip raises BadVideo with one of REASONS; the dataset replaces it and
records the skip in the sample it returns, so the counts reach the main process through the
DataLoader whatever worker met the file. SkipCounter adds them up there, logs each
(reason, path) once, and stops the run when the bad fraction of the whole run (summed over
processes, so every process stops at the same step) passes its threshold.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger("ivn_fast")

REASONS = {
    "missing": "file not found",
    "empty": "zero bytes",
    "unreadable": "no container could be opened (damaged header, not a video file)",
    "no_video": "no video stream (audio-only or data-only file)",
    "unsupported_codec": "no decoder for the video codec",
    "too_short": "fewer frames than data.min_frames",
    "truncated": "the data ends or breaks off before the frames the container lists",
    "corrupt": "frames fail to decode",
}
# skips are judged only once this many samples were attempted, so a few early failures on a
# small list do not stop a run that is otherwise fine
MIN_ATTEMPTS = 256


class BadVideo(Exception):
    """A file that cannot give a clip, with the reason (a key of REASONS) and what went wrong."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown bad-video reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class TooManyBadSamples(RuntimeError):
    """More of the data is unreadable than data.max_bad_fraction allows."""


def encode_skips(skips: Iterable[tuple[str, str, str]]) -> str:
    """(reason, path, detail) triples as one string: strings collate into a batch of any length."""
    return json.dumps([list(s) for s in skips])


class SkipCounter:
    """Bad samples seen by this process, by reason; raises TooManyBadSamples past the threshold."""

    def __init__(self, max_fraction: float, min_attempts: int = MIN_ATTEMPTS,
                 run_total: Callable[[list[int]], list[int]] = lambda counts: counts,
                 instead: str = "a replacement clip is used"):
        self.max_fraction, self.min_attempts, self.run_total = max_fraction, min_attempts, run_total
        self.instead = instead  # what happens to a skipped sample, for the log line
        self.attempted = 0
        self.reasons: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()

    @property
    def bad(self) -> int:
        return sum(self.reasons.values())

    def update(self, batch: Mapping[str, Any]) -> None:
        """Count one batch's samples and the skips that were replaced to make it."""
        skipped = batch.get("skipped")
        if skipped is None:
            return
        for text in skipped:
            self.attempted += 1
            for reason, path, detail in json.loads(text):
                self.attempted += 1
                self.reasons[reason] += 1
                if (reason, path) not in self._logged:
                    self._logged.add((reason, path))
                    log.warning("skipped %s (%s%s); %s", path, reason, f": {detail}" if detail else "",
                                self.instead)
        self.check()

    def check(self) -> None:
        attempted, bad = self.run_total([self.attempted, self.bad])
        if attempted < self.min_attempts or bad <= self.max_fraction * attempted:
            return
        by_reason = ", ".join(f"{r} {n}" for r, n in self.reasons.most_common())
        raise TooManyBadSamples(
            f"{bad} of {attempted} sampled videos ({bad / attempted:.1%}) could not be read, "
            f"more than data.max_bad_fraction={self.max_fraction} allows (this process: {by_reason}); "
            f"list them with `python -m ivn_fast.data check LIST` and fix or drop them")

    def summary(self) -> dict[str, int]:
        """Counts for the metrics log: bad_samples and one bad_<reason> entry per reason seen."""
        return {"bad_samples": self.bad, **{f"bad_{r}": n for r, n in sorted(self.reasons.items())}}
