"""Tiny video files for the data tests, written with PyAV.

Frame i is painted so that it can be recognised after lossy coding: its red channel is the
level 10 + 6 * i everywhere (frame_number reads it back), green rises left to right and blue
top to bottom (so crops and flips can be located).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODECS = {  # name: (encoder, container suffix, pixel format, options)
    "h264": ("libx264", ".mp4", "yuv420p", {"g": "8", "preset": "ultrafast"}),
    "mpeg4": ("mpeg4", ".mp4", "yuv420p", {"g": "8", "qmax": "3"}),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p", {"g": "8", "deadline": "realtime", "cpu-used": "8", "crf": "10",
                                                "b": "0"}),
    "mjpeg": ("mjpeg", ".avi", "yuvj444p", {"qscale": "2"}),
}


def paint(i: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    red = np.full((h, w), 10 + 6 * i)
    green = 30 + xx * 190 // max(w - 1, 1)
    blue = 30 + yy * 190 // max(h - 1, 1)
    return np.stack([red, green, blue], -1).astype(np.uint8)


def frame_number(rgb: np.ndarray) -> int:
    """Which painted frame an RGB array [H, W, 3] shows."""
    return round((float(rgb[..., 0].mean()) - 10) / 6)


def write_video(path: Path, codec: str = "h264", *, frames: int = 12, width: int = 64, height: int = 48,
                fps: int = 25, gop: int | None = None, pts: list[int] | None = None, rotation: int = 0,
                audio: bool = False, pix_fmt: str | None = None, faststart: bool = False,
                options: dict[str, str] | None = None) -> Path:
    """A painted video; `pts` (in 1/fps units) makes the frame rate variable; `faststart` puts an
    MP4's index before its data (so a cut-off copy still opens); `options` go to the encoder."""
    encoder, suffix, default_format, defaults = CODECS[codec]
    pix_fmt = pix_fmt or default_format
    options = {**defaults, **(options or {})}
    path = Path(path).with_suffix(suffix)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {**options, **({"g": str(gop)} if gop else {})}
        if pts is not None:
            stream.time_base = Fraction(1, fps)
        if rotation:
            stream.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=8000) if audio else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(paint(i, height, width), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if sound is not None:
            _write_tone(out, sound, seconds=frames / fps)
    return path


def write_size_change(path: Path, sizes: list[tuple[int, int]], frames_each: int = 8, fps: int = 16) -> Path:
    """One H.264 stream in MPEG-TS whose frame size changes between segments, as broadcast
    captures do: each (width, height) segment is encoded on its own and muxed on one clock."""
    path = Path(path).with_suffix(".ts")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("h264", rate=fps)
        stream.width, stream.height = sizes[0]
        for seg, (width, height) in enumerate(sizes):
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.time_base, encoder.framerate = Fraction(1, fps), Fraction(fps)
            encoder.options = {"bf": "0", "preset": "ultrafast"}
            packets = []
            for i in range(frames_each):
                n = seg * frames_each + i
                frame = av.VideoFrame.from_ndarray(paint(n, height, width), format="rgb24").reformat(format="yuv420p")
                frame.pts, frame.time_base = i, encoder.time_base
                packets += encoder.encode(frame)
            packets += encoder.encode(None)
            for packet in packets:
                packet.pts += seg * frames_each
                packet.dts += seg * frames_each
                packet.time_base, packet.stream = encoder.time_base, stream
                out.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 0.5) -> Path:
    path = Path(path).with_suffix(".m4a")
    with av.open(str(path), "w") as out:
        _write_tone(out, out.add_stream("aac", rate=8000), seconds)
    return path


def _write_tone(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    t = np.arange(int(8000 * seconds)) / 8000
    wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
    frame.sample_rate = 8000
    out.mux(stream.encode(frame))
    out.mux(stream.encode())


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst = dst.with_suffix(src.suffix)
    dst.write_bytes(data[:int(len(data) * keep)])
    return dst


def damaged_header_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst = dst.with_suffix(src.suffix)
    dst.write_bytes(bytes(64) + data[64:])
    return dst


def unknown_codec_copy(src_avi: Path, dst: Path) -> Path:
    """An MJPEG AVI whose codec tag is renamed to one no decoder knows."""
    dst = dst.with_suffix(".avi")
    dst.write_bytes(src_avi.read_bytes().replace(b"MJPG", b"QQQQ").replace(b"mjpg", b"qqqq"))
    return dst
