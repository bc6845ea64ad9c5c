"""Synthetic data: deterministic, in MVTec AD's layout, masks where the defects are."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adfm.synthetic import DEFECT_KINDS, PART_KINDS, make_sample, make_synthetic_dataset


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def test_mvtec_layout_and_determinism(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", categories=["washer"], n_train=2, n_test_good=1, n_test_defect=1)
    b = make_synthetic_dataset(tmp_path / "b", categories=["washer"], n_train=2, n_test_good=1, n_test_defect=1)
    files = _files(a)
    assert files == [
        "washer/ground_truth/scratch/000_mask.png",
        "washer/ground_truth/spot/000_mask.png",
        "washer/test/good/000.png",
        "washer/test/scratch/000.png",
        "washer/test/spot/000.png",
        "washer/train/good/000.png",
        "washer/train/good/001.png",
    ]
    assert files == _files(b)
    for f in files:
        assert np.array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f))), f
    c = make_synthetic_dataset(tmp_path / "c", categories=["washer"], n_train=2, n_test_good=1, n_test_defect=1,
                               seed=1)
    assert not np.array_equal(np.asarray(Image.open(a / files[-1])), np.asarray(Image.open(c / files[-1])))


@pytest.mark.parametrize("kind", PART_KINDS)
@pytest.mark.parametrize("defect", DEFECT_KINDS)
def test_defect_changes_pixels_only_near_its_mask(kind, defect):
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    clean = make_sample(kind, None, rng_a)
    bad = make_sample(kind, defect, rng_b)
    assert bad.mask.dtype == np.uint8 and set(np.unique(bad.mask)) <= {0, 255}
    area = (bad.mask > 0).mean()
    # a scratch that runs off a washer's rim keeps only its part on the metal: a few dozen pixels
    assert 0.0003 < area < 0.15, area
    diff = np.abs(bad.image.astype(int) - clean.image.astype(int)).sum(-1)
    inside = diff[bad.mask > 0].mean()
    # the defect is visible: pixels under the mask changed clearly; far away nothing changed
    assert inside > 25, inside
    from scipy.ndimage import binary_dilation

    far = ~binary_dilation(bad.mask > 0, iterations=4)
    assert diff[far].max() == 0


def test_folder_layout(tmp_path):
    root = make_synthetic_dataset(tmp_path, layout="folder", categories=["pill"], n_train=2, n_test_good=1,
                                  n_test_defect=1, defects=["crack"])
    assert sorted(p.name for p in (root / "normal").iterdir()) == ["pill_000.png", "pill_001.png", "pill_002.png"]
    assert [p.name for p in (root / "anomalous").iterdir()] == ["pill_crack_000.png"]
    assert [p.name for p in (root / "masks").iterdir()] == ["pill_crack_000.png"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bolt"):
        make_synthetic_dataset("/tmp/unused", categories=["bolt"])
    with pytest.raises(ValueError, match="layout 'nope'"):
        make_synthetic_dataset("/tmp/unused", layout="nope")


def test_a_defect_across_the_rim_is_masked_on_the_part_alone():
    """A missing piece drawn across a washer's rim marks only the rim: the background and the hole
    beside it hold nothing to box."""
    from scipy.ndimage import binary_dilation

    from adfm.synthetic import _render

    crossing = 0
    for seed in range(24):
        _, _, material = _render("washer", np.random.default_rng(seed), (256, 256))
        bad = make_sample("washer", "missing", np.random.default_rng(seed), defect_scale=1.4)
        held = bad.mask > 0
        assert held.any() and not (held & ~material).any(), seed
        crossing += bool((binary_dilation(held, iterations=2) & ~material).any())
    assert crossing >= 3  # the rule was exercised: pieces that reach the rim were cut at it
