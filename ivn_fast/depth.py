"""The paper's depth probe (ScanNet, KITTI; Table 1's ScanNet column): learnable queries, one per
output patch, cross-attend to the frozen tokens in one block (the attentive probe's, after
Scaling 4D's readout) and each decodes its patch's depth; AbsRel and delta < 1.25 are reported.

Data: `synthetic:depth` (the built-in set, whose renderer knows depth: a backdrop from 3 m at the
bottom to 5 m at the top, and the shape in front of it at a distance its apparent size gives), and
depth lists, one window per line:

    {"frames": [16 image paths], "depths": [16 depth map paths], "depth_scale": 0.001, "range": [0.1, 10]}

Depth maps are single-channel images (16-bit PNGs) holding depth / depth_scale (default 0.001: the
millimetres of ScanNet; KITTI's PNGs use 1/256); zero means no measurement. Pixels outside `range`
metres (default: any positive depth) are not scored. Frames and maps are each cut to the centre
square of the shorter side and resized, the maps by nearest neighbour so no depth is invented.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from ivn_fast.data.augment import cut, view_crop
from ivn_fast.data.health import encode_skips
from ivn_fast.data.synthetic import Rendered, RenderedClips
from ivn_fast.data.windows import WindowList, read_images, read_lines
from ivn_fast.fit import fit, predict_rows, shuffled
from ivn_fast.models.probe import DepthProbe

TARGET_KEYS = ("depth", "valid")
MIN_DEPTH = 1e-3  # metres: predictions are floored here before the ratios of the metrics


def depth_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 in metres over the scored pixels."""
    return ((pred - target).abs() * valid).sum() / valid.sum().clamp(min=1)


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """AbsRel (mean |pred - true| / true) and delta1 (share with max(pred/true, true/pred) < 1.25)
    over the scored pixels."""
    pred, target = pred.clamp(min=MIN_DEPTH)[valid], target[valid]
    ratio = torch.maximum(pred / target, target / pred)
    return {"absrel": ((pred - target).abs() / target).mean().item(), "delta1": (ratio < 1.25).float().mean().item()}


def train_depth(train: tuple[torch.Tensor, dict[str, torch.Tensor]], val: tuple[torch.Tensor, dict[str, torch.Tensor]],
                *, grid: tuple[int, int, int], patch: int, num_heads: int, epochs: int, batch: int, lr: float,
                weight_decay: float, seed: int, device: torch.device) -> dict:
    """Train the depth probe on kept tokens [N, 1, S, C] and depth targets (TARGET_KEYS); the curve
    is the validation AbsRel per epoch. `mean_*` score the training windows' mean depth at each
    pixel, the reading a probe that ignores the tokens could reach."""
    torch.manual_seed(seed)
    x_train, x_val = train[0][:, 0], val[0][:, 0]
    depth, valid = train[1]["depth"], train[1]["valid"]
    val_depth, val_valid = val[1]["depth"], val[1]["valid"]
    for name, v in (("training", valid), ("validation", val_valid)):
        if not v.any():
            raise ValueError(f"no {name} window has a scored depth pixel")
    probe = DepthProbe(x_train.shape[-1], grid, patch, num_heads).to(device)
    with torch.no_grad():  # start from the mean depth rather than 0 m, a few metres off everywhere
        probe.readout.head.bias.fill_(((depth * valid).sum() / valid.sum()).item())
    scores = []

    def score(p: torch.nn.Module) -> float:
        scores.append(depth_metrics(predict_rows(p, (x_val,), batch, device), val_depth, val_valid))
        return scores[-1]["absrel"]

    curve, losses = fit(probe, *shuffled((x_train, depth, valid), batch, seed),
                        lambda p, x, d, v: depth_loss(p(x).float(), d, v), score,
                        epochs=epochs, lr=lr, weight_decay=weight_decay, device=device)
    mean_map = (depth * valid).sum(0) / valid.sum(0).clamp(min=1)
    baseline = depth_metrics(mean_map.expand_as(val_depth), val_depth, val_valid)
    return {**scores[-1], "curve": curve, "delta1_curve": [s["delta1"] for s in scores], "train_loss": losses,
            "train_absrel": depth_metrics(predict_rows(probe, (x_train,), batch, device), depth, valid)["absrel"],
            "mean_absrel": baseline["absrel"], "mean_delta1": baseline["delta1"], "probe": probe.cpu()}


def synthetic_targets(clip: Rendered) -> dict[str, torch.Tensor]:
    """The renderer's depth, every pixel scored."""
    return {"depth": clip.depth, "valid": torch.ones_like(clip.depth, dtype=torch.bool)}


def synthetic_depth(num_videos: int, num_frames: int, size: int, *, seed: int) -> RenderedClips:
    return RenderedClips(num_videos, num_frames, size, seed=seed, targets=synthetic_targets)


class DepthList(WindowList):
    """Windows of a depth list (see the module docstring)."""

    def __init__(self, path: str, *, num_frames: int, size: int, root: str = ""):
        super().__init__([(frames, *self._maps(where, entry, num_frames, root))
                          for where, entry, frames in read_lines(path, num_frames, root)],
                         num_frames=num_frames, size=size)

    @staticmethod
    def _maps(where: str, entry: dict, num_frames: int, root: str) -> tuple[list[str], float, tuple[float, float]]:
        maps, scale = entry.get("depths"), entry.get("depth_scale", 0.001)
        low, high = entry.get("range", (0.0, math.inf))
        if not isinstance(maps, list) or len(maps) != num_frames or not all(isinstance(m, str) for m in maps):
            raise ValueError(f"{where}: 'depths' must list one depth map per frame, {num_frames} in all")
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"{where}: 'depth_scale' must be a positive number of metres per unit, got {scale!r}")
        if not all(isinstance(v, (int, float)) for v in (low, high)) or not 0 <= low < high:
            raise ValueError(f"{where}: 'range' must be [min, max] metres with 0 <= min < max")
        return [os.path.join(root, m) for m in maps], float(scale), (low, high)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        frames, maps, scale, (low, high) = self.windows[index]
        t, s = self.num_frames, self.size
        try:
            pixels, raw = read_images(frames), read_images(maps, mode="")
        except OSError as e:
            return self.unreadable(frames[0], e, {"depth": torch.zeros(t, s, s),
                                                  "valid": torch.zeros(t, s, s, dtype=torch.bool)})
        if raw.ndim != 3:
            raw = raw[..., 0]  # a map saved with colour channels: they are equal
        crop = view_crop(*raw.shape[1:])
        region = torch.from_numpy(raw.astype("float32"))[:, crop.top:crop.top + crop.height,
                                                         crop.left:crop.left + crop.width]
        depth = F.interpolate(region[:, None], size=(s, s), mode="nearest-exact")[:, 0] * scale
        valid = (depth > 0) & (depth >= low) & (depth <= high)
        video = cut(torch.from_numpy(pixels), view_crop(*pixels.shape[1:3]), s)
        return {"video": video, "depth": torch.where(valid, depth, 0.0), "valid": valid, "skipped": encode_skips([])}
