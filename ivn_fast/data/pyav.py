"""CPU decoding with PyAV: open a file, count its frames, read the frames a clip needs.

Frame k of a video means the frame shown at time start + k / fps, fps being the stream's average
rate: on constant-rate video that is the k-th frame, on variable-rate video the frame on screen
at that moment, so a clip spans the same stretch of time either way.

Reading decodes only what the wanted frames depend on. Packets are demuxed (cheap: no
decoding) and held one group of pictures (keyframe to keyframe) at a time; a group is decoded
only if a wanted frame falls in it, and only up to the last wanted frame. A jump of more than
SEEK_GAP_S seconds seeks instead of demuxing through, so long or trimmed videos are read only
near the frames used. Frames come back upright (rotation metadata applied) as RGB uint8, or,
where asked and possible, as their YUV 4:2:0 planes for the native cut (ivn_fast.data.native).

A raw elementary stream (.h264, .hevc: no container, no timestamps, no index to seek by) is read
from its start, frame k being the k-th frame it decodes to.

Every failure is a BadVideo with its reason (see ivn_fast.data.health).
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ivn_fast.data.health import BadVideo
from ivn_fast.data.native import YUV420
from ivn_fast.data.sampling import time_window

SEEK_GAP_S = 2.0
# a stream that ends this much before a wanted frame (frames, or a share of its length, whichever
# is larger) is truncated; less is taken as slack in the stated length, served by the last frame
TRUNCATION_FRAMES, TRUNCATION_SHARE = 2, 0.1
# the matrix swscale converts each AVColorSpace with (True: BT.709): BT.709, unspecified (BT.601),
# BT.470BG and SMPTE 170M (both BT.601); frames in others take the rgb24 path
BT709_BY_COLORSPACE = {1: True, 2: False, 5: False, 6: False}
FULL_RANGE = 2  # AVCOL_RANGE_JPEG; yuvj420p is full range whatever it says


class _Overshoot(Exception):
    """A seek landed after the frame it aimed at (an imprecise index): read again without seeking."""


def _why(error: Exception) -> str:
    """An FFmpeg error's message without the file name (the skip report names the file)."""
    return getattr(error, "strerror", None) or str(error)


def _pts(packet: av.Packet) -> int | None:
    return packet.pts if packet.pts is not None else packet.dts


