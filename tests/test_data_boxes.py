"""Pseudo-boxes from masks: coverage, merging by the kernel, tightness, empty masks, defaults."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from adfm.trainer.data import BoxConfig, DataFileError, grid_cell_kernel, pseudo_boxes, read_mask

masks = arrays(np.bool_, st.tuples(st.integers(1, 48), st.integers(1, 48)), elements=st.booleans())


def _inside(x: int, y: int, boxes: list[list[float]]) -> bool:
    return any(x1 <= x and x + 1 <= x2 and y1 <= y and y + 1 <= y2 for x1, y1, x2, y2 in boxes)


@settings(max_examples=150, deadline=None)
@given(mask=masks, kernel=st.integers(1, 9), min_area=st.sampled_from([0, 1]))
def test_every_mask_pixel_lies_inside_some_box(mask, kernel, min_area):
    boxes = pseudo_boxes(mask, kernel_size=kernel, min_area=min_area)
    ys, xs = np.nonzero(mask)
    assert all(_inside(int(x), int(y), boxes) for x, y in zip(xs, ys, strict=True))
    assert (len(boxes) == 0) == (not mask.any())


@settings(max_examples=150, deadline=None)
@given(mask=masks, kernel=st.integers(1, 9))
def test_boxes_are_tight_and_inside_the_image(mask, kernel):
    h, w = mask.shape
    for x1, y1, x2, y2 in pseudo_boxes(mask, kernel_size=kernel, min_area=0):
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        region = mask[y1:y2, x1:x2]
        # minimal: every edge row/column of the box holds a mask pixel
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()


@settings(max_examples=200, deadline=None)
@given(
    kernel=st.integers(1, 15),
    gap=st.integers(0, 20),
    vertical=st.booleans(),
    a=st.integers(1, 6),
    b=st.integers(1, 6),
    offset=st.integers(-3, 3),
)
def test_fragments_closer_than_the_kernel_merge(kernel, gap, vertical, a, b, offset):
    """Two blobs `gap` background pixels apart: one box iff gap < kernel, else two."""
    mask = np.zeros((60, 60), bool)
    mask[20:26, 5 : 5 + a] = True
    start = 5 + a + gap
    mask[20 + offset : 26 + offset, start : start + b] = True
    if vertical:
        mask = mask.T
    boxes = pseudo_boxes(mask, kernel_size=kernel, min_area=0)
    assert len(boxes) == (1 if gap < kernel else 2)


def test_no_box_for_an_empty_mask():
    assert pseudo_boxes(np.zeros((32, 40), np.uint8)) == []
    assert pseudo_boxes(np.zeros((0, 0), np.uint8)) == []


def test_box_coordinates_are_pixel_edges_in_original_pixels():
    mask = np.zeros((100, 200), np.uint8)
    mask[10:20, 30:50] = 255
    assert pseudo_boxes(mask, kernel_size=3) == [[30.0, 10.0, 50.0, 20.0]]
    single = np.zeros((5, 5), np.uint8)
    single[2, 3] = 1
    assert pseudo_boxes(single, kernel_size=1, min_area=0) == [[3.0, 2.0, 4.0, 3.0]]


def test_dilation_groups_but_never_inflates_a_box():
    mask = np.zeros((64, 64), bool)
    mask[10:14, 10:14] = True
    mask[10:14, 18:22] = True  # 4-pixel gap
    assert pseudo_boxes(mask, kernel_size=9) == [[10.0, 10.0, 22.0, 14.0]]
    assert pseudo_boxes(mask, kernel_size=3) == [[10.0, 10.0, 14.0, 14.0], [18.0, 10.0, 22.0, 14.0]]


def test_min_area_drops_specks_only_beside_a_larger_component():
    mask = np.zeros((64, 64), bool)
    mask[5:25, 5:25] = True
    mask[50, 50] = True  # a one-pixel speck far away
    assert pseudo_boxes(mask, kernel_size=3, min_area=4) == [[5.0, 5.0, 25.0, 25.0]]
    assert len(pseudo_boxes(mask, kernel_size=3, min_area=0)) == 2
    only_speck = np.zeros((64, 64), bool)
    only_speck[30, 30] = True
    assert pseudo_boxes(only_speck, kernel_size=3, min_area=4) == [[30.0, 30.0, 31.0, 31.0]]


def test_non_binary_mask_values_count_as_anomaly():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:4, 2:4] = 1  # VisA masks hold class ids, not 255
    mask[15:17, 15:17] = 7
    assert len(pseudo_boxes(mask, kernel_size=1, min_area=0)) == 2


def test_default_kernel_is_one_model_grid_cell():
    assert grid_cell_kernel(1024, 1024) == 31  # shown on a 980 px grid: 28 × 1024/980 = 29.3 → odd 31
    assert grid_cell_kernel(3000, 3000) == 87  # 28 × 3000/980 = 85.7
    assert grid_cell_kernel(256, 256) == 29
    assert grid_cell_kernel(2048, 1024) > grid_cell_kernel(1024, 1024)


def test_default_kernel_is_used_when_none():
    mask = np.zeros((1024, 1024), bool)
    mask[100:110, 100:110] = True
    mask[100:110, 130:140] = True  # 20 px apart: below one grid cell (31 px) → merged
    assert len(pseudo_boxes(mask)) == 1
    mask2 = np.zeros((1024, 1024), bool)
    mask2[100:110, 100:110] = True
    mask2[100:110, 150:160] = True  # 40 px apart → separate
    assert len(pseudo_boxes(mask2)) == 2


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="2-D"):
        pseudo_boxes(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="kernel_size"):
        BoxConfig(kernel_size=0)
    with pytest.raises(ValueError, match="min_area"):
        BoxConfig(min_area=-1)


def test_read_mask_combines_files_and_checks_size(tmp_path):
    a = np.zeros((30, 40), np.uint8)
    a[1:3, 1:3] = 255
    b = np.zeros((30, 40, 3), np.uint8)
    b[20:22, 30:33, 0] = 200  # an RGB (colour-coded) mask
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    m = read_mask([tmp_path / "a.png", tmp_path / "b.png"], size=(40, 30))
    assert m.dtype == bool and m.sum() == 4 + 6
    with pytest.raises(DataFileError, match=r"a\.png: mask is 40x30 but its image is 64x64"):
        read_mask([tmp_path / "a.png"], size=(64, 64))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataFileError, match=r"bad\.png: unreadable mask"):
        read_mask([tmp_path / "bad.png"])


def test_jpeg_integrity_check_keeps_the_true_size_and_catches_truncation(tmp_path):
    from adfm.trainer.data.imageio import image_size

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((768, 1024, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.JPG", quality=90)
    seen = []
    assert image_size(tmp_path / "a.JPG", decode=True, visit=lambda im: seen.append(im.size)) == (1024, 768)
    assert seen and seen[0][0] < 1024  # decoded at a reduced scale: every byte read, fewer pixels made
    data = (tmp_path / "a.JPG").read_bytes()
    (tmp_path / "cut.JPG").write_bytes(data[: len(data) * 2 // 3])
    assert image_size(tmp_path / "cut.JPG", decode=False) == (1024, 768)
    with pytest.raises(DataFileError, match=r"cut\.JPG: unreadable image"):
        image_size(tmp_path / "cut.JPG", decode=True)
