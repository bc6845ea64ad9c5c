"""PNG overlays of masks and pseudo-boxes, to look at what the model will be asked to find."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .imageio import load_rgb, read_mask
from .records import Sample

_MASK_TINT = np.array([255, 40, 40], dtype=np.float32)
_BOX_COLOUR = (40, 255, 80)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def preview_name(sample: Sample) -> str:
    """A file name unique per sample id (slashes and odd characters become '_')."""
    return _UNSAFE.sub("_", sample.id.replace("/", "__")) + ".png"


def render_preview(sample: Sample, boxes: list[list[float]] | None = None) -> Image.Image:
    """The image with its mask tinted red and its boxes drawn in green."""
    img = load_rgb(sample.image)
    arr = np.asarray(img, dtype=np.float32)
    if sample.masks:
        mask = read_mask(sample.masks, size=img.size)
        arr[mask] = 0.55 * arr[mask] + 0.45 * _MASK_TINT
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(img.size) / 256))
    for x1, y1, x2, y2 in boxes if boxes is not None else (sample.boxes or []):
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=_BOX_COLOUR, width=width)
    return out


def write_preview(
    sample: Sample, out_dir: str | Path, boxes: list[list[float]] | None = None, max_side: int | None = 1024
) -> Path:
    """Save the overlay as `<out_dir>/<sample id>.png`, scaled down to `max_side` if larger."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / preview_name(sample)
    img = render_preview(sample, boxes)
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    img.save(path)
    return path
