"""The texture proxy: real photographs from scikit-image's wheel, cut into tiles, defects pasted with masks,
written in the generic folder layout that `adfm-data` and `adfm-train gate` read."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage", reason="the texture proxy needs scikit-image (trainer extra)")


def test_proxy_is_read_as_the_folder_layout_with_masks(tmp_path):
    from adfm.trainer.data.layouts import scan_dataset
    from adfm.trainer.data.texture_proxy import make_texture_proxy

    roots = make_texture_proxy(tmp_path, textures=("brick", "gravel"), tile=64, fit_normal=4, fit_anomalous=3,
                               test_normal=2, test_anomalous=3, seed=0)
    assert [r.texture for r in roots] == ["brick", "gravel"]
    for r in roots:
        scan, detection = scan_dataset(r.test)
        assert detection.layout == "folder"
        samples = scan.usable_samples()
        assert {s.category for s in samples} == {r.texture}
        bad = [s for s in samples if s.anomalous]
        assert len(bad) == 3 and sorted(s.defect_type for s in bad) == ["anomaly"] * 3
        assert sorted(p.name.split("_")[1] for p in (r.test / "anomalous").iterdir()) == \
            ["blob.png", "missing.png", "scratch.png"]
        for s in bad:
            mask = np.asarray(Image.open(s.masks[0]))
            assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
        assert len(list((r.fit / "normal").iterdir())) == 4
        image = np.asarray(Image.open(next((r.fit / "normal").iterdir())))
        assert image.shape == (64, 64, 3) and image.std() > 5  # real texture, not a flat fill


def test_each_defect_changes_the_pixels_its_mask_marks():
    from adfm.trainer.data.texture_proxy import DEFECTS, paste_defect, texture_image

    photo = texture_image("grass")
    assert photo.shape == (512, 512) and photo.dtype == np.uint8
    tile = np.ascontiguousarray(photo[100:228, 300:428])
    for kind in DEFECTS:
        for seed in range(3):
            out, mask = paste_defect(tile, kind, np.random.default_rng(seed))
            inside = mask > 0
            assert 0 < inside.mean() < 0.25, kind
            diff = np.abs(out.astype(int) - tile.astype(int))
            assert diff[inside].mean() > 8 * max(diff[~inside].mean(), 0.5), kind


def test_same_seed_same_tiles_and_fit_tiles_come_from_another_region(tmp_path):
    from adfm.trainer.data.texture_proxy import FIT_SHARE, make_texture_proxy, texture_image

    a = make_texture_proxy(tmp_path / "a", textures=("brick",), tile=64, fit_normal=3, fit_anomalous=0,
                           test_normal=3, test_anomalous=1, seed=5)[0]
    b = make_texture_proxy(tmp_path / "b", textures=("brick",), tile=64, fit_normal=3, fit_anomalous=0,
                           test_normal=3, test_anomalous=1, seed=5)[0]
    for rel in ("fit/brick/normal/000.png", "test/brick/normal/002.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    # every test tile is found in the right part of the photograph (some turn/flip of it), none in the left
    photo = texture_image("brick")
    split = round(FIT_SHARE * photo.shape[1])
    tile = np.asarray(Image.open(next((a.test / "normal").iterdir())))[..., 0]
    variants = [np.rot90(t, k) for t in (tile, tile[:, ::-1]) for k in range(4)]

    def found(region: np.ndarray) -> bool:
        import cv2

        return any(cv2.minMaxLoc(cv2.matchTemplate(region, np.ascontiguousarray(v), cv2.TM_SQDIFF_NORMED))[0] < 1e-6
                   for v in variants)

    assert found(np.ascontiguousarray(photo[:, split:])) and not found(np.ascontiguousarray(photo[:, :split]))
    assert not any((b.fit / "anomalous").iterdir())  # no known defective parts asked for


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tile": 16}, "tile must be"),
    ({"textures": ("marble",)}, "unknown texture 'marble'"),
    ({"fit_normal": 2}, "≥ 3 fitting normal tiles"),
])
def test_bad_settings_are_named(tmp_path, kwargs, message):
    from adfm.trainer.data.texture_proxy import ProxyError, make_texture_proxy

    with pytest.raises(ProxyError, match=message):
        make_texture_proxy(tmp_path, **kwargs)
