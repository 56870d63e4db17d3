"""Check a video list before a long run: decode every entry through the training path.

Each distinct video is opened, sampled, decoded and cut exactly as training would (without
replacing failures); the report gives totals, counts per reason and every bad entry, and can be
written as JSON. The exit status is 1 when any entry is bad, so scripts can gate a launch on it;
2 is a usage error or a list that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ivn_fast.config import DataConfig
from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.health import REASONS, BadVideo
from ivn_fast.data.lists import ListError, load_lists
from ivn_fast.data.sampling import MODES


class _Outcomes(Dataset):
    """What each distinct video gives: an empty reason when it decodes."""

    def __init__(self, clips: VideoClips):
        first: dict[str, int] = {}
        for i in range(len(clips.videos)):
            first.setdefault(clips.videos[i].path, i)
        self.clips, self.indices = clips, list(first.values())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, str]:
        index = self.indices[i]
        path = self.clips.videos[index].path
        try:
            self.clips.clip(index)
        except BadVideo as e:
            return {"path": path, "reason": e.reason, "detail": e.detail}
        return {"path": path, "reason": "", "detail": ""}


def check_list(clips: VideoClips, workers: int = 0, progress: bool = True) -> dict[str, Any]:
    """Decode every distinct video of `clips`; the report as a JSON-ready dict."""
    outcomes = _Outcomes(clips)
    loader = DataLoader(outcomes, batch_size=None, num_workers=workers)
    start = time.perf_counter()
    bad = []
    for item in tqdm(loader, total=len(outcomes), disable=not progress, desc="checking", unit="video"):
        if item["reason"]:
            bad.append(item)
    reasons = Counter(b["reason"] for b in bad)
    return {"videos": len(outcomes), "ok": len(outcomes) - len(bad), "bad": len(bad),
            "reasons": dict(reasons.most_common()), "bad_entries": bad,
            "seconds": round(time.perf_counter() - start, 3)}


def format_report(report: dict[str, Any]) -> str:
    n, bad = report["videos"], report["bad"]
    lines = [f"checked {n} videos in {report['seconds']:.1f} s: {report['ok']} ok, {bad} bad"
             f" ({100 * bad / max(n, 1):.1f}%)"]
    for reason, count in report["reasons"].items():
        lines.append(f"  {reason:<18} {count:>7}  {REASONS[reason]}")
    if report["bad_entries"]:
        lines.append("bad entries:")
        for b in report["bad_entries"]:
            lines.append(f"  {b['reason']:<18} {b['path']}" + (f"  ({b['detail']})" if b["detail"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = DataConfig()
    parser = argparse.ArgumentParser(prog="python -m ivn_fast.data check", description=__doc__.split("\n\n")[0])
    parser.add_argument("list", metavar="LIST", help="list files or directories, as data.train_list takes them")
    parser.add_argument("--workers", type=int, default=d.num_workers, help="decoding processes (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the report to this JSON file")
    parser.add_argument("--root", default=d.root, help="prefix for relative paths (data.root)")
    parser.add_argument("--num-frames", type=int, default=d.num_frames, help="frames per clip (default: %(default)s)")
    parser.add_argument("--size", type=int, default=d.size, help="clip side in pixels (default: %(default)s)")
    parser.add_argument("--sampling", choices=MODES, default=d.sampling, help="frame sampling (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=d.stride, help="dense sampling step (default: %(default)s)")
    parser.add_argument("--min-frames", type=int, default=d.min_frames,
                        help="fewer frames is too_short (default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=d.num_classes,
                        help="labels must lie in [0, N) (default: %(default)s, any)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("num_frames", "size", "stride", "min_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    try:
        videos = load_lists(args.list, root=args.root, num_classes=args.num_classes)
    except (ListError, OSError) as e:
        print(f"ivn_fast.data check: error: {e}", file=sys.stderr)
        return 2
    clips = VideoClips(videos, num_frames=args.num_frames, size=args.size, sampling=args.sampling,
                       stride=args.stride, min_frames=args.min_frames)
    report = check_list(clips, workers=args.workers, progress=not args.no_progress)
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if report["bad"] else 0
