"""Decoding image files for the folder and replay sources, telling 'not an image' from 'truncated'.

OpenCV decodes; the file signature says whether bytes that fail to decode are an image still being
written (wait a little) or something that will never be one (reject at once).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from .errors import FrameError

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


def _jpeg_frame_info(data: bytes) -> tuple[int, int, bool] | None:
    """(bits per sample, components, has EXIF) from a JPEG's header segments; None when unreadable."""
    exif = False
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            exif = True
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 10 > len(data):
                return None
            return data[i + 4], data[i + 9], exif
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a usable file
            return None
        i += 2 + length
    return None


def storable_as_is(data: bytes) -> str | None:
    """The suffix ("png" or "jpg") under which the journal can keep a camera file's own bytes instead
    of encoding its decoded pixels again; None when it cannot.

    Only files that every reader decodes to the pixels the camera handed over qualify: PNGs of 8-bit
    gray or RGB (16-bit, alpha and palette images convert differently in OpenCV and PIL) and 8-bit
    gray or colour JPEGs without EXIF (OpenCV applies an EXIF orientation, other readers may not).
    """
    fmt = image_format(data)
    if fmt == "png":
        if len(data) < 26 or data[12:16] != b"IHDR":
            return None
        bit_depth, colour_type = data[24], data[25]
        return "png" if bit_depth == 8 and colour_type in (0, 2) else None
    if fmt == "jpeg":
        info = _jpeg_frame_info(data)
        if info is None:
            return None
        bits, components, exif = info
        return "jpg" if bits == 8 and components in (1, 3) and not exif and _jpeg_complete(data) else None
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


def read_file(path: Path) -> bytes:
    """One file's bytes; FrameError (with the file name) when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FrameError(f"{path.name}: cannot read ({exc.strerror or exc})") from exc



def natural_key(name: str) -> list[int | str]:
    """Sort key that puts frame_2.png before frame_10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
