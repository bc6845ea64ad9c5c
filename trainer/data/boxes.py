"""Pseudo-boxes from anomaly masks, as the paper derives its localization targets.

The datasets give pixel masks; the model is asked for boxes. A defect is often annotated as several
fragments (a scratch broken by reflections, scattered contamination), so the mask is first dilated
to merge fragments that belong together, then each connected component of the dilated mask gives
one box: the minimal rectangle around the *original* mask pixels of that component (dilation only
decides grouping, it never inflates a box).

Boxes are xyxy in original-image pixels with pixel-edge coordinates: a single anomalous pixel at
column x, row y gives [x, y, x + 1, y + 1], so every mask pixel lies inside a box and box areas
count pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from adfm.geometry import DEFAULT_MAX_PIXELS, GRID_FACTOR, ModelGrid

#: Components with fewer mask pixels than this are dropped when a larger component exists.
DEFAULT_MIN_AREA = 4


def grid_cell_kernel(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Odd kernel side equal to one model-grid cell (28 grid pixels) measured in original pixels.

    This is the default dilation kernel: Qwen2.5-VL sees the image as 28×28 merged patches on the
    resized grid, so two fragments less than one cell apart fall in the same or neighbouring
    visual tokens and the model cannot point at them separately; asking for separate boxes there
    would demand a precision it does not have. At the default pixel budget one cell is about 2.9%
    of the side of a square image (31 px on MVTec AD's 1024×1024, 87 px on GoodsAD's 3000×3000,
    29 px on a 256×256 image that is not downscaled), a gap at which annotators' fragments of one
    defect merge but distinct defects usually do not.
    """
    grid = ModelGrid.for_image(width, height, max_pixels=max_pixels)
    cell = GRID_FACTOR * max(width / grid.width, height / grid.height)
    k = max(3, math.ceil(cell - 1e-9))
    return k if k % 2 == 1 else k + 1


@dataclass(frozen=True)
class BoxConfig:
    """How masks become pseudo-boxes; part of the cache key, recorded with every split.

    `kernel_size` None means one model-grid cell per image (`grid_cell_kernel`).
    """

    kernel_size: int | None = None
    min_area: int = DEFAULT_MIN_AREA

    def __post_init__(self) -> None:
        if self.kernel_size is not None and self.kernel_size < 1:
            raise ValueError(f"kernel_size must be ≥ 1 (or None for one grid cell), got {self.kernel_size}")
        if self.min_area < 0:
            raise ValueError(f"min_area must be ≥ 0, got {self.min_area}")

    @property
    def key(self) -> str:
        return f"k={self.kernel_size if self.kernel_size is not None else 'cell'},min_area={self.min_area}"


def pseudo_boxes(
    mask: np.ndarray,
    kernel_size: int | None = None,
    min_area: int = DEFAULT_MIN_AREA,
) -> list[list[float]]:
    """Boxes [[x1, y1, x2, y2], …] around the anomalous regions of `mask` (2-D, non-zero = anomaly).

    - `kernel_size`: side of the square dilation kernel; fragments separated by fewer than
      `kernel_size` background pixels (horizontally, vertically or diagonally) merge into one box.
      None (default) uses one model-grid cell of this image size (`grid_cell_kernel`), so the
      grouping is the same fraction of the picture whatever the camera resolution.
    - `min_area`: components with fewer mask pixels than this (default 4: isolated 1–3 pixel
      specks, which in benchmark masks are annotation or anti-aliasing noise) are dropped — but
      only beside a larger component: a mask made only of specks still gets its boxes, because an
      anomalous image must not end up with no localization target.

    Returns [] for an empty mask. Boxes are sorted top-to-bottom, left-to-right.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be a 2-D array, got shape {m.shape}")
    if m.size == 0:
        return []
    fg = m != 0
    if not fg.any():
        return []
    h, w = fg.shape
    k = grid_cell_kernel(w, h) if kernel_size is None else int(kernel_size)
    if k < 1:
        raise ValueError(f"kernel_size must be ≥ 1, got {k}")
    fg8 = fg.astype(np.uint8)
    grouped = cv2.dilate(fg8, np.ones((k, k), np.uint8)) if k > 1 else fg8
    n, labels = cv2.connectedComponents(grouped, connectivity=8)
    labels = labels * fg  # keep only original mask pixels, labelled by their group
    counts = np.bincount(labels.ravel(), minlength=n)
    slices = ndimage.find_objects(labels)
    comps = [(int(counts[i + 1]), s) for i, s in enumerate(slices) if s is not None]
    kept = [c for c in comps if c[0] >= min_area] or comps
    boxes = [
        [float(sx.start), float(sy.start), float(sx.stop), float(sy.stop)] for _, (sy, sx) in kept
    ]
    return sorted(boxes, key=lambda b: (b[1], b[0], b[3], b[2]))
