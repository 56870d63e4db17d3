"""The paper's depth probes (ScanNet, KITTI; Table 1's ScanNet column, Table 6): learnable queries,
one per output patch, cross-attend to the frozen tokens in one block (the attentive probe's, after
Scaling 4D's readout) and each decodes its patch's depth; or Video Depth Anything's temporal DPT
head (`ivn_fast.models.depth_head`) reads four blocks, trained with its temporal gradient loss as
well. AbsRel and delta < 1.25 are reported.

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
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ivn_fast.data.augment import cut, view_crop
from ivn_fast.data.health import encode_skips
from ivn_fast.data.synthetic import Rendered, RenderedClips
from ivn_fast.data.windows import WindowList, read_images, read_lines
from ivn_fast.features import Source, Streamed
from ivn_fast.fit import fit
from ivn_fast.train.distributed import data_parallel, mean_over_ranks, sum_over_ranks

TARGET_KEYS = ("depth", "valid")
MIN_DEPTH = 1e-3  # metres: predictions are floored here before the ratios of the metrics


def depth_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 in metres over the scored pixels."""
    return ((pred - target).abs() * valid).sum() / valid.sum().clamp(min=1)


def temporal_gradient_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Video Depth Anything's temporal gradient matching: L1 between the predicted and the true change
    of depth from each frame to the next [B, T, H, W], over the pixels scored in both frames."""
    both = valid[:, 1:] & valid[:, :-1]
    change = (pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])
    return (change.abs() * both).sum() / both.sum().clamp(min=1)


@torch.no_grad()
def metric_sums(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[sum of |pred - true| / true, count with max(pred/true, true/pred) < 1.25, count] over the scored
    pixels: AbsRel and delta1 of a whole set are the first two over the third."""
    pred, target = pred.float().clamp(min=MIN_DEPTH)[valid], target[valid]
    ratio = torch.maximum(pred / target, target / pred)
    return torch.stack([((pred - target).abs() / target).sum(), (ratio < 1.25).sum(), valid.sum()]).double().cpu()


def metrics(sums: torch.Tensor) -> dict[str, float]:
    """AbsRel and delta1 from metric_sums, summed over every process's share."""
    absrel, close, count = sum_over_ranks(sums.tolist())
    return {"absrel": absrel / max(count, 1.0), "delta1": close / max(count, 1.0), "pixels": count}


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """AbsRel (mean |pred - true| / true) and delta1 (share with max(pred/true, true/pred) < 1.25)
    over the scored pixels."""
    return metrics(metric_sums(pred, target, valid))


@torch.no_grad()
def score(probe: torch.nn.Module, source: Source, device: torch.device,
          mean_map: torch.Tensor | None = None) -> dict[str, float]:
    """AbsRel and delta1 of the probe over every window of `source`; with `mean_map`, also those of
    predicting it everywhere (`mean_absrel`, `mean_delta1`)."""
    probe.eval()
    sums = torch.zeros(2, 3, dtype=torch.float64)  # probe, mean map
    for tokens, depth, valid in source.batches():
        sums[0] += metric_sums(probe(tokens[:, 0].to(device)).cpu(), depth, valid)
        if mean_map is not None:
            sums[1] += metric_sums(mean_map.expand_as(depth), depth, valid)
    out = metrics(sums[0])
    if mean_map is not None:
        out.update({f"mean_{k}": v for k, v in metrics(sums[1]).items() if k != "pixels"})
    return out


def train_depth(train: Source, val: Source, make_probe: Callable[[], nn.Module], *, epochs: int, batch: int,
                lr: float, weight_decay: float, seed: int, device: torch.device, temporal: float = 0.0) -> dict:
    """Train a depth probe (`make_probe()`: DepthProbe or TemporalDepthHead, built after seeding) on one
    view's tokens per window and its depth targets (TARGET_KEYS), kept or streamed, with the L1 loss plus
    `temporal` times the temporal gradient loss; the curve is the validation AbsRel per epoch. The head
    starts at the mean depth of the first training batch's windows. `mean_*` score the training
    windows' mean depth at each pixel (summed over the first epoch), the reading a probe that ignores
    the tokens could reach.
    `train_absrel` scores the kept training windows after training; streamed, the last epoch's."""
    torch.manual_seed(seed)
    probe = make_probe().to(device)
    _, depth, valid = train.first(batch)
    if valid.any():  # start from the mean depth rather than 0 m, a few metres off everywhere
        probe.start_at(((depth * valid).sum() / valid.sum()).item())
    running = torch.zeros(3, dtype=torch.float64)  # this epoch's training metric sums
    map_sums = torch.zeros(2, *depth.shape[1:], dtype=torch.float64)  # the first epoch's depth and pixel counts
    base = train.epochs(batch, seed)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        running.zero_()
        for x, d, v in base(epoch):
            if epoch == 0:
                map_sums[0] += (d * v).sum(0)
                map_sums[1] += v.sum(0)
            yield x, d, v

    def loss(p: torch.nn.Module, x: torch.Tensor, d: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        pred = p(x).float()
        running.add_(metric_sums(pred.detach(), d, v))
        return depth_loss(pred, d, v) + (temporal * temporal_gradient_loss(pred, d, v) if temporal else 0.0)

    scores, mean_map = [], []

    def validate(p: torch.nn.Module) -> float:
        if not mean_map:  # after the first epoch: every training window counted once
            total = mean_over_ranks(map_sums.to(device))
            mean_map.append((total[0] / total[1].clamp(min=1)).float().cpu())
        scores.append(score(probe, val, device, mean_map[0]))
        if not scores[-1]["pixels"]:
            raise ValueError("no validation window has a scored depth pixel")
        return scores[-1]["absrel"]

    curve, losses = fit(data_parallel(probe, train.world), batches, train.steps(batch), loss, validate,
                        epochs=epochs, lr=lr, weight_decay=weight_decay, device=device)
    last = scores[-1]
    train_absrel = metrics(running)["absrel"] if isinstance(train, Streamed) else score(probe, train, device)["absrel"]
    return {"absrel": last["absrel"], "delta1": last["delta1"], "curve": curve,
            "delta1_curve": [s["delta1"] for s in scores], "train_loss": mean_over_ranks(torch.tensor(
                losses, device=device)).tolist(), "train_absrel": train_absrel, "mean_absrel": last["mean_absrel"],
            "mean_delta1": last["mean_delta1"], "probe": probe.cpu()}


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

    def __getitem__(self, key: int) -> dict[str, torch.Tensor | str]:
        frames, maps, scale, (low, high) = self.windows[key % len(self)]  # a streamed probe's epoch keys
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
