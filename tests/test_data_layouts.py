"""Each native layout, generated synthetically, is detected and read into the one sample record."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adfm.synthetic import SYNTHETIC_LAYOUTS, make_synthetic_dataset
from adfm.trainer.data import BoxConfig, DataFileError, check_samples, detect_layout, read_mask, scan_dataset

SIZE = (96, 96)
N_TRAIN, N_GOOD, N_DEFECT, DEFECTS = 4, 2, 2, ("scratch", "spot")

#: layout written → layout detected (the CSV variant is the folder layout)
EXPECTED = {name: name for name in SYNTHETIC_LAYOUTS} | {"folder_csv": "folder"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    return {
        name: make_synthetic_dataset(
            base / name, layout=name, n_train=N_TRAIN, n_test_good=N_GOOD, n_test_defect=N_DEFECT,
            defects=DEFECTS, size=SIZE, seed=3,
        )
        for name in SYNTHETIC_LAYOUTS
    }


@pytest.mark.parametrize("written", sorted(EXPECTED))
def test_layout_is_detected_and_read(roots, written):
    root = roots[written]
    assert detect_layout(root).layout == EXPECTED[written]
    scan, _ = scan_dataset(root)
    assert scan.skipped == [], scan.skipped
    assert scan.problems == [], scan.problems
    n_cats = 2
    anomalous = [s for s in scan.samples if s.anomalous]
    normal = [s for s in scan.samples if not s.anomalous]
    assert len(anomalous) == n_cats * N_DEFECT * len(DEFECTS)
    expected_normal = n_cats * (N_GOOD if written == "mmad" else N_TRAIN + N_GOOD)  # MMAD lists test images
    assert len(normal) == expected_normal
    assert len({s.id for s in scan.samples}) == len(scan.samples)
    for s in scan.samples:
        assert Path(s.image).is_absolute() and Path(s.image).is_file()
        assert s.dataset == EXPECTED[written]
        if s.anomalous:
            assert s.masks and all(Path(m).is_file() for m in s.masks), s
            assert s.boxes is None and s.defect_type != "good"
        else:
            assert s.masks == [] and s.boxes == [] and s.defect_type == "good"
    checked = check_samples(scan.samples, box_config=BoxConfig(), workers=2)
    assert not any(c.problems for c in checked)
    for c in checked:
        assert (c.sample.width, c.sample.height) == SIZE
        assert bool(c.sample.boxes) == c.sample.anomalous


def test_mvtec_like_layouts_are_told_apart_by_category_names(roots):
    assert detect_layout(roots["mpdd"]).layout == "mpdd"
    assert detect_layout(roots["goodsad"]).layout == "goodsad"
    assert detect_layout(roots["dtd"]).layout == "dtd"
    # the synthetic part names are no benchmark's: read as mvtec, and said so
    reason = detect_layout(make_synthetic_dataset(roots["mvtec"].parent / "parts", categories=("washer",),
                                                  n_train=1, n_test_good=1, n_test_defect=1, size=SIZE)).reason
    assert "not of any known benchmark" in reason


def test_forced_layout_overrides_detection(roots):
    scan, detection = scan_dataset(roots["mpdd"], layout="goodsad")
    assert detection.layout == "goodsad" and {s.dataset for s in scan.samples} == {"goodsad"}
    with pytest.raises(ValueError, match="unknown layout"):
        scan_dataset(roots["mpdd"], layout="nope")


def test_visa_reads_jpg_images_png_masks_and_class_valued_masks(roots):
    scan, _ = scan_dataset(roots["visa"])
    anomalous = [s for s in scan.samples if s.anomalous]
    assert {Path(s.image).suffix for s in scan.samples} == {".JPG"}
    assert {Path(m).suffix for s in anomalous for m in s.masks} == {".png"}
    values = np.unique(np.asarray(Image.open(anomalous[0].masks[0])))
    assert 255 not in values and values.max() > 0  # class ids, not 255
    assert read_mask(anomalous[0].masks).any()
    assert {s.defect_type for s in anomalous} == set(DEFECTS)  # from image_anno.csv
    assert {s.split for s in scan.samples} == {"train", "test"}


def test_mvtec_loco_combines_several_masks_per_image(roots):
    scan, _ = scan_dataset(roots["mvtec_loco"])
    anomalous = [s for s in scan.samples if s.anomalous]
    assert {s.defect_type for s in anomalous} == {"structural_anomalies", "logical_anomalies"}
    assert {s.extra["anomaly_kind"] for s in anomalous} == {"structural", "logical"}
    multi = [s for s in anomalous if len(s.masks) > 1]
    assert multi, "the synthetic LOCO writes two masks per image"
    s = multi[0]
    parts = [read_mask([m]) for m in s.masks]
    combined = read_mask(s.masks)
    assert combined.sum() == np.logical_or.reduce(parts).sum() > max(p.sum() for p in parts)
    assert {x.split for x in scan.samples} == {"train", "val", "test"}


def test_goodsad_masks_without_mask_suffix_and_dtd_bad_folder(roots):
    scan, _ = scan_dataset(roots["goodsad"])
    anomalous = [s for s in scan.samples if s.anomalous]
    assert all(Path(s.masks[0]).stem == Path(s.image).stem for s in anomalous)
    assert {Path(s.image).suffix for s in scan.samples} == {".jpg"}
    dtd, _ = scan_dataset(roots["dtd"])
    assert {s.defect_type for s in dtd.samples if s.anomalous} == {"bad"}


def test_dagm_reads_labels_txt(roots):
    scan, _ = scan_dataset(roots["dagm"])
    assert {s.category for s in scan.samples} == {"Class1", "Class2"}
    train_bad = [s for s in scan.samples if s.split == "train" and s.anomalous]
    assert len(train_bad) == 2 * len(DEFECTS)
    assert all(Path(s.masks[0]).name == Path(s.image).stem + "_label.PNG" for s in train_bad)
    # without Labels.txt, the label masks alone decide, and that is noted
    labels = roots["dagm"] / "Class1" / "Test" / "Label" / "Labels.txt"
    saved = labels.read_text()
    labels.unlink()
    try:
        scan2, _ = scan_dataset(roots["dagm"])
        assert any("no Label/Labels.txt" in n for n in scan2.notes)
        assert [s.label for s in scan2.samples] == [s.label for s in scan.samples]
    finally:
        labels.write_text(saved)


def test_dagm_bad_labels_line_names_file_and_line(tmp_path):
    root = make_synthetic_dataset(tmp_path / "d", layout="dagm", categories=("Class1",), n_train=2,
                                  n_test_good=1, n_test_defect=1, defects=("spot",), size=SIZE)
    labels = root / "Class1" / "Train" / "Label" / "Labels.txt"
    labels.write_text(labels.read_text() + "9\tmaybe\t0009.PNG\t0\t0\n")
    scan, _ = scan_dataset(root)
    bad = [p for p in scan.problems if p.kind == "bad_metadata"]
    assert len(bad) == 1 and f"{labels}:" in bad[0].message and "maybe" in bad[0].message


def test_mmad_keeps_questions_templates_and_rgb_masks(roots):
    scan, _ = scan_dataset(roots["mmad"])
    assert {s.category for s in scan.samples} == {"DS-MVTec/bottle", "DS-MVTec/carpet"}
    for s in scan.samples:
        conv = s.extra["conversation"]
        assert conv and conv[0]["type"] == "Anomaly Detection"
        assert conv[0]["Answer"] == ("A" if s.anomalous else "B")
        assert s.extra["similar_templates"] and all(Path(t).is_file() for t in s.extra["similar_templates"])
        if s.anomalous:
            assert np.asarray(Image.open(s.masks[0])).ndim == 3  # RGB mask
            assert read_mask(s.masks).any()


def test_folder_layouts_dir_and_csv(roots):
    folder, _ = scan_dataset(roots["folder"])
    assert {s.category for s in folder.samples} == {"folder"}
    csv_scan, _ = scan_dataset(roots["folder_csv"])
    assert len(csv_scan.samples) == len(folder.samples)
    # the CSV file itself is a valid root too
    by_file, detection = scan_dataset(roots["folder_csv"] / "labels.csv")
    assert detection.layout == "folder" and len(by_file.samples) == len(csv_scan.samples)


def test_folder_csv_rejects_bad_labels_naming_the_line(tmp_path):
    root = make_synthetic_dataset(tmp_path / "s", layout="folder_csv", categories=("tile",), n_train=1,
                                  n_test_good=1, n_test_defect=1, defects=("spot",), size=SIZE)
    with (root / "labels.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["images/tile_good_000.png", "broken", ""])
    scan, _ = scan_dataset(root)
    bad = [p for p in scan.problems if p.kind == "bad_metadata"]
    assert len(bad) == 1 and "labels.csv:5" in bad[0].message and "'broken'" in bad[0].message


def test_stray_files_are_skipped_by_name(tmp_path):
    root = make_synthetic_dataset(tmp_path / "m", layout="mvtec", categories=("tile",), n_train=2,
                                  n_test_good=1, n_test_defect=1, defects=("spot",), size=SIZE)
    (root / "readme.txt").write_text("licence")
    Image.new("RGB", (8, 8)).save(root / "tile" / "ground_truth" / "spot" / "077_mask.png")
    Image.new("RGB", (8, 8)).save(root / "tile" / "test" / "loose.png")
    (root / "tile" / "test" / "good" / "._000.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    scan, _ = scan_dataset(root)
    reasons = {Path(s.path).name: s.reason for s in scan.skipped}
    assert reasons == {
        "readme.txt": "not an image file",
        "077_mask.png": "mask without a matching test image",
        "loose.png": "directly in test/, not in a good/ or defect folder",
        "._000.png": "hidden file",
    }
    assert all(not Path(s.image).name.startswith(".") for s in scan.samples)


def test_unknown_root_and_missing_root_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="no known dataset layout") as info:
        detect_layout(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    with pytest.raises(DataFileError, match="dataset root not found"):
        scan_dataset(tmp_path / "nowhere")


def test_synthetic_default_layouts_unchanged(tmp_path):
    """The Foundation's mvtec and folder layouts keep their names and files."""
    root = make_synthetic_dataset(tmp_path / "m", n_train=1, n_test_good=1, n_test_defect=1, size=SIZE)
    assert (root / "washer" / "ground_truth" / "scratch" / "000_mask.png").is_file()
    root = make_synthetic_dataset(tmp_path / "f", layout="folder", n_train=1, n_test_good=1, n_test_defect=1,
                                  size=SIZE)
    assert (root / "masks" / "tile_spot_000.png").is_file() and (root / "normal" / "washer_001.png").is_file()


def test_category_without_test_folder_is_read(tmp_path):
    root = tmp_path / "only-train"
    (root / "bottle" / "train" / "good").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "bottle" / "train" / "good" / "000.png")
    assert detect_layout(root).layout == "mvtec"
    scan, _ = scan_dataset(root)
    assert [s.split for s in scan.samples] == ["train"]
