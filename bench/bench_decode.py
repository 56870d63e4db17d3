"""Decode throughput: training clips per second from longer source videos.

    python -m bench.bench_decode [--videos 8] [--seconds 10] [--width 320] [--height 240]
        [--codec h264] [--frames 16] [--size 224] [--clips 64] [--workers 2] [--json OUT]

Source videos are generated once into --dir (moving textured shapes plus grain, encoded with the
codec's default settings unless --gop is given), then clips are cut exactly as training cuts
them (sparse sampling, multi-scale crop, resize, normalise). Rows:

- pyav, 1 process: clips/s of one DataLoader worker (decoding in the calling process), frames
  converted to RGB by swscale and cut by augment.cut (data.native_cut off);
- pyav, 1 process, native cut: the same clips cut straight from the YUV planes by the native op
  (ivn_fast.data.native), timed clip by clip in alternation with the row above, so that load from
  other work on the machine hits both alike;
- pyav, N workers: clips/s of the DataLoader with N worker processes, and per worker (native cut
  where it builds, as training's data.native_cut auto);
- full decode, 1 process: the same clips when every frame of the file is decoded (the plain
  approach), to show what decoding only the needed groups of pictures saves;
- dali: clips/s of the DALI loader (on a GPU; on CPU only for VP8/VP9/MJPEG sources).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from ivn_fast.data.augment import cut
from ivn_fast.data.dali import CODECS as DALI_CODECS
from ivn_fast.data.dali import DaliClips, dali_available
from ivn_fast.data.dataset import VideoClips
from ivn_fast.data.lists import VideoEntry, VideoList
from ivn_fast.data.loader import StepBatchSampler, build_loader

ENCODERS = {"h264": ("libx264", ".mp4"), "vp9": ("libvpx-vp9", ".webm"), "mpeg4": ("mpeg4", ".mp4"),
            "mjpeg": ("mjpeg", ".avi")}


def make_sources(directory: Path, count: int, seconds: float, width: int, height: int, fps: int, codec: str,
                 gop: int) -> list[Path]:
    """`count` source videos (reused when already there)."""
    encoder, suffix = ENCODERS[codec]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for v in range(count):
        path = directory / f"src{v}_{codec}_{width}x{height}_{seconds:g}s_g{gop}{suffix}"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng(v)
        yy, xx = np.mgrid[0:height, 0:width]
        base = (rng.random((height, width, 3)) * 60 + 80).astype(np.float32)
        with av.open(str(path), "w") as out:
            stream = out.add_stream(encoder, rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            if gop:
                stream.options = {"g": str(gop)}
            for i in range(int(seconds * fps)):
                frame = np.roll(base, (i, 2 * i), axis=(0, 1)).copy()
                cx, cy = (40 + 3 * i + 50 * v) % width, (30 + 2 * i) % height
                frame[(xx - cx) ** 2 + (yy - cy) ** 2 < 400] = (230, 60 + 20 * v % 180, 40)
                frame += rng.normal(0, 4, frame.shape).astype(np.float32)
                image = av.VideoFrame.from_ndarray(frame.clip(0, 255).astype(np.uint8), format="rgb24")
                out.mux(stream.encode(image))
            out.mux(stream.encode())
    return paths


def bench_pyav(variants: list[VideoClips], n: int) -> list[float]:
    """clips/s of each variant on the same n clips, timed clip by clip in turn (in reverse order
    every other clip, so neither always reads a file first)."""
    seconds = [0.0] * len(variants)
    for key in range(n):
        for i in range(len(variants))[::1 if key % 2 == 0 else -1]:
            start = time.perf_counter()
            variants[i][key]
            seconds[i] += time.perf_counter() - start
    return [n / s for s in seconds]


def bench_full_decode(clips: VideoClips, n: int) -> float:
    """Same clips, decoding every frame of each file (converted to RGB as the pyav row does)."""
    to_rgb = VideoReformatter()
    start = time.perf_counter()
    for key in range(n):
        plan = clips.plan(key)
        wanted = set(plan.frames.tolist())
        picked = {}
        with av.open(plan.path) as container:
            container.streams.video[0].thread_count = 1
            for k, frame in enumerate(container.decode(video=0)):
                if k in wanted:
                    picked[k] = to_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
        pixels = torch.from_numpy(np.stack([picked[k] for k in plan.frames.tolist()]))
        cut(pixels, plan.crop, clips.size)
    return n / (time.perf_counter() - start)


def bench_loader(clips: VideoClips, workers: int, n: int, batch: int) -> float:
    loader = build_loader(clips, batch, rank=0, world=1, seed=0, start_step=0, num_workers=workers,
                          pin_memory=False, epoch_keys=True)
    batches = iter(loader)
    next(batches)  # worker start-up stays out of the timing
    steps = max(1, n // batch)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return steps * batch / (time.perf_counter() - start)


def bench_dali(clips: VideoClips, device: torch.device, n: int, batch: int, threads: int) -> float:
    sampler = StepBatchSampler(len(clips), batch, seed=0, epoch_keys=True)
    batches = iter(DaliClips(clips, sampler, batch, device, threads=threads))
    next(batches)
    steps = max(1, n // batch)
    start = time.perf_counter()
    for _ in range(steps):
        video = next(batches)["video"]
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert video.shape[0] == batch
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.bench_decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="/tmp/ivn_decode_bench", help="where the source videos are kept")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    p.add_argument("--gop", type=int, default=0, help="keyframe interval (0: the encoder's default)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", type=int, default=224, help="clip side in pixels")
    p.add_argument("--clips", type=int, default=64, help="clips timed per row")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the multi-process row")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # as in a DataLoader worker
    paths = make_sources(Path(args.dir), args.videos, args.seconds, args.width, args.height, args.fps, args.codec,
                         args.gop)
    videos = VideoList([VideoEntry(str(q), 0) for q in paths])
    rgb, clips = (VideoClips(videos, num_frames=args.frames, size=args.size, native_cut=mode)
                  for mode in ("off", "auto"))
    if clips.use_native:
        rows = dict(zip(("pyav_1_process", "pyav_1_process_native_cut"), bench_pyav([rgb, clips], args.clips)))
    else:
        rows = {"pyav_1_process": bench_pyav([rgb], args.clips)[0]}
    rows["full_decode_1_process"] = bench_full_decode(rgb, args.clips)
    if args.workers > 1:
        total = bench_loader(clips, args.workers, args.clips, args.batch)
        rows[f"pyav_{args.workers}_workers"] = total
        rows[f"pyav_{args.workers}_workers_per_worker"] = total / args.workers
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dali_available() and args.codec in DALI_CODECS["mixed" if device.type == "cuda" else "cpu"]:
        rows[f"dali_{device.type}"] = bench_dali(clips, device, args.clips, args.batch, max(2, args.workers))
    report = {"clips_per_s": {k: round(v, 2) for k, v in rows.items()},
              "setting": {k: v for k, v in vars(args).items() if k not in ("json", "dir")},
              "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__, "av": av.__version__,
                          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}
    for name, value in report["clips_per_s"].items():
        print(f"{name:<32} {value:8.2f} clips/s")
    if "pyav_1_process_native_cut" in rows:
        print(f"native cut: {1 - rows['pyav_1_process'] / rows['pyav_1_process_native_cut']:.1%} less time per clip")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