def _decode_threads(stream: av.video.stream.VideoStream, threads: int) -> None:
    stream.codec_context.thread_type = "AUTO"
    stream.codec_context.thread_count = threads


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
        self.file_size, self.path = size, path
        self.timed = True  # packets carry timestamps (false for raw elementary streams)
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
        _decode_threads(stream, threads)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0 or stream.time_base is None:
            raise BadVideo("unreadable", "the video stream has no frame rate or time base")
        self.fps = float(rate)
        self.time_base = float(stream.time_base)
        self.start_pts = stream.start_time or 0
        self._used = False  # whether packets were read, so the next read must rewind
        self.num_frames = stream.frames or self._frames_from_duration()
        self.height, self.width = stream.codec_context.height, stream.codec_context.width
        # one single-threaded swscale context for all frames: frame.to_ndarray makes one per frame,
        # with a thread pool, which costs 0.3-7 ms against 0.05 for the conversion (320x240)
        self._to_rgb = VideoReformatter()

    def _frames_from_duration(self) -> int:
        """Frame count when the container does not store one: duration x rate, else by demuxing."""
        s = self.stream
        if s.duration:
            return max(0, round(s.duration * self.time_base * self.fps))
        if self.container.duration:
            seconds = self.container.duration / av.time_base - self.start_pts * self.time_base
            return max(0, round(seconds * self.fps))
        try:
            sized = [p for p in self.container.demux(s) if p.size]
            self._used = True
        except av.FFmpegError as e:
            raise BadVideo("corrupt", _why(e)) from None
        self.timed = any(_pts(p) is not None for p in sized)
        return len(sized)

    def __enter__(self) -> PyAVVideo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.close()

    def window(self, start: float, end: float) -> tuple[int, int]:
        """(first frame, frame count) of the window [start, end) seconds; negative bounds: the ends."""
        return time_window(start, end, self.fps, self.num_frames)

    def read(self, numbers: np.ndarray, yuv: bool = False) -> np.ndarray | YUV420:
        """Frames `numbers` (any order, repeats allowed) as [len, H, W, 3] uint8, upright; with `yuv`,
        as their YUV 4:2:0 planes (no conversion, no copy) where the native cut can take them."""
        numbers = np.asarray(numbers)
        try:
            if not self.timed:
                chosen = self._read_in_order(np.unique(numbers))
            else:
                try:
                    chosen = _Reader(self, np.unique(numbers), seek=True).run()
                except _Overshoot:
                    chosen = _Reader(self, np.unique(numbers), seek=False).run()
        except av.FFmpegError as e:
            raise BadVideo("corrupt", _why(e)) from None
        frames = [chosen[int(n)] for n in numbers]
        planes = _yuv420(frames) if yuv else None
        if planes is not None:
            return planes
        arrays: dict[int, np.ndarray] = {}
        size = {"width": frames[0].width, "height": frames[0].height}  # a stream may change size midway
        for frame in chosen.values():
            if id(frame) not in arrays:
                rgb = self._to_rgb.reformat(frame, format="rgb24", threads=1, **size).to_ndarray()
                quarter_turns = round(frame.rotation / 90) % 4
                arrays[id(frame)] = np.rot90(rgb, quarter_turns) if quarter_turns else rgb
        return np.stack([arrays[id(f)] for f in frames])

    def _read_in_order(self, wanted: np.ndarray) -> dict[int, av.VideoFrame]:
        """Frames of a stream without timestamps, by their place in the decoder's output."""
        if self._used:  # such a stream cannot seek back: open it again
            index, threads = self.stream.index, self.stream.codec_context.thread_count
            self.container.close()
            try:
                self.container = av.open(self.path, metadata_errors="ignore")
            except (av.FFmpegError, OSError) as e:
                raise BadVideo("unreadable", f"reopening to read from the start failed ({_why(e)})") from None
            self.stream = next(s for s in self.container.streams.video if s.index == index)
            _decode_threads(self.stream, threads)
        self._used = True
        chosen, last, count = {}, int(wanted[-1]), 0
        for count, frame in enumerate(self.container.decode(self.stream), 1):
            if count - 1 in wanted:
                chosen[count - 1] = frame
            if count > last:
                return chosen
        raise BadVideo("truncated", f"frame {last} wanted, the stream ends at frame {count - 1} "
                                    f"of {self.num_frames} counted")

    def check_reaches(self, number: int) -> None:
        """Raise BadVideo("truncated") unless the stream holds a packet near frame `number`, by
        demuxing around it (no decoding): a cheap check for decoders that would pad instead."""
        if not self.timed:  # counted packet by packet when opened
            if number >= self.num_frames:
                raise BadVideo("truncated", f"frame {number} wanted, the stream holds {self.num_frames}")
            return
        per_frame = 1.0 / (self.fps * self.time_base)
        slack = max(TRUNCATION_FRAMES, TRUNCATION_SHARE * self.num_frames) * per_frame
        target = self.start_pts + number * per_frame
        try:
            for packet in self.packets(target):
                pts = _pts(packet)
                if packet.size and pts is not None and pts >= target - slack:
                    return
        except av.FFmpegError as e:
            raise BadVideo("truncated", f"reading packets failed ({_why(e)})") from None
        raise BadVideo("truncated", f"frame {number} wanted, the stream ends before it ({self.num_frames} stated)")

    def packets(self, pts: float | None) -> Iterator[av.Packet]:
        """The video stream's packets from the keyframe at or before `pts` (None: the start)."""
        if pts is not None or self._used:
            target = int(pts) if pts is not None else self.start_pts
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        self._used = True
        return iter(self.container.demux(self.stream))


def _yuv420(frames: list[av.VideoFrame]) -> YUV420 | None:
    """The frames' planes with the matrix and range swscale would convert them with (so the native
    cut matches the rgb24 path), or None unless all are yuv420p / yuvj420p, upright, of one size and
    colour space, BT.601 or BT.709."""
    def kind(f: av.VideoFrame) -> tuple:
        return f.format.name, f.width, f.height, f.colorspace, f.color_range, f.rotation

    first = kind(frames[0])
    name, _, _, colorspace, color_range, rotation = first
    if name not in ("yuv420p", "yuvj420p") or colorspace not in BT709_BY_COLORSPACE or rotation:
        return None
    if any(kind(f) != first for f in frames):
        return None
    views: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for f in frames:
        if id(f) not in views:
            views[id(f)] = tuple(_unpadded(p) for p in f.planes)
    return YUV420([views[id(f)] for f in frames], name == "yuvj420p" or color_range == FULL_RANGE,
                  BT709_BY_COLORSPACE[colorspace])


