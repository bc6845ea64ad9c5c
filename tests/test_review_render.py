"""Half-block rendering: sizes, the two pixels of each cell, boxes that survive the downscale."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adfm.appliance.review.render import BOX_COLORS, UPPER_HALF, annotate_full, draw_boxes, fit_size, halfblock_lines
from adfm.schema import Box


def rgb(segment) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(upper, lower) pixel colours of a half-block segment."""
    return segment.style.color.triplet, segment.style.bgcolor.triplet


@pytest.mark.parametrize(
    "size, box, expected",
    [((100, 50), (40, 40), (40, 20)), ((50, 100), (40, 40), (20, 40)), ((10, 10), (40, 30), (30, 30)),
     ((1000, 1), (10, 10), (10, 1))],
)
def test_fit_size_keeps_the_aspect_within_the_box(size, box, expected):
    assert fit_size(*size, *box) == expected


def test_fit_size_refuses_an_empty_image():
    with pytest.raises(ValueError, match="0×5"):
        fit_size(0, 5, 10, 10)


def test_each_cell_shows_the_upper_and_lower_pixel():
    px = np.array([[[255, 0, 0], [0, 255, 0]],
                   [[0, 0, 255], [255, 255, 255]]], np.uint8)  # 2×2
    lines = halfblock_lines(Image.fromarray(px), columns=2, rows=1)
    assert len(lines) == 1 and [s.text for s in lines[0]] == [UPPER_HALF, UPPER_HALF]
    assert rgb(lines[0][0]) == ((255, 0, 0), (0, 0, 255))
    assert rgb(lines[0][1]) == ((0, 255, 0), (255, 255, 255))


def test_narrow_image_is_centred_and_lines_are_exactly_as_wide_as_asked():
    img = Image.new("RGB", (10, 40), (200, 200, 200))
    lines = halfblock_lines(img, columns=30, rows=10)
    assert len(lines) == 10
    for line in lines:
        assert sum(len(s.text) for s in line) == 30
    # 5 pixels wide (40 px tall into 20 pixel rows): 12 blank cells left, 13 right
    assert lines[0][0].text == " " * 12 and lines[0][-1].text == " " * 13


def test_odd_pixel_height_pads_the_last_lower_half_with_background():
    img = Image.new("RGB", (6, 3), (10, 20, 30))
    lines = halfblock_lines(img, columns=6, rows=5)  # fits 6×3 pixels: two cell rows
    assert len(lines) == 2
    assert rgb(lines[1][0]) == ((10, 20, 30), (0, 0, 0))


def test_a_box_in_source_pixels_is_outlined_on_the_scaled_image():
    black = Image.new("RGB", (20, 20), (0, 0, 0))
    box = Box.from_xyxy([40, 40, 120, 120], "scratch")  # in a 200×200 original
    lines = halfblock_lines(black, columns=20, rows=10, boxes=[box], source_size=(200, 200))
    red = BOX_COLORS[0]
    grid = np.zeros((20, 20), bool)  # which pixels came out in the box colour
    for row, line in enumerate(lines):
        for x, seg in enumerate(line):
            up, low = rgb(seg)
            grid[2 * row, x], grid[2 * row + 1, x] = up == red, low == red
    ys, xs = np.nonzero(grid)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (4, 11, 4, 11)
    assert grid[4, 4:12].all() and grid[11, 4:12].all() and grid[4:12, 4].all() and grid[4:12, 11].all()
    assert not grid[5:11, 5:11].any()  # an outline, not a filled block


def test_boxes_take_colours_in_order_and_are_clipped_to_the_image():
    img = Image.new("RGB", (10, 10), (0, 0, 0))
    out = np.asarray(draw_boxes(img, [Box.from_xyxy([0, 0, 4, 4]), Box.from_xyxy([6, 6, 30, 30])], (10, 10)))
    assert tuple(out[0, 0]) == BOX_COLORS[0] and tuple(out[9, 9]) == BOX_COLORS[1] and tuple(out[6, 6]) == BOX_COLORS[1]
    assert tuple(out[2, 2]) == (0, 0, 0)


def test_full_resolution_boxes_are_thick_enough_to_see():
    img = Image.new("RGB", (1000, 800), (0, 0, 0))
    out = np.asarray(annotate_full(img, [Box.from_xyxy([100, 100, 500, 500])]))
    red = np.all(out == BOX_COLORS[0], axis=-1)
    assert red[100:104, 300].all() and not red[110, 300]  # 4 px line for an 800 px side
