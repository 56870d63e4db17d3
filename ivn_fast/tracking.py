"""The paper's object-tracking probe: given each object's box in the first frame, a readout of the
frozen tokens predicts its box in every later frame (Smooth L1 + GIoU loss, mean IoU reported).

The paper runs it on Waymo Open windows (16 frames at 5 fps, 1-25 objects). Here it runs on
`synthetic:track` (the built-in set's shape, whose box the renderer knows in every frame) and on
box lists, one JSON object per line, one window each:

    {"frames": ["seq1/000.jpg", ..., "seq1/015.jpg"], "boxes": [[[x0, y0, x1, y1] or null, ...], ...]}

`boxes` holds one list per object with one entry per frame, in pixels of the images, null where
the object is not seen. Frames are cut as the paper's preprocessing does: the centre square of the
shorter side, resized to the probe's size; boxes follow the cut, are clipped to it, and a box
under 0.5% of the frame counts as not seen. An object not seen in the first frame is left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ivn_fast.data.augment import cut, view_crop
from ivn_fast.data.health import encode_skips
from ivn_fast.data.synthetic import Rendered, RenderedClips
from ivn_fast.data.windows import WindowList, read_images, read_lines
from ivn_fast.features import Source, Streamed
from ivn_fast.fit import fit
from ivn_fast.models.probe import TrackingProbe
from ivn_fast.train.distributed import data_parallel, mean_over_ranks, sum_over_ranks

MIN_AREA = 0.005  # boxes under this share of the frame are not seen (the paper's filter)
L1_WEIGHT, GIOU_WEIGHT = 1.0, 0.5  # the paper's loss weights
# Smooth L1's switch from squared to absolute error, in fractions of the frame: small enough that
# boxes a few pixels off still pull, as an L1 loss would (the paper does not give it).
SMOOTH_L1_BETA = 0.05
TARGET_KEYS = ("boxes", "seen")


def _ordered(b: torch.Tensor) -> torch.Tensor:
    """Boxes with x0 <= x1 and y0 <= y1, whatever order a regressor put the corners in."""
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([torch.minimum(x0, x1), torch.minimum(y0, y1), torch.maximum(x0, x1),
                        torch.maximum(y0, y1)], -1)


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise IoU and generalised IoU of boxes [..., 4] (x0, y0, x1, y1)."""
    a, b = _ordered(a), _ordered(b)
    inter = _area(torch.cat([torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])], -1))
    union = _area(a) + _area(b) - inter
    iou = inter / (union + eps)
    hull = _area(torch.cat([torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])], -1))
    return iou, iou - (hull - union) / (hull + eps)


