"""GenICam pixel formats (PFNC codes, as GigE Vision and USB3 Vision buffers carry them) → 8-bit pixels.

The result is what OpenCV hands the other sources: gray (H×W) or BGR (H×W×3) uint8, so the
camera's ROI crop, RGB conversion and rotation happen in one place (FrameShaper). Deeper formats
keep their top 8 bits; the screening gate and the model see 8-bit images.

OpenCV names Bayer patterns by the second row, one column in: GenICam's BayerRG (row 0: R G) is
OpenCV's BayerBG. The table below carries that shift once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import FrameError


@dataclass(frozen=True)
class PixelFormat:
    name: str  # the GenICam PixelFormat entry name
    code: int  # PFNC value in the buffer
    convert: Callable[[np.ndarray, int, int], np.ndarray]  # (bytes as uint8, width, height) → gray/BGR


def _plane(data: np.ndarray, width: int, height: int, channels: int, dtype: type = np.uint8) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    need = width * height * channels * itemsize
    if data.size < need:
        raise FrameError(f"buffer holds {data.size} bytes, {width}x{height} needs {need}")
    plane = data[:need].view(np.dtype(dtype).newbyteorder("<"))
    shape = (height, width) if channels == 1 else (height, width, channels)
    return plane.reshape(shape)


def _mono8(data: np.ndarray, w: int, h: int) -> np.ndarray:
    return _plane(data, w, h, 1)


def _deep_mono(bits: int) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def convert(data: np.ndarray, w: int, h: int) -> np.ndarray:
        return (_plane(data, w, h, 1, np.uint16) >> (bits - 8)).astype(np.uint8)

    return convert


def _gev_packed(data: np.ndarray, w: int, h: int) -> np.ndarray:
    """Mono10Packed / Mono12Packed (GigE Vision): two pixels in three bytes, bytes 0 and 2 their
    top 8 bits, byte 1 the low bits of both."""
    pixels = w * h
    need = (pixels + 1) // 2 * 3
    if data.size < need:
        raise FrameError(f"buffer holds {data.size} bytes, {w}x{h} packed needs {need}")
    triples = data[:need].reshape(-1, 3)
    out = np.empty(triples.shape[0] * 2, np.uint8)
    out[0::2] = triples[:, 0]
    out[1::2] = triples[:, 2]
    return out[:pixels].reshape(h, w)


def _bayer(code: int, bits: int) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def convert(data: np.ndarray, w: int, h: int) -> np.ndarray:
        raw = _plane(data, w, h, 1) if bits == 8 else _deep_mono(bits)(data, w, h)
        return cv2.cvtColor(raw, code)

    return convert


def _color(channels: int, code: int | None) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def convert(data: np.ndarray, w: int, h: int) -> np.ndarray:
        plane = _plane(data, w, h, channels)
        return plane if code is None else cv2.cvtColor(plane, code)

    return convert


def _yuv422(code: int) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def convert(data: np.ndarray, w: int, h: int) -> np.ndarray:
        return cv2.cvtColor(_plane(data, w, h, 2), code)

    return convert


_BAYER_8 = {"GR": 0x01080008, "RG": 0x01080009, "GB": 0x0108000A, "BG": 0x0108000B}
_BAYER_10 = {"GR": 0x0110000C, "RG": 0x0110000D, "GB": 0x0110000E, "BG": 0x0110000F}
_BAYER_12 = {"GR": 0x01100010, "RG": 0x01100011, "GB": 0x01100012, "BG": 0x01100013}
_BAYER_16 = {"GR": 0x0110002E, "RG": 0x0110002F, "GB": 0x01100030, "BG": 0x01100031}
#: GenICam pattern → OpenCV's name for the same mosaic (see the module docstring).
_OPENCV_BAYER = {
    "RG": cv2.COLOR_BayerBG2BGR,
    "GR": cv2.COLOR_BayerGB2BGR,
    "BG": cv2.COLOR_BayerRG2BGR,
    "GB": cv2.COLOR_BayerGR2BGR,
}

FORMATS: tuple[PixelFormat, ...] = (
    PixelFormat("Mono8", 0x01080001, _mono8),
    PixelFormat("Mono10", 0x01100003, _deep_mono(10)),
    PixelFormat("Mono12", 0x01100005, _deep_mono(12)),
    PixelFormat("Mono14", 0x01100025, _deep_mono(14)),
    PixelFormat("Mono16", 0x01100007, _deep_mono(16)),
    PixelFormat("Mono10Packed", 0x010C0004, _gev_packed),
    PixelFormat("Mono12Packed", 0x010C0006, _gev_packed),
    *(PixelFormat(f"Bayer{p}8", c, _bayer(_OPENCV_BAYER[p], 8)) for p, c in _BAYER_8.items()),
    *(PixelFormat(f"Bayer{p}10", c, _bayer(_OPENCV_BAYER[p], 10)) for p, c in _BAYER_10.items()),
    *(PixelFormat(f"Bayer{p}12", c, _bayer(_OPENCV_BAYER[p], 12)) for p, c in _BAYER_12.items()),
    *(PixelFormat(f"Bayer{p}16", c, _bayer(_OPENCV_BAYER[p], 16)) for p, c in _BAYER_16.items()),
    PixelFormat("RGB8", 0x02180014, _color(3, cv2.COLOR_RGB2BGR)),
    PixelFormat("BGR8", 0x02180015, _color(3, None)),
    PixelFormat("RGBa8", 0x02200016, _color(4, cv2.COLOR_RGBA2BGR)),
    PixelFormat("BGRa8", 0x02200017, _color(4, cv2.COLOR_BGRA2BGR)),
    PixelFormat("YUV422_8_UYVY", 0x0210001F, _yuv422(cv2.COLOR_YUV2BGR_UYVY)),
    PixelFormat("YUV422_8", 0x02100032, _yuv422(cv2.COLOR_YUV2BGR_YUYV)),
)
BY_CODE = {f.code: f for f in FORMATS}
#: Older SFNC spellings cameras still list, mapped onto the names above.
ALIASES = {
    "RGB8Packed": "RGB8",
    "BGR8Packed": "BGR8",
    "RGBA8Packed": "RGBa8",
    "BGRA8Packed": "BGRa8",
    "YUV422Packed": "YUV422_8_UYVY",
    "YUV422_YUYV_Packed": "YUV422_8",
}
SUPPORTED_NAMES = tuple(f.name for f in FORMATS) + tuple(ALIASES)


def is_supported(name: str) -> bool:
    return name in SUPPORTED_NAMES


def format_name(code: int) -> str:
    """The GenICam name of a PFNC code, or its hex value when adfm does not convert it."""
    known = BY_CODE.get(code)
    return known.name if known else f"0x{code:08x}"


def to_opencv(data: bytes | bytearray | memoryview | np.ndarray, code: int, width: int, height: int) -> np.ndarray:
    """The buffer's pixels as gray or BGR uint8; FrameError naming the format when it cannot."""
    fmt = BY_CODE.get(code)
    if fmt is None:
        raise FrameError(
            f"pixel format 0x{code:08x} is not converted by adfm; set genicam.pixel_format to one of: "
            + ", ".join(f.name for f in FORMATS)
        )
    if width <= 0 or height <= 0:
        raise FrameError(f"{fmt.name} buffer with size {width}x{height}")
    raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).reshape(-1)
    try:
        return fmt.convert(raw, width, height)
    except FrameError as exc:
        raise FrameError(f"{fmt.name}: {exc}") from exc
