"""The clip cut straight from YUV 4:2:0 frames: the native op (csrc/yuv_cut.cpp) and its PyTorch reference.

Why: a PyAV worker otherwise converts whole frames to RGB (swscale) and then crops, resizes and
normalises them in torch (augment.cut); converting only the crop, fused with the rest, takes
about half as long, 5-10% of a worker's time per clip (bench/bench_decode.py; decoding is most
of the rest). The reference below is the same maths in PyTorch: the tests hold the native op to
it, and cut_yuv420 falls back to it where the library cannot be built (VideoClips keeps RGB
frames then).

Colour: BT.709 or BT.601, limited or full range, as the caller says (pyav.py reads them off the
frame as swscale does). The conversion is exact, in float, clamped to [0, 255], with each chroma
sample covering its 2x2 luma block (swscale's unscaled path). PyAV's rgb24 comes out 0.5-1.5
levels darker on average (that path truncates), and on odd frame heights swscale interpolates
chroma instead.

The library is compiled on first use with $CXX (else c++, g++ or clang++) into $IVN_FAST_CACHE
(else ~/.cache/ivn_fast), named by a hash of the source and the command, so processes that build
at once each write a temporary file and rename it into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ivn_fast.cache import cache_root
from ivn_fast.data.augment import _SCALE, _SHIFT, Crop, cut

log = logging.getLogger("ivn_fast")

SOURCE_NAME = "yuv_cut.cpp"
FLAGS = ("-O3", "-fPIC", "-shared", "-std=c++17")  # no -march=native: the cache may be shared
_SCALE_C = (ctypes.c_float * 3)(*_SCALE.flatten().tolist())
_SHIFT_C = (ctypes.c_float * 3)(*_SHIFT.flatten().tolist())
# (Kr, Kb) of the two matrices
_KR_KB = {False: (0.299, 0.114), True: (0.2126, 0.0722)}


class NativeUnavailable(RuntimeError):
    """The native library cannot be built or loaded here; the message says why."""


class YUV420(NamedTuple):
    """T frames as 4:2:0 planes: per frame y [H, W] and u, v [(H + 1) // 2, (W + 1) // 2] uint8
    arrays, rows possibly padded (views into the decoder's buffers: no copy)."""
    planes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    full_range: bool  # Y and chroma span 0..255 (JPEG), else 16..235 and 16..240
    bt709: bool  # BT.709 matrix, else BT.601

    @property
    def shape(self) -> tuple[int, int]:
        return self.planes[0][0].shape


_lib: ctypes.CDLL | None = None
_error: NativeUnavailable | None = None
_warned = False


def load() -> ctypes.CDLL:
    """The native library, built on first use; raises NativeUnavailable (the same one after)."""
    global _lib, _error
    if _lib is None and _error is None:
        try:
            _lib = _open(_build(_source()))
        except NativeUnavailable as e:
            _error = e
    if _error is not None:
        raise _error
    return _lib


def available() -> bool:
    """Whether the native cut runs here; the reason it does not is logged once per process."""
    global _warned
    try:
        load()
    except NativeUnavailable as e:
        if not _warned:
            _warned = True
            log.warning("native YUV cut unavailable, the PyTorch path is used: %s", e)
        return False
    return True


def _source() -> Path:
    """csrc/ beside the package (a checkout, an editable install), else where the wheel put it
    (the data-files of pyproject.toml, listed in the installed distribution's RECORD)."""
    checkout = Path(__file__).resolve().parents[2] / "csrc" / SOURCE_NAME
    if checkout.is_file():
        return checkout
    try:
        files = importlib.metadata.files("ivn-fast") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == SOURCE_NAME and Path(f.locate()).is_file():
            return Path(f.locate()).resolve()
    raise NativeUnavailable(f"{SOURCE_NAME} is neither in {checkout.parent} nor installed with ivn-fast")


def _compiler() -> list[str]:
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    found = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if found is None:
        raise NativeUnavailable("no C++ compiler (c++, g++ or clang++ on PATH, or $CXX)")
    return [found]


def _build(source: Path) -> Path:
    """The compiled library for this source and command, built unless already in the cache."""
    command = [*_compiler(), *FLAGS]
    key = hashlib.sha256(source.read_bytes() + " ".join([*command, platform.machine()]).encode()).hexdigest()
    cache = cache_root()
    target = cache / f"yuv_cut-{key[:16]}.so"
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=cache, prefix=f"{target.stem}.", suffix=".partial")
        os.close(fd)
    except OSError as e:
        raise NativeUnavailable(f"cannot write the build cache {cache}: {e}") from None
    try:
        done = subprocess.run([*command, str(source), "-o", partial], capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise NativeUnavailable(f"`{' '.join(command)}` failed: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeUnavailable(f"`{' '.join(command)}` could not run: {e}") from None
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def _open(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeUnavailable(f"cannot load {path}: {e}") from None
    i = ctypes.c_int
    lib.ivn_yuv420_cut.restype = None
    lib.ivn_yuv420_cut.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64), i, i, i, i, i,
                                   i, i, i, i, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float),
                                   ctypes.c_void_p]
    return lib


def _check(clip: YUV420, crop: Crop) -> None:
    h, w = clip.shape
    chroma = ((h + 1) // 2, (w + 1) // 2)
    for y, u, v in clip.planes:
        if y.shape != (h, w) or u.shape != chroma or v.shape != chroma:
            raise ValueError(f"planes {y.shape}, {u.shape}, {v.shape}: expected {(h, w)} and {chroma} for every frame")
        if any(p.dtype != np.uint8 or p.strides[1] != 1 for p in (y, u, v)):
            raise ValueError("planes must be uint8 with consecutive pixels in a row")
    if crop.top < 0 or crop.left < 0 or crop.height < 1 or crop.width < 1 or (
            crop.top + crop.height > h or crop.left + crop.width > w):
        raise ValueError(f"{crop} does not lie inside a {h}x{w} frame")


def cut_yuv420(clip: YUV420, crop: Crop, size: int) -> torch.Tensor:
    """[3, T, size, size] ImageNet-normalised float clip: natively where the library builds, else by
    cut_yuv420_reference."""
    _check(clip, crop)
    if not available():
        return cut_yuv420_reference(clip, crop, size)
    frames = len(clip.planes)
    arrays = [p for planes in clip.planes for p in planes]
    out = torch.empty(3, frames, size, size)
    _lib.ivn_yuv420_cut((ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays]),
                        (ctypes.c_int64 * len(arrays))(*[a.strides[0] for a in arrays]), frames, crop.top,
                        crop.left, crop.height, crop.width, size, int(crop.flip), int(clip.full_range),
                        int(clip.bt709), _SCALE_C, _SHIFT_C, out.data_ptr())
    return out


def cut_yuv420_reference(clip: YUV420, crop: Crop, size: int) -> torch.Tensor:
    """The native op's maths in PyTorch: the crop converted to RGB levels in float, then augment.cut."""
    rows = np.arange(crop.top, crop.top + crop.height)
    cols = np.arange(crop.left, crop.left + crop.width)
    region, chroma = np.ix_(rows, cols), np.ix_(rows // 2, cols // 2)
    y, u, v = (torch.from_numpy(np.stack([f[i][ix] for f in clip.planes])).float()
               for i, ix in ((0, region), (1, chroma), (2, chroma)))
    kr, kb = _KR_KB[clip.bt709]
    kg = 1 - kr - kb
    gain, offset, c = (1.0, 0.0, 1.0) if clip.full_range else (255 / 219, 16.0, 255 / 224)
    luma, cb, cr = gain * (y - offset), c * (u - 128), c * (v - 128)
    rgb = torch.stack([luma + 2 * (1 - kr) * cr,
                       luma - 2 * kb * (1 - kb) / kg * cb - 2 * kr * (1 - kr) / kg * cr,
                       luma + 2 * (1 - kb) * cb], dim=-1).clamp_(0, 255)
    return cut(rgb, crop._replace(top=0, left=0), size)