def track_loss(pred: torch.Tensor, target: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Smooth L1 (weight 1) + GIoU loss (weight 0.5) averaged over the seen boxes; [..., 4] boxes,
    [...] seen."""
    l1 = F.smooth_l1_loss(pred, target, reduction="none", beta=SMOOTH_L1_BETA).sum(-1)
    giou = box_iou(pred, target)[1]
    per_box = L1_WEIGHT * l1 + GIOU_WEIGHT * (1 - giou)
    return (per_box * seen).sum() / seen.sum().clamp(min=1)


def later_frames(targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-frame boxes [N, O, 4], the boxes to predict [N, O, T-1, 4], and which of them count
    [N, O, T-1]: seen in that frame, of an object seen in the first."""
    boxes, seen = targets["boxes"], targets["seen"]
    return boxes[:, :, 0], boxes[:, :, 1:], seen[:, :, 1:] & seen[:, :, :1]


@torch.no_grad()
def iou_sums(pred: torch.Tensor, target: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """[sum of IoU over the seen (object, frame) pairs, their count]: mean IoU, as the paper reports it,
    is their ratio over a whole set."""
    return torch.stack([(box_iou(pred.float(), target)[0] * seen).sum(), seen.sum()]).double().cpu()


def _ratio(sums: torch.Tensor) -> float:
    """Mean IoU from iou_sums, summed over every process's share."""
    total, count = sum_over_ranks(sums.tolist())
    return total / max(count, 1.0)


def mean_iou(pred: torch.Tensor, target: torch.Tensor, seen: torch.Tensor) -> float:
    """IoU averaged over every seen (object, frame) pair of boxes [..., 4], seen [...]."""
    return _ratio(iou_sums(pred, target, seen))


@torch.no_grad()
def score(probe: torch.nn.Module, source: Source, device: torch.device) -> dict[str, float]:
    """Mean IoU of the probe's boxes and of keeping the first box over every window of `source`, and
    the number of boxes they are averaged over."""
    probe.eval()
    sums = torch.zeros(2, 2, dtype=torch.float64)  # probe, first box kept
    for tokens, boxes, seen in source.batches():
        first, target, ok = later_frames({"boxes": boxes, "seen": seen})
        pred = probe(tokens[:, 0].to(device), first.to(device)).cpu()
        sums[0] += iou_sums(pred, target, ok)
        sums[1] += iou_sums(first[:, :, None].expand_as(target), target, ok)
    return {"miou": _ratio(sums[0]), "static_miou": _ratio(sums[1]), "boxes": sum_over_ranks([float(sums[0, 1])])[0]}


def train_tracker(train: Source, val: Source, *, num_frames: int, num_heads: int, epochs: int, batch: int, lr: float,
                  weight_decay: float, seed: int, device: torch.device) -> dict:
    """Train the tracking probe on one view's tokens per window and its box targets (TARGET_KEYS), kept
    or streamed; the per-epoch validation mean IoU is the probe curve. `static_miou` is the IoU of
    keeping the first box in every frame, which the probe starts from. `train_miou` scores the kept
    training windows after training; streamed, it is the last epoch's, while it trained."""
    torch.manual_seed(seed)
    probe = TrackingProbe(train.width, num_frames, num_heads).to(device)
    running = torch.zeros(2, dtype=torch.float64)  # this epoch's training IoU sums
    base = train.epochs(batch, seed)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        running.zero_()
        return ((x, *later_frames({"boxes": b, "seen": s})) for x, b, s in base(epoch))

    def loss(p: torch.nn.Module, x: torch.Tensor, first: torch.Tensor, target: torch.Tensor,
             seen: torch.Tensor) -> torch.Tensor:
        pred = p(x, first).float()
        running.add_(iou_sums(pred.detach(), target, seen))
        return track_loss(pred, target, seen)

    scores = []

    def validate(p: torch.nn.Module) -> float:
        scores.append(score(probe, val, device))
        if not scores[-1]["boxes"]:
            raise ValueError("no validation window has an object seen in its first frame and a later one")
        return scores[-1]["miou"]

    curve, losses = fit(data_parallel(probe, train.world), batches, train.steps(batch), loss, validate,
                        epochs=epochs, lr=lr, weight_decay=weight_decay, device=device)
    streamed = isinstance(train, Streamed)
    return {"miou": curve[-1], "curve": curve, "train_loss": mean_over_ranks(torch.tensor(losses, device=device)).tolist(),
            "train_miou": _ratio(running) if streamed else score(probe, train, device)["miou"],
            "static_miou": scores[-1]["static_miou"], "probe": probe.cpu()}


def synthetic_targets(clip: Rendered) -> dict[str, torch.Tensor]:
    """The built-in set's shape as the one object to track."""
    boxes = clip.boxes[None]
    return {"boxes": boxes, "seen": _area(boxes) >= MIN_AREA}


def synthetic_tracks(num_videos: int, num_frames: int, size: int, *, seed: int) -> RenderedClips:
    return RenderedClips(num_videos, num_frames, size, seed=seed, targets=synthetic_targets)


class BoxList(WindowList):
    """Windows of a box list (see the module docstring); every item has the list's largest object
    count, the missing ones never seen."""

    def __init__(self, path: str, *, num_frames: int, size: int, root: str = ""):
        super().__init__([(frames, self._boxes(where, entry, num_frames))
                          for where, entry, frames in read_lines(path, num_frames, root)],
                         num_frames=num_frames, size=size)
        self.max_objects = max(len(boxes) for _, boxes in self.windows)

    @staticmethod
    def _boxes(where: str, entry: dict, num_frames: int) -> np.ndarray:
        """[O, T, 4] pixel boxes, NaN where null."""
        objects = entry.get("boxes")
        if not isinstance(objects, list) or not objects:
            raise ValueError(f"{where}: 'boxes' must list at least one object")
        boxes = np.full((len(objects), num_frames, 4), np.nan)
        for o, track in enumerate(objects):
            if not isinstance(track, list) or len(track) != num_frames:
                raise ValueError(f"{where}: object {o} needs one box (or null) per frame, {num_frames} in all")
            for t, box in enumerate(track):
                if box is None:
                    continue
                if (not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box)
                        or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]):
                    raise ValueError(f"{where}: object {o}, frame {t}: a box is [x0, y0, x1, y1] with x1 > x0 "
                                     f"and y1 > y0, got {box!r}")
                boxes[o, t] = box
        return boxes

    def __getitem__(self, key: int) -> dict[str, torch.Tensor | str]:
        paths, pixel_boxes = self.windows[key % len(self)]  # a streamed probe's epoch keys: no augmentation
        boxes = torch.zeros(self.max_objects, self.num_frames, 4)
        seen = torch.zeros(self.max_objects, self.num_frames, dtype=torch.bool)
        try:
            frames = read_images(paths)
        except OSError as e:
            return self.unreadable(paths[0], e, {"boxes": boxes, "seen": seen})
        h, w = frames.shape[1:3]
        crop = view_crop(h, w)
        scaled = torch.from_numpy(pixel_boxes).float()
        scaled = (scaled - torch.tensor([crop.left, crop.top] * 2)) / crop.width
        scaled = scaled.clamp(0, 1)
        ok = ~scaled.isnan().any(-1) & (_area(scaled) >= MIN_AREA)
        ok &= ok[:, :1].clone()  # an object not seen in the first frame has nothing to track from
        n = len(pixel_boxes)
        boxes[:n] = torch.where(ok[..., None], scaled, 0.0)
        seen[:n] = ok
        return {"video": cut(torch.from_numpy(frames), crop, self.size), "boxes": boxes, "seen": seen,
                "skipped": encode_skips([])}
