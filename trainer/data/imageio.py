"""Reading dataset images and masks with errors that name the file.

Benchmarks mix formats (VisA: JPG images, PNG masks; DAGM: 8-bit gray PNG; MMAD's DS-MVTec:
RGB masks) and real copies contain truncated downloads, so every reader here raises
`DataFileError` naming the file instead of a bare decoder exception.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# Decoder failures Pillow raises for damaged files (truncated data, bad chunks, bombs).
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataFileError(ValueError):
    """A dataset file that cannot be used; `path` names it, the message says why."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.reason = message
        super().__init__(f"{path}: {message}")


def is_image_file(path: str | Path) -> bool:
    """An image by its extension; hidden files (macOS `._000.png` resource forks) are not."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


#: JPEGs are decoded at a reduced scale (libjpeg's DCT scaling) down to about this size when only
#: integrity and thumbnails are needed: every byte is still read, so truncation is still caught,
#: at a third of the time for a 3000×3000 GoodsAD image.
DRAFT_SIZE = (256, 256)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any image mode; 16-bit and float gray are scaled to 8 bits first."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.astype(np.uint8))
    return img.convert("RGB")


def image_size(
    path: str | Path,
    decode: bool = True,
    visit: Callable[[Image.Image], None] | None = None,
) -> tuple[int, int]:
    """(width, height) of an image file; with `decode`, the whole file is read to prove it is intact.

    Without `decode` only the header is read (a truncated body goes unnoticed). `visit` is called
    with the decoded image (JPEGs at reduced scale, see `DRAFT_SIZE`) so a caller can take a
    thumbnail without decoding the file twice.
    """
    p = Path(path)
    if not p.is_file():
        raise DataFileError(p, "file not found")
    try:
        with Image.open(p) as img:
            size = img.size
            if decode:
                img.draft(img.mode, DRAFT_SIZE)
                img.load()
                if visit is not None:
                    visit(img)
    except _DECODE_ERRORS as exc:
        raise DataFileError(p, f"unreadable image ({type(exc).__name__}: {exc})") from exc
    if size[0] <= 0 or size[1] <= 0:
        raise DataFileError(p, f"image has no pixels ({size[0]}x{size[1]})")
    return int(size[0]), int(size[1])


def load_rgb(path: str | Path, draft: tuple[int, int] | None = None) -> Image.Image:
    """The image as an RGB PIL image (gray and palette images are expanded).

    `draft` lets a JPEG decode at a reduced scale no smaller than that size (for thumbnails).
    """
    p = Path(path)
    if not p.is_file():
        raise DataFileError(p, "file not found")
    try:
        with Image.open(p) as img:
            if draft is not None:
                img.draft(img.mode, draft)
            return to_rgb(img)
    except _DECODE_ERRORS as exc:
        raise DataFileError(p, f"unreadable image ({type(exc).__name__}: {exc})") from exc


def _mask_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataFileError(path, "mask file not found")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except _DECODE_ERRORS as exc:
        raise DataFileError(path, f"unreadable mask ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3:  # RGB(A) masks: any colour channel set marks the defect; alpha is not a mark
        arr = arr[..., :3].any(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0] != 0
    return arr != 0


def read_mask(paths: Sequence[str | Path], size: tuple[int, int] | None = None) -> np.ndarray:
    """Combine mask files by OR into one boolean H×W array (non-zero pixels are anomalous).

    `size` (width, height) is the image's size; a mask of another size raises, naming the mask —
    a resized or misfiled mask would silently misplace every box.
    """
    if not paths:
        raise ValueError("read_mask needs at least one mask path")
    combined: np.ndarray | None = None
    first: Path | None = None
    for raw in paths:
        p = Path(raw)
        m = _mask_array(p)
        h, w = m.shape
        if size is not None and (w, h) != tuple(size):
            raise DataFileError(p, f"mask is {w}x{h} but its image is {size[0]}x{size[1]}")
        if combined is None:
            combined, first = m, p
        elif combined.shape != m.shape:
            raise DataFileError(
                p, f"mask is {w}x{h} but {first} is {combined.shape[1]}x{combined.shape[0]}"
            )
        else:
            combined = combined | m
    assert combined is not None
    return combined


def mask_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a mask from its header."""
    p = Path(path)
    if not p.is_file():
        raise DataFileError(p, "mask file not found")
    try:
        with Image.open(p) as img:
            return int(img.size[0]), int(img.size[1])
    except _DECODE_ERRORS as exc:
        raise DataFileError(p, f"unreadable mask ({type(exc).__name__}: {exc})") from exc
