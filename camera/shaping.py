"""From what OpenCV hands over to the Frame's pixels: ROI crop, BGR→RGB, rotation — once, here."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import FrameError

_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


class FrameShaper:
    """Crops the ROI (in sensor pixels, before rotation), converts to RGB and rotates clockwise."""

    def __init__(self, roi: tuple[int, int, int, int] | None = None, rotate: int = 0):
        if rotate not in (0, 90, 180, 270):
            raise ValueError(f"rotate {rotate} must be 0, 90, 180 or 270")
        self.roi = roi
        self.rotate = rotate

    @property
    def keeps_pixels(self) -> bool:
        """No crop and no rotation: the frame's pixels are the source image's, only converted to RGB."""
        return self.roi is None and self.rotate == 0

    def __call__(self, image: np.ndarray, source_name: str = "") -> np.ndarray:
        if image is None or image.size == 0:
            raise FrameError(f"{source_name}: empty image")
        if image.dtype != np.uint8:
            raise FrameError(f"{source_name}: {image.dtype} pixels, expected 8-bit")
        channels = 1 if image.ndim == 2 else image.shape[2]
        if channels not in _TO_RGB:
            raise FrameError(f"{source_name}: {channels}-channel image, expected gray, BGR or BGRA")
        if self.roi is not None:
            x, y, w, h = self.roi
            height, width = image.shape[:2]
            if x + w > width or y + h > height:
                raise FrameError(
                    f"{source_name}: roi [{x}, {y}, {w}, {h}] does not fit the {width}x{height} frame"
                )
            image = image[y : y + h, x : x + w]
        rgb = cv2.cvtColor(image, _TO_RGB[channels])  # a cropped view is fine: no extra copy
        if self.rotate:
            rgb = cv2.rotate(rgb, _ROTATIONS[self.rotate])
        return rgb
