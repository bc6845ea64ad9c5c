"""The model grid, boxes, IoU/GIoU and box matching.

Every side of adfm (rewards, evaluation, the appliance) measures boxes with this module, so a box
the model emits means the same thing in training and on the line.

Qwen2.5-VL sees an image resized so that both sides are multiples of 28 (patch 14 × merge 2) and
the pixel count lies within a budget; it emits boxes in absolute pixels of that resized image.
adfm resizes images itself (`ModelGrid.resize`) before any backend sees them, so the HF processor,
vLLM and llama.cpp all see identical pixels and `to_original` maps boxes back exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: Side multiple of the Qwen2.5-VL grid: patch size 14 × spatial merge 2.
GRID_FACTOR = 28
#: Qwen2.5-VL processor defaults: 56×56 and 1280 merged 28×28 patches (about 1 MP).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280
#: Largest aspect ratio the model's processor accepts.
MAX_ASPECT_RATIO = 200


def smart_resize(
    width: int,
    height: int,
    factor: int = GRID_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Return (width, height) on the grid: sides multiples of `factor`, area within budget, aspect kept.

    Same arithmetic as Qwen2.5-VL's processor (round to the grid; if over budget scale down and
    floor; if under budget scale up and ceil), so a pre-resized image passes through it unchanged.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} exceeds max_pixels {max_pixels}")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT_RATIO}; crop the image (ROI) first"
        )
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt((height * width) / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return w, h


def as_boxes(boxes: object) -> np.ndarray:
    """Coerce a box list (N×4, xyxy) to a float64 array of shape (N, 4); empty input gives (0, 4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def order_corners(boxes: object) -> np.ndarray:
    """Return boxes with x1 ≤ x2 and y1 ≤ y2 (a model may emit corners in either order)."""
    b = as_boxes(boxes)
    return np.stack(
        [
            np.minimum(b[:, 0], b[:, 2]),
            np.minimum(b[:, 1], b[:, 3]),
            np.maximum(b[:, 0], b[:, 2]),
            np.maximum(b[:, 1], b[:, 3]),
        ],
        axis=1,
    )


def clip_boxes(boxes: object, width: float, height: float) -> np.ndarray:
    """Clip boxes to the image rectangle [0, width] × [0, height]."""
    b = order_corners(boxes)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0.0, float(width))
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0.0, float(height))
    return b


def box_area(boxes: object) -> np.ndarray:
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


@dataclass(frozen=True)
class ModelGrid:
    """An original image size and the grid size the model sees; maps boxes between the two."""

    orig_width: int
    orig_height: int
    width: int
    height: int

    @classmethod
    def for_image(
        cls,
        width: int,
        height: int,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> ModelGrid:
        gw, gh = smart_resize(width, height, min_pixels=min_pixels, max_pixels=max_pixels)
        return cls(orig_width=int(width), orig_height=int(height), width=gw, height=gh)

    @property
    def scale_x(self) -> float:
        """Grid pixels per original pixel, horizontally."""
        return self.width / self.orig_width

    @property
    def scale_y(self) -> float:
        return self.height / self.orig_height

    def to_grid(self, boxes: object) -> np.ndarray:
        """Original-image pixel boxes → grid pixel boxes."""
        b = as_boxes(boxes).copy()
        b[:, [0, 2]] *= self.scale_x
        b[:, [1, 3]] *= self.scale_y
        return b

    def to_original(self, boxes: object) -> np.ndarray:
        """Grid pixel boxes (as the model emits them) → original-image pixel boxes."""
        b = as_boxes(boxes).copy()
        b[:, [0, 2]] /= self.scale_x
        b[:, [1, 3]] /= self.scale_y
        return b

    def resize(self, image: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
        """Resize an image (PIL, or an H×W[×C] uint8 array) of the original size onto the grid.

        Bicubic, as the model's processor resamples; returns the same kind it was given.
        """
        from PIL import Image as PILImage

        is_array = isinstance(image, np.ndarray)
        pil = PILImage.fromarray(image) if is_array else image
        if pil.size != (self.orig_width, self.orig_height):
            raise ValueError(
                f"image is {pil.size[0]}x{pil.size[1]} but this grid was made for "
                f"{self.orig_width}x{self.orig_height}"
            )
        out = pil.resize((self.width, self.height), resample=PILImage.Resampling.BICUBIC)
        return np.asarray(out) if is_array else out


def _pairwise(a: object, b: object) -> tuple[np.ndarray, ...]:
    a = as_boxes(a)[:, None, :]
    b = as_boxes(b)[None, :, :]
    area_a = (a[..., 2] - a[..., 0]).clip(0) * (a[..., 3] - a[..., 1]).clip(0)
    area_b = (b[..., 2] - b[..., 0]).clip(0) * (b[..., 3] - b[..., 1]).clip(0)
    iw = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(0)
    ih = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(0)
    inter = iw * ih
    union = area_a + area_b - inter
    cw = np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])
    ch = np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
    enclosing = cw.clip(0) * ch.clip(0)
    return inter, union, enclosing


def iou(a: object, b: object) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (N×4, M×4) → N×M. A pair with zero union scores 0."""
    inter, union, _ = _pairwise(a, b)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def giou(a: object, b: object) -> np.ndarray:
    """Pairwise generalized IoU: IoU − (enclosing − union) / enclosing, in [−1, 1].

    Degenerate pairs (zero-area enclosing box, e.g. two identical points) score 0: a box without
    area localizes nothing.
    """
    inter, union, enclosing = _pairwise(a, b)
    iou_ = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    penalty = np.divide(enclosing - union, enclosing, out=np.zeros_like(inter), where=enclosing > 0)
    return np.where(enclosing > 0, iou_ - penalty, 0.0)


def match_boxes(pred: object, gt: object) -> list[tuple[int, int, float]]:
    """Hungarian matching of predicted to ground-truth boxes on cost 1 − GIoU.

    Returns (pred index, gt index, giou) for each matched pair, min(N, M) pairs, by pred index.
    """
    # scipy is imported here, not at module load: the appliance's worker restarts import this module.
    from scipy.optimize import linear_sum_assignment

    p, g = as_boxes(pred), as_boxes(gt)
    if len(p) == 0 or len(g) == 0:
        return []
    scores = giou(p, g)
    rows, cols = linear_sum_assignment(1.0 - scores)
    return sorted((int(r), int(c), float(scores[r, c])) for r, c in zip(rows, cols, strict=True))
