"""CPU decoding with PyAV: open a file, count its frames, read the frames a clip needs.

Frame k of a video means the frame shown at time start + k / fps, fps being the stream's average
rate: on constant-rate video that is the k-th frame, on variable-rate video the frame on screen
at that moment, so a clip spans the same stretch of time either way.

Reading decodes only what the wanted frames depend on. Packets are demuxed (cheap: no
decoding) and held one group of pictures (keyframe to keyframe) at a time; a group is decoded
only if a wanted frame falls in it, and only up to the last wanted frame. A jump of more than
SEEK_GAP_S seconds seeks instead of demuxing through, so long or trimmed videos are read only
near the frames used. Frames come back upright (rotation metadata applied) as RGB uint8.

Every failure is a BadVideo with its reason (see ivn_fast.data.health).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import av
import numpy as np

from ivn_fast.data.health import BadVideo

SEEK_GAP_S = 2.0
# a stream that ends this much before a wanted frame (frames, or a share of its length, whichever
# is larger) is truncated; less is taken as slack in the stated length, served by the last frame
TRUNCATION_FRAMES, TRUNCATION_SHARE = 2, 0.1


class _Overshoot(Exception):
    """A seek landed after the frame it aimed at (an imprecise index): read again without seeking."""


def _why(error: Exception) -> str:
    """An FFmpeg error's message without the file name (the skip report names the file)."""
    return getattr(error, "strerror", None) or str(error)


def _pts(packet: av.Packet) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts


