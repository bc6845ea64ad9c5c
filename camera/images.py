"""Decoding image files for the folder and replay sources, telling 'not an image' from 'truncated'.

OpenCV decodes; the file signature says whether bytes that fail to decode are an image still being
written (wait a little) or something that will never be one (reject at once).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from adfm.camera.errors import FrameError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".pbm", ".pgm", ".ppm", ".pnm"}
)

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"RIFF", "webp"),  # confirmed below by the WEBP tag at offset 8
    (b"\x00\x00\x00\x0cjP  ", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
)
_PNM = re.compile(rb"^P[1-6]\s")


def image_format(data: bytes) -> str | None:
    """The format named by the file's first bytes, or None when they match no image format."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            if name == "webp" and data[8:12] != b"WEBP":
                return None
            return name
    if _PNM.match(data[:3]):
        return "pnm"
    return None


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG ends with its EOI marker (some writers append padding or a short trailer after it).

    OpenCV 4 decodes a truncated JPEG into a half-grey image with only a warning; inside
    entropy-coded data 0xFF is always stuffed, so FF D9 near the end means the writer finished.
    """
    return b"\xff\xd9" in data[-1024:]


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode file bytes to an 8-bit BGR (or gray/BGRA) array; FrameError saying what is wrong."""
    fmt = image_format(data)
    if fmt is None:
        raise FrameError(f"{name}: not an image (unknown file signature, {len(data)} bytes)")
    if fmt == "jpeg" and not _jpeg_complete(data):
        raise FrameError(f"{name}: truncated jpeg ({len(data)} bytes, no end marker)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise FrameError(f"{name}: corrupt {fmt} ({exc.err or exc})") from exc
    if image is None:
        raise FrameError(f"{name}: truncated or corrupt {fmt} ({len(data)} bytes)")
    return image


def read_image_file(path: Path) -> np.ndarray:
    """Read and decode one file; FrameError (with the file name) when missing or undecodable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FrameError(f"{path.name}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, path.name)


def natural_key(name: str) -> list[int | str]:
    """Sort key that puts frame_2.png before frame_10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
