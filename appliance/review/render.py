"""A part's image for the terminal: the model's boxes drawn in, and a half-block renderer.

Terminals that speak a graphics protocol (sixel, kitty) get real pixels through textual-image; the
others — and SSH sessions into a plain terminal — get half-block cells: each character cell shows
two vertically stacked pixels, `▀` in the upper pixel's colour on the lower pixel's colour, so the
pixels stay square. Boxes are drawn *after* scaling down, one cell-pixel wide, so that a thin box
does not vanish in the downscale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw
from rich.color import Color
from rich.segment import Segment
from rich.style import Style

from adfm.schema import Box

#: Box outline colours, in box order (the detail text lists each box in its colour).
BOX_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 48, 48),
    (255, 214, 0),
    (0, 200, 255),
    (235, 0, 235),
    (64, 255, 64),
)

#: The operator's own (redrawn) boxes, and the box being drawn: white, unlike any model box.
OPERATOR_COLOR: tuple[int, int, int] = (255, 255, 255)
OPERATOR_COLOR_HEX = "#ffffff"

UPPER_HALF = "▀"

RGB = tuple[int, int, int]


def box_color(index: int) -> tuple[int, int, int]:
    return BOX_COLORS[index % len(BOX_COLORS)]


def box_color_hex(index: int) -> str:
    r, g, b = box_color(index)
    return f"#{r:02x}{g:02x}{b:02x}"


def fit_size(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """The largest size with the image's aspect that fits max_width × max_height (at least 1×1)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    scale = min(max_width / width, max_height / height)
    return max(1, min(max_width, round(width * scale))), max(1, min(max_height, round(height * scale)))


def draw_boxes(
    image: Image.Image, boxes: Sequence[Box], source_size: tuple[int, int], line_width: int = 1,
    colors: Sequence[RGB] | None = None,
) -> Image.Image:
    """A copy of `image` with `boxes` (given in `source_size` pixels) outlined in their colours
    (`colors`, one per box; default the model's box colours in order)."""
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    sw, sh = source_size
    if not boxes or sw <= 0 or sh <= 0:
        return out
    sx, sy = out.width / sw, out.height / sh
    draw = ImageDraw.Draw(out)
    for i, box in enumerate(boxes):
        x1 = min(max(math.floor(box.x1 * sx), 0), out.width - 1)
        y1 = min(max(math.floor(box.y1 * sy), 0), out.height - 1)
        x2 = min(max(math.ceil(box.x2 * sx) - 1, x1), out.width - 1)
        y2 = min(max(math.ceil(box.y2 * sy) - 1, y1), out.height - 1)
        color = colors[i] if colors is not None else box_color(i)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line_width)
    return out


def annotate_full(image: Image.Image, boxes: Sequence[Box], source_size: tuple[int, int] | None = None,
                  colors: Sequence[RGB] | None = None) -> Image.Image:
    """The full-resolution image with boxes (in `source_size` pixels, default the image's), for
    terminals that show real pixels."""
    width = max(2, round(min(image.width, image.height) / 200))
    return draw_boxes(image, boxes, source_size or (image.width, image.height), line_width=width, colors=colors)


def halfblock_lines(
    image: Image.Image,
    columns: int,
    rows: int,
    boxes: Sequence[Box] = (),
    source_size: tuple[int, int] | None = None,
    background: tuple[int, int, int] = (0, 0, 0),
    colors: Sequence[RGB] | None = None,
) -> list[list[Segment]]:
    """`image` fitted into columns × rows cells as half-block segments, centred horizontally.

    `boxes` are in `source_size` pixels (default: the image's own size). Returns at most `rows`
    lines, each exactly `columns` cells wide.
    """
    if columns < 1 or rows < 1:
        return []
    source_size = source_size or (image.width, image.height)
    w, h = fit_size(image.width, image.height, columns, rows * 2)
    small = image.convert("RGB").resize((w, h), Image.Resampling.BOX)
    small = draw_boxes(small, boxes, source_size, colors=colors)
    if h % 2:  # an odd pixel height: the last cell's lower half is background
        padded = Image.new("RGB", (w, h + 1), background)
        padded.paste(small, (0, 0))
        small = padded
    pixels = small.load()
    assert pixels is not None
    left = (columns - w) // 2
    right = columns - w - left
    blank = Style(bgcolor=Color.from_rgb(*background))
    styles: dict[tuple, Style] = {}
    lines: list[list[Segment]] = []
    for y in range(0, small.height, 2):
        line: list[Segment] = [Segment(" " * left, blank)] if left else []
        for x in range(w):
            key = (pixels[x, y], pixels[x, y + 1])
            style = styles.get(key)
            if style is None:
                style = styles[key] = Style(color=Color.from_rgb(*key[0]), bgcolor=Color.from_rgb(*key[1]))
            line.append(Segment(UPPER_HALF, style))
        if right:
            line.append(Segment(" " * right, blank))
        lines.append(line)
    return lines


def halfblock_layout(width: int, height: int, columns: int, rows: int) -> tuple[int, int, int]:
    """Where `halfblock_lines` puts a width × height image in columns × rows cells: (left column,
    drawn width in cells, drawn height in half-cell pixels). For mapping cells back to pixels."""
    w, h = fit_size(width, height, columns, rows * 2)
    return (columns - w) // 2, w, h