def _unpadded(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """A plane as [height, width] uint8, a view into the frame's buffer (rows keep their padding)."""
    rows = np.frombuffer(plane, np.uint8, count=plane.line_size * plane.height)
    return rows.reshape(plane.height, plane.line_size)[:, :plane.width]


class _Reader:
    """One pass over a video serving the wanted frame numbers (sorted, distinct).

    Frame number k is wanted at pts target_k = start + k * per_frame and is served by the last
    frame shown at or before target_k + half a frame.
    """

    def __init__(self, video: PyAVVideo, wanted: np.ndarray, seek: bool):
        self.video, self.wanted, self.seek = video, wanted, seek
        self.per_frame = 1.0 / (video.fps * video.time_base)  # pts units per frame
        self.targets = video.start_pts + wanted * self.per_frame + self.per_frame / 2
        self.chosen: dict[int, av.VideoFrame] = {}
        self.pending = 0  # the first wanted frame not yet served
        self.sought = False  # whether the group being read was reached by a seek
        self.last_sought = -1

    def run(self) -> dict[int, av.VideoFrame]:
        gap = SEEK_GAP_S / self.video.time_base
        packets = self._jump() if self.seek and self.targets[0] - self.video.start_pts > gap else (
            self.video.packets(None))
        gop: list[av.Packet] = []
        while self.pending < len(self.wanted):
            try:
                packet = next(packets, None)
            except av.FFmpegError as e:
                raise BadVideo("truncated", f"reading packets failed ({_why(e)})") from None
            if packet is None:
                if not gop:
                    raise BadVideo("corrupt", "the stream holds no packet")
                self._serve(gop, math.inf)
                break
            if packet.size == 0:
                continue
            pts = _pts(packet)
            if packet.is_keyframe and gop:
                self._serve(gop, math.inf if pts is None else pts)
                gop = []
                if (self.seek and self.pending < len(self.wanted) and pts is not None
                        and self.targets[self.pending] - pts > gap and self.pending != self.last_sought):
                    packets = self._jump()
                    continue
            gop.append(packet)
        return self.chosen

    def _jump(self) -> Iterator[av.Packet]:
        self.last_sought, self.sought = self.pending, True
        return self.video.packets(self.targets[self.pending])

    def _serve(self, gop: list[av.Packet], limit: float) -> None:
        """Decode this group of pictures as far as the pending targets before `limit` (the next
        keyframe's pts) need, and choose their frames."""
        lo = hi = self.pending
        while hi < len(self.wanted) and self.targets[hi] < limit:
            hi += 1
        if hi == lo:
            return
        cut = max((i for i, p in enumerate(gop) if (_pts(p) or 0) <= self.targets[hi - 1]), default=0)
        frames = self._decode(gop[:cut + 1], self._shown(gop, lo, hi))
        if self.sought and frames[0].pts > self.targets[lo]:
            raise _Overshoot
        self.sought = False
        stamps = np.array([f.pts for f in frames], dtype=np.float64)
        ends = limit == math.inf and cut == len(gop) - 1  # frames[-1] is the stream's last frame
        slack = max(TRUNCATION_FRAMES, TRUNCATION_SHARE * self.video.num_frames) * self.per_frame
        for j in range(lo, hi):
            if ends and self.targets[j] - stamps[-1] > slack:
                raise BadVideo("truncated", f"frame {self.wanted[j]} wanted, the stream ends at frame "
                                            f"{round((stamps[-1] - self.video.start_pts) / self.per_frame)} "
                                            f"of {self.video.num_frames} stated")
            self.chosen[int(self.wanted[j])] = frames[max(0, int(np.searchsorted(stamps, self.targets[j],
                                                                                   side="right")) - 1)]
        self.pending = hi

    def _shown(self, gop: list[av.Packet], lo: int, hi: int) -> set[int] | None:
        """The pts of the packets whose frames targets lo..hi-1 take, where every packet of the group
        carries its frame's pts (else None: nothing may be skipped)."""
        stamps = sorted(p.pts for p in gop if p.pts is not None)
        if len(stamps) != len(gop) or len(set(stamps)) != len(stamps):
            return None
        return {stamps[max(0, bisect.bisect_right(stamps, self.targets[j]) - 1)] for j in range(lo, hi)}

    def _decode(self, packets: list[av.Packet], shown: set[int] | None) -> list[av.VideoFrame]:
        """The frames of these packets, in presentation order; the decoder is left empty.

        Where `shown` names the packets whose frames are wanted, the others are decoded only if
        later frames refer to them (FFmpeg's skip_frame=NONREF): with B-frames a third or more of
        a group is never needed.
        """
        codec = self.video.stream.codec_context
        frames = []
        for packet in packets:
            if shown is not None:
                codec.skip_frame = "DEFAULT" if packet.pts in shown else "NONREF"
            try:
                frames.extend(codec.decode(packet))
            except av.FFmpegError as e:
                if packet.pos is not None and packet.pos >= 0 and packet.pos + packet.size >= self.video.file_size:
                    raise BadVideo("truncated", f"the last packet is cut off by the end of the file "
                                                f"({_why(e)})") from None
                raise
        codec.skip_frame = "DEFAULT"
        frames.extend(codec.decode(None))
        codec.flush_buffers()
        frames = sorted((f for f in frames if f.pts is not None), key=lambda f: f.pts)
        if not frames:
            raise BadVideo("corrupt", "a group of pictures decoded to no frame")
        return frames
