"""Pictures people would rather look at than read: clip grids with labelled rows, curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ivn_fast.masks import mask_bool
from ivn_fast.models.patches import unpatchify

_LABEL_W = 120
_GAP = 2
_TITLE_H = 14


def _frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [0, 1] -> [T, H, W, 3] uint8."""
    return (video.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def clip_grid(rows: dict[str, torch.Tensor], clips: int, titles: list[str] | None = None) -> Image.Image:
    """rows: label -> [B, 3, T, H, W] in [0, 1]. For each clip, one strip of frames per label, under
    its title when given."""
    first = next(iter(rows.values()))
    _, _, t, h, w = first.shape
    n = min(clips, first.shape[0])
    strips = len(rows) * n
    title_h = _TITLE_H if titles else 0
    width = _LABEL_W + t * (w + _GAP)
    height = strips * (h + _GAP) + n * (6 + title_h)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for i in range(n):
        if titles:
            draw.text((4, y + 1), titles[i], fill=(0, 0, 0))
            y += title_h
        for label, video in rows.items():
            frames = _frames(video[i])
            for j in range(t):
                canvas.paste(Image.fromarray(np.ascontiguousarray(frames[j])), (_LABEL_W + j * (w + _GAP), y))
            draw.text((4, y + h // 2 - 6), f"clip {i}: {label}" if not titles else label, fill=(0, 0, 0))
            y += h + _GAP
        y += 6
    return canvas


def _save(img: Image.Image, path: Path) -> Path:
    """Written whole or not at all: a viewer refreshing the file never sees half a picture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    tmp.replace(path)
    return path


def save_clip_grid(rows: dict[str, torch.Tensor], path: Path, clips: int = 4,
                   titles: list[str] | None = None) -> Path:
    return _save(clip_grid(rows, clips, titles), path)


_PANEL_W, _PANEL_H, _MARGIN = 420, 260, 48
_LINE_COLOURS = [(66, 114, 196), (230, 130, 40), (80, 160, 80), (190, 60, 60)]


def curves(panels: dict[str, dict[str, list[float]]], title: str, baseline: dict[str, float] | None = None,
           baseline_label: str = "chance") -> Image.Image:
    """Line charts side by side, one per panel (panel -> series -> one value per epoch), each y
    axis from 0 to its largest value; `baseline` draws a dashed line, named `baseline_label`
    (chance, or what a readout that ignores the tokens reaches), in the panels it names."""
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=11)
    width = len(panels) * (_PANEL_W + _MARGIN) + _MARGIN
    img = Image.new("RGB", (width, _PANEL_H + 2 * _MARGIN + 20), "white")
    draw = ImageDraw.Draw(img)
    draw.text((width / 2, 14), title, fill="black", font=font, anchor="mm")
    for p, (name, series) in enumerate(panels.items()):
        left, top = _MARGIN + p * (_PANEL_W + _MARGIN), _MARGIN
        values = [v for vs in series.values() for v in vs if v == v] or [1.0]  # v == v: not NaN
        top_v = max(max(values), (baseline or {}).get(name, 0.0), 1e-12) * 1.05
        epochs = max(len(vs) for vs in series.values())

        def xy(i: int, v: float) -> tuple[float, float]:
            return left + _PANEL_W * (i / max(epochs - 1, 1)), top + _PANEL_H * (1 - v / top_v)

        draw.rectangle([left, top, left + _PANEL_W, top + _PANEL_H], outline="black")
        for tick in range(5):
            v = top_v * tick / 4
            draw.line([xy(0, v), (left + _PANEL_W, xy(0, v)[1])], fill=(228, 228, 228))
            draw.text((left - 4, xy(0, v)[1]), f"{v:.3g}", fill="black", font=small, anchor="rm")
        draw.text((left + _PANEL_W / 2, top - 12), name, fill="black", font=font, anchor="mm")
        draw.text((left + _PANEL_W / 2, top + _PANEL_H + 16), f"epoch (1-{epochs})", fill="black", font=small,
                  anchor="mm")
        if baseline and name in baseline:
            y = xy(0, baseline[name])[1]
            for x in range(int(left), int(left + _PANEL_W), 10):
                draw.line([(x, y), (x + 5, y)], fill=(120, 120, 120))
            draw.text((left + _PANEL_W - 4, y - 3), baseline_label, fill=(120, 120, 120), font=small, anchor="rb")
        for k, (label, vs) in enumerate(series.items()):
            colour = _LINE_COLOURS[k % len(_LINE_COLOURS)]
            points = [xy(i, v) for i, v in enumerate(vs) if v == v]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            draw.text((left + 8, top + 10 + 14 * k), label, fill=colour, font=small, anchor="lm")
    return img


def save_curves(panels: dict[str, dict[str, list[float]]], path: Path, title: str,
                baseline: dict[str, float] | None = None, baseline_label: str = "chance") -> Path:
    """`curves`, written atomically as a PNG."""
    return _save(curves(panels, title, baseline, baseline_label), path)


def draw_boxes(video: torch.Tensor, boxes: dict[tuple[int, int, int], torch.Tensor], seen: torch.Tensor) -> torch.Tensor:
    """video [3, T, H, W] in [0, 1] with rectangles drawn in: colour -> boxes [O, T, 4] (x0, y0, x1,
    y1 in fractions of the frame), each drawn where seen [O, T]."""
    _, t, h, w = video.shape
    frames = _frames(video)
    out = []
    for j in range(t):
        img = Image.fromarray(np.ascontiguousarray(frames[j]))
        draw = ImageDraw.Draw(img)
        for colour, b in boxes.items():
            for o in range(b.shape[0]):
                if seen[o, j]:
                    x0, y0, x1, y1 = (b[o, j] * torch.tensor([w, h, w, h])).tolist()
                    draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1) - 1, max(y0, y1) - 1], outline=colour)
        out.append(torch.from_numpy(np.array(img)))
    return torch.stack(out).permute(3, 0, 1, 2).float() / 255


def hide_tokens(pixels: torch.Tensor, vis_idx: torch.Tensor, patch: int, grid: tuple[int, int, int],
                shade: float = 0.15) -> torch.Tensor:
    """pixels [B, 3, T, H, W] in [0, 1] with every token outside vis_idx painted dark grey."""
    hidden = mask_bool(vis_idx, grid[0] * grid[1] * grid[2]).float()
    hidden = unpatchify(hidden.unsqueeze(-1).expand(-1, -1, 3 * patch * patch), patch, grid)
    return pixels * (1 - hidden) + shade * hidden