class PyAVVideo:
    """One open video file. Use as a context manager; the constructor raises BadVideo."""

    def __init__(self, path: str, threads: int = 1):
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise BadVideo("missing") from None
        except OSError as e:
            raise BadVideo("unreadable", str(e)) from None
        if size == 0:
            raise BadVideo("empty")
        try:
            self.container = av.open(path, metadata_errors="ignore")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise BadVideo("unreadable", _why(e)) from None
        try:
            self._init_stream(threads)
        except BadVideo:
            self.container.close()
            raise

    def _init_stream(self, threads: int) -> None:
        streams = [s for s in self.container.streams.video
                   if av.stream.Disposition.attached_pic not in s.disposition]
        if not streams:
            raise BadVideo("no_video")
        stream = self.stream = streams[0]
        if stream.codec_context is None:
            raise BadVideo("unsupported_codec", "this FFmpeg build has no decoder for the video stream")
        self.codec = stream.codec_context.name
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0 or stream.time_base is None:
            raise BadVideo("unreadable", "the video stream has no frame rate or time base")
        self.fps = float(rate)
        self.time_base = float(stream.time_base)
        self.start_pts = stream.start_time or 0
        self.num_frames = stream.frames or self._frames_from_duration()
        self.height, self.width = stream.codec_context.height, stream.codec_context.width

    def _frames_from_duration(self) -> int:
        """Frame count when the container does not store one: duration x rate, else by demuxing."""
        s = self.stream
        if s.duration:
            return max(0, round(s.duration * self.time_base * self.fps))
        if self.container.duration:
            seconds = self.container.duration / av.time_base - self.start_pts * self.time_base
            return max(0, round(seconds * self.fps))
        try:
            count = sum(1 for p in self.container.demux(s) if p.size)
            self.container.seek(0)
        except av.FFmpegError as e:
            raise BadVideo("corrupt", _why(e)) from None
        return count

    def __enter__(self) -> PyAVVideo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.close()

    def window(self, start: float, end: float) -> tuple[int, int]:
        """(first frame, frame count) of the window [start, end) seconds; negative bounds: the ends."""
        first = min(int(start * self.fps), self.num_frames) if start > 0 else 0
        last = min(int(end * self.fps), self.num_frames) if end >= 0 else self.num_frames
        return first, max(0, last - first)

    def read(self, numbers: np.ndarray) -> np.ndarray:
        """Frames `numbers` (any order, repeats allowed) as [len, H, W, 3] uint8, upright."""
        try:
            try:
                frames = self._read(np.asarray(numbers), seek=True)
            except _Overshoot:
                self.container.seek(0)
                frames = self._read(np.asarray(numbers), seek=False)
        except av.FFmpegError as e:
            raise BadVideo("corrupt", _why(e)) from None
        return frames

    def _read(self, numbers: np.ndarray, seek: bool) -> np.ndarray:
        wanted = np.unique(numbers)
        per_frame = 1.0 / (self.fps * self.time_base)  # pts units per frame
        half = per_frame / 2
        targets = self.start_pts + wanted * per_frame
        chosen: list[av.VideoFrame | None] = [None] * len(wanted)
        codec = self.stream.codec_context
        pending = 0  # the first wanted frame not yet served
        sought = False  # whether the group being read was reached by a seek

        def decode(gop: list[av.Packet], limit: float) -> int:
            """Serve the pending targets before `limit` (the next keyframe's pts) from this group;
            returns the first target still pending."""
            hi = pending
            while hi < len(wanted) and targets[hi] + half < limit:
                hi += 1
            if hi == pending:
                return hi
            last_needed = targets[hi - 1] + half
            cut = max((i for i, p in enumerate(gop) if (_pts(p) or 0) <= last_needed), default=0)
            frames = []
            for packet in gop[:cut + 1]:
                frames.extend(codec.decode(packet))
            frames.extend(codec.decode(None))
            codec.flush_buffers()
            frames = sorted((f for f in frames if f.pts is not None), key=lambda f: f.pts)
            if not frames:
                raise BadVideo("corrupt", "a group of pictures decoded to no frame")
            if sought and frames[0].pts > targets[pending] + half:
                raise _Overshoot
            stamps = np.array([f.pts for f in frames], dtype=np.float64)
            for j in range(pending, hi):
                chosen[j] = frames[max(0, int(np.searchsorted(stamps, targets[j] + half, side="right")) - 1)]
            return hi

        gap = SEEK_GAP_S / self.time_base
        last_sought = -1

        def jump() -> Iterator[av.Packet]:
            """Packets from the keyframe before the first pending target."""
            nonlocal last_sought, sought
            last_sought, sought = pending, True
            self.container.seek(int(targets[pending]), stream=self.stream, backward=True, any_frame=False)
            return iter(self.container.demux(self.stream))

        packets = jump() if seek and targets[0] - self.start_pts > gap else iter(self.container.demux(self.stream))
        gop: list[av.Packet] = []
        while True:
            packet = next(packets, None)
            if packet is None:
                if gop:
                    pending = decode(gop, math.inf)
                break
            if packet.size == 0:
                continue
            if packet.is_keyframe and gop:
                pts = _pts(packet)
                served = decode(gop, math.inf if pts is None else pts)
                sought = sought and served == pending
                pending, gop = served, []
                if pending == len(wanted):
                    break
                if seek and pts is not None and targets[pending] - pts > gap and pending != last_sought:
                    packets = jump()
                    continue
            gop.append(packet)
        return self._assemble(numbers, wanted, targets, chosen, per_frame)

    def _assemble(self, numbers: np.ndarray, wanted: np.ndarray, targets: np.ndarray,
                  chosen: list[av.VideoFrame | None], per_frame: float) -> np.ndarray:
        """The chosen frames in the asked order, converted once each; a wanted frame far past the
        stream's end means the file is truncated."""
        slack = max(TRUNCATION_FRAMES, TRUNCATION_SHARE * self.num_frames) * per_frame
        arrays: dict[int, np.ndarray] = {}
        for frame, target in zip(chosen, targets):
            if frame is None:
                raise BadVideo("corrupt", "the stream holds no packet")
            if target - frame.pts > slack:
                shown = round((frame.pts - self.start_pts) / per_frame)
                raise BadVideo("truncated", f"frame {round((target - self.start_pts) / per_frame)} wanted, "
                                            f"the stream ends at frame {shown} of {self.num_frames} stated")
            if id(frame) not in arrays:
                rgb = frame.to_ndarray(format="rgb24")
                quarter_turns = round(frame.rotation / 90) % 4
                arrays[id(frame)] = np.rot90(rgb, quarter_turns) if quarter_turns else rgb
        out = [arrays[id(chosen[int(np.searchsorted(wanted, n))])] for n in numbers]
        return np.stack(out)
