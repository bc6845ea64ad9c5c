"""The model grid, GIoU and matching: hand-computed cases, transformers parity, round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adfm.geometry import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    ModelGrid,
    clip_boxes,
    giou,
    iou,
    match_boxes,
    order_corners,
    smart_resize,
)
from tests.conftest import needs_torch


@needs_torch
def test_grid_matches_transformers_smart_resize_on_1000_random_sizes():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    rng = np.random.default_rng(0)
    budgets = [(DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS), (112 * 112, 224 * 224), (3136, 12845056)]
    checked = 0
    for i in range(1000):
        w, h = int(rng.integers(1, 4000)), int(rng.integers(1, 4000))
        if max(w, h) / min(w, h) > 200:
            continue
        lo, hi = budgets[i % len(budgets)]
        grid = ModelGrid.for_image(w, h, min_pixels=lo, max_pixels=hi)
        hf_h, hf_w = hf_smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
        assert (grid.width, grid.height) == (hf_w, hf_h), (w, h, lo, hi)
        checked += 1
    assert checked > 900


@given(st.integers(28, 3000), st.integers(28, 3000))
@settings(max_examples=300, deadline=None)
def test_grid_sides_are_multiples_of_28_and_within_budget(w, h):
    if max(w, h) / min(w, h) > 200:
        return
    g = ModelGrid.for_image(w, h)
    assert g.width % 28 == 0 and g.height % 28 == 0
    assert g.width * g.height <= DEFAULT_MAX_PIXELS
    assert g.width * g.height >= DEFAULT_MIN_PIXELS or g.width * g.height >= 28 * 28


def test_pre_resized_image_is_a_fixed_point():
    g = ModelGrid.for_image(1000, 750)
    assert smart_resize(g.width, g.height) == (g.width, g.height)


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="positive"):
        ModelGrid.for_image(0, 10)
    with pytest.raises(ValueError, match="aspect ratio"):
        ModelGrid.for_image(10000, 20)


@given(
    st.integers(50, 2000),
    st.integers(50, 2000),
    st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=1, max_size=8),
)
@settings(max_examples=200, deadline=None)
def test_box_round_trip_within_one_pixel(w, h, rel):
    if max(w, h) / min(w, h) > 200:
        return
    g = ModelGrid.for_image(w, h, max_pixels=512 * 512)
    boxes = order_corners([[a * w, b * h, c * w, d * h] for a, b, c, d in rel])
    back = g.to_original(g.to_grid(boxes))
    assert np.abs(back - boxes).max() <= 1.0
    # and grid → original → grid
    grid_boxes = g.to_grid(boxes)
    assert np.abs(g.to_grid(g.to_original(grid_boxes)) - grid_boxes).max() <= 1.0


def test_grid_maps_a_known_box():
    g = ModelGrid(orig_width=1000, orig_height=500, width=560, height=280)
    np.testing.assert_allclose(g.to_grid([[100, 50, 500, 250]]), [[56, 28, 280, 140]])
    np.testing.assert_allclose(g.to_original([[56, 28, 280, 140]]), [[100, 50, 500, 250]])


def test_resize_returns_grid_size_for_pil_and_array():
    from PIL import Image

    g = ModelGrid.for_image(300, 200, max_pixels=224 * 224)
    arr = np.zeros((200, 300, 3), np.uint8)
    out = g.resize(arr)
    assert isinstance(out, np.ndarray) and out.shape == (g.height, g.width, 3)
    pil = g.resize(Image.fromarray(arr))
    assert pil.size == (g.width, g.height)
    with pytest.raises(ValueError, match="300x200"):
        g.resize(np.zeros((10, 10, 3), np.uint8))


# Hand-computed GIoU cases: (box a, box b, IoU, GIoU)
GIOU_CASES = [
    # identical
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0, 1.0),
    # nested: inner 5x5 in 10x10 → IoU 25/100, enclosing = outer = union → GIoU = IoU
    ([0, 0, 10, 10], [2, 2, 7, 7], 0.25, 0.25),
    # half overlap: [0,0,10,10] & [5,0,15,10]: inter 50, union 150, enclosing 150
    ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3, 1 / 3),
    # touching edges: inter 0, union 200, enclosing 200 → GIoU 0
    ([0, 0, 10, 10], [10, 0, 20, 10], 0.0, 0.0),
    # disjoint with gap: [0,0,10,10] & [20,0,30,10]: union 200, enclosing 300 → -1/3
    ([0, 0, 10, 10], [20, 0, 30, 10], 0.0, -1 / 3),
    # diagonal disjoint: [0,0,1,1] & [2,2,3,3]: union 2, enclosing 9 → -7/9
    ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, -7 / 9),
    # degenerate zero-area vs real box: union 100, enclosing 100 if inside → 0 - 0 = 0
    ([5, 5, 5, 5], [0, 0, 10, 10], 0.0, 0.0),
    # degenerate identical points: no area anywhere → 0 by definition
    ([3, 3, 3, 3], [3, 3, 3, 3], 0.0, 0.0),
    # zero-area line far away: union 100, enclosing [0,0,20,10]=200 → -0.5
    ([20, 0, 20, 10], [0, 0, 10, 10], 0.0, -0.5),
]


@pytest.mark.parametrize(("a", "b", "want_iou", "want_giou"), GIOU_CASES)
def test_iou_giou_hand_computed(a, b, want_iou, want_giou):
    assert iou([a], [b])[0, 0] == pytest.approx(want_iou)
    assert giou([a], [b])[0, 0] == pytest.approx(want_giou)
    # symmetric
    assert giou([b], [a])[0, 0] == pytest.approx(want_giou)


def test_giou_is_pairwise_n_by_m():
    a = [[0, 0, 10, 10], [20, 20, 30, 30]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]]
    g = giou(a, b)
    assert g.shape == (2, 3)
    assert g[0, 0] == pytest.approx(1.0)
    assert g[0, 1] == pytest.approx(1 / 3)
    assert giou(np.zeros((0, 4)), b).shape == (0, 3)


@given(
    st.lists(st.tuples(*[st.floats(-100, 100)] * 4), min_size=1, max_size=5),
    st.lists(st.tuples(*[st.floats(-100, 100)] * 4), min_size=1, max_size=5),
)
@settings(max_examples=200, deadline=None)
def test_giou_bounded(a, b):
    g = giou(order_corners(a), order_corners(b))
    assert np.all(g <= 1.0 + 1e-9) and np.all(g >= -1.0 - 1e-9)
    assert np.all(g <= iou(order_corners(a), order_corners(b)) + 1e-9)


def test_match_boxes_hungarian_beats_greedy():
    # Greedy on pred 0 would take gt 0 (GIoU 0.6x) and leave pred 1 badly matched; the optimum swaps.
    gt = [[0, 0, 10, 10], [8, 0, 18, 10]]
    pred = [[4, 0, 14, 10], [0, 0, 9, 10]]
    pairs = match_boxes(pred, gt)
    assert [(p, g) for p, g, _ in pairs] == [(0, 1), (1, 0)]
    total = sum(s for _, _, s in pairs)
    alt = giou(pred, gt)
    assert total >= alt[0, 0] + alt[1, 1] - 1e-12


def test_match_boxes_unequal_counts_and_empty():
    gt = [[0, 0, 10, 10]]
    pred = [[50, 50, 60, 60], [1, 1, 10, 10]]
    pairs = match_boxes(pred, gt)
    assert len(pairs) == 1 and pairs[0][:2] == (1, 0)
    assert pairs[0][2] == pytest.approx(81 / 100)
    assert match_boxes([], gt) == [] and match_boxes(pred, []) == []


def test_clip_and_order():
    b = clip_boxes([[30, -5, -10, 50]], 20, 40)
    np.testing.assert_allclose(b, [[0, 0, 20, 40]])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        order_corners([[1, 2, 3]])
