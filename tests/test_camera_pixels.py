"""GenICam pixel formats → the 8-bit gray/BGR pixels every source hands to the frame shaper."""

from __future__ import annotations

import numpy as np
import pytest

from adfm.camera.errors import FrameError
from adfm.camera.pixels import BY_CODE, FORMATS, format_name, to_opencv

CODE = {f.name: f.code for f in FORMATS}
W, H = 8, 6
RGB = (200, 100, 30)


def _mosaic(pattern: str, rgb: tuple[int, int, int] = RGB, dtype: type = np.uint8, shift: int = 0) -> np.ndarray:
    """A flat-coloured sensor image in the GenICam Bayer `pattern` (row 0 then row 1 of each 2×2 cell)."""
    mosaic = np.zeros((H, W), dtype)
    index = {"R": 0, "G": 1, "B": 2}
    for dy in range(2):
        for dx in range(2):
            mosaic[dy::2, dx::2] = rgb[index[pattern[dy * 2 + dx]]] << shift
    return mosaic


@pytest.mark.parametrize(("name", "pattern"), [("BayerRG8", "RGGB"), ("BayerGR8", "GRBG"),
                                                ("BayerBG8", "BGGR"), ("BayerGB8", "GBRG")])
def test_bayer_patterns_demosaic_to_the_right_colour(name, pattern):
    out = to_opencv(_mosaic(pattern).tobytes(), CODE[name], W, H)
    assert out.shape == (H, W, 3)
    assert tuple(int(v) for v in out[3, 4][::-1]) == RGB  # BGR out, compared as RGB


def test_deep_bayer_keeps_the_top_eight_bits():
    raw = _mosaic("RGGB", dtype=np.uint16, shift=4)  # 12-bit values in 16-bit little-endian words
    out = to_opencv(raw.astype("<u2").tobytes(), CODE["BayerRG12"], W, H)
    assert tuple(int(v) for v in out[3, 4][::-1]) == RGB


@pytest.mark.parametrize(("name", "bits"), [("Mono10", 10), ("Mono12", 12), ("Mono14", 14), ("Mono16", 16)])
def test_deep_mono_is_scaled_to_eight_bits(name, bits):
    values = np.arange(W * H, dtype=np.uint16).reshape(H, W) * 5
    out = to_opencv((values << (bits - 8)).astype("<u2").tobytes(), CODE[name], W, H)
    assert out.dtype == np.uint8 and out.shape == (H, W)
    assert np.array_equal(out, values.astype(np.uint8))


@pytest.mark.parametrize("name", ["Mono12Packed", "Mono10Packed"])
def test_gige_packed_mono_takes_each_pixels_high_byte(name):
    high = np.arange(W * H, dtype=np.uint8).reshape(H, W)
    flat = high.reshape(-1)
    packed = np.empty((flat.size // 2, 3), np.uint8)
    packed[:, 0], packed[:, 1], packed[:, 2] = flat[0::2], 0xA5, flat[1::2]  # byte 1: the low bits of both
    assert np.array_equal(to_opencv(packed.tobytes(), CODE[name], W, H), high)


def test_colour_formats_come_out_bgr():
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[...] = RGB
    assert tuple(to_opencv(rgb.tobytes(), CODE["RGB8"], W, H)[0, 0]) == RGB[::-1]
    assert tuple(to_opencv(rgb[..., ::-1].copy().tobytes(), CODE["BGR8"], W, H)[0, 0]) == RGB[::-1]
    rgba = np.dstack([rgb, np.full((H, W), 7, np.uint8)])
    assert to_opencv(rgba.tobytes(), CODE["RGBa8"], W, H).shape == (H, W, 3)
    yuyv = np.tile(np.array([200, 128, 40, 128], np.uint8), W * H // 2)  # bright, dark pixels; no colour
    out = to_opencv(yuyv.tobytes(), CODE["YUV422_8"], W, H)
    assert out.shape == (H, W, 3) and np.all(out[..., 0] == out[..., 2])  # gray stays gray
    assert out[0, 0, 1] > 180 and out[0, 1, 1] < 60  # Y comes first in YUYV
    uyvy = yuyv.reshape(-1, 2)[:, ::-1].copy()  # the same pixels in UYVY order
    assert np.array_equal(to_opencv(uyvy.tobytes(), CODE["YUV422_8_UYVY"], W, H), out)


def test_unknown_format_and_short_buffer_are_frame_errors_naming_the_format():
    with pytest.raises(FrameError, match=r"0x0123abcd is not converted.*Mono8"):
        to_opencv(b"\0" * 64, 0x0123ABCD, 8, 8)
    with pytest.raises(FrameError, match=r"Mono16: buffer holds 10 bytes, 8x6 needs 96"):
        to_opencv(b"\0" * 10, CODE["Mono16"], W, H)
    assert format_name(CODE["BayerGB10"]) == "BayerGB10" and format_name(7) == "0x00000007"


def test_codes_are_unique_and_match_pfnc_bit_depths():
    assert len(BY_CODE) == len(FORMATS)
    for fmt in FORMATS:  # PFNC: bits 16-23 hold the bits per pixel
        bits = (fmt.code >> 16) & 0xFF
        expected = {"Mono8": 8, "Mono16": 16, "Mono10Packed": 12, "Mono12Packed": 12, "RGB8": 24, "BGR8": 24,
                    "RGBa8": 32, "BGRa8": 32, "YUV422_8": 16, "YUV422_8_UYVY": 16}.get(fmt.name)
        if expected is None:
            expected = 8 if fmt.name.endswith("8") else 16
        assert bits == expected, fmt.name
