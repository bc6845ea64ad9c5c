"""A corrupt image, a missing mask and a wrong-size mask: each reported by name, nothing lost silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from adfm.synthetic import make_synthetic_dataset
from adfm.trainer.data import DatasetSource, SplitConfig, make_split, read_manifest
from adfm.trainer.data.cli import main
from adfm.trainer.data.splits import SplitError

SIZE = (96, 96)


@pytest.fixture
def damaged(tmp_path: Path) -> dict[str, Path]:
    """An MVTec-layout dataset with one truncated image, one missing mask, one wrong-size mask."""
    root = make_synthetic_dataset(tmp_path / "mvtec", layout="mvtec", categories=("tile",), n_train=6,
                                  n_test_good=3, n_test_defect=3, defects=("spot",), size=SIZE, seed=5)
    corrupt = root / "tile" / "test" / "good" / "001.png"
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])  # truncated download: the header still reads
    missing_mask = root / "tile" / "ground_truth" / "spot" / "001_mask.png"
    missing_mask.unlink()
    wrong = root / "tile" / "ground_truth" / "spot" / "002_mask.png"
    Image.new("L", (48, 48), 255).save(wrong)
    garbage = root / "tile" / "train" / "good" / "005.png"
    garbage.write_bytes(b"\x00not an image at all")
    return {
        "root": root,
        "corrupt": corrupt,
        "garbage": garbage,
        "no_mask_image": root / "tile" / "test" / "spot" / "001.png",
        "missing_mask": missing_mask,
        "wrong_mask": wrong,
        "wrong_image": root / "tile" / "test" / "spot" / "002.png",
    }


def test_inspect_names_each_damaged_file(damaged, capsys):
    assert main(["inspect", str(damaged["root"]), "--quiet", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{damaged['corrupt']}: unreadable image" in out
    assert f"{damaged['garbage']}: unreadable image" in out
    assert f"{damaged['no_mask_image']}: anomalous image without mask" in out
    assert str(damaged["missing_mask"]) in out  # where the mask was looked for
    assert f"{damaged['wrong_mask']}: mask is 48x48 but its image {damaged['wrong_image']} is 96x96" in out
    assert "problems: 4" in out


def test_inspect_json_lists_problems_and_strict_fails(damaged, capsys):
    assert main(["inspect", str(damaged["root"]), "--json", "--workers", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    kinds = {p["kind"]: p for p in data["problems"]["items"]}
    assert data["problems"]["by_kind"] == {"mask_size": 1, "missing_mask": 1, "unreadable_image": 2}
    assert kinds["mask_size"]["excluded"] and not kinds["missing_mask"]["excluded"]
    assert main(["inspect", str(damaged["root"]), "--quiet", "--strict"]) == 1


def test_quick_inspect_misses_truncation_but_not_garbage(damaged, capsys):
    main(["inspect", str(damaged["root"]), "--json", "--quick"])
    data = json.loads(capsys.readouterr().out)
    paths = {p["path"] for p in data["problems"]["items"] if p["kind"] == "unreadable_image"}
    assert paths == {str(damaged["garbage"])}


def test_split_leaves_out_damaged_files_and_records_why(damaged, tmp_path):
    out = tmp_path / "split"
    result = make_split([DatasetSource(damaged["root"])], SplitConfig(seed=1), out_dir=out, workers=2)
    images = {s.image for s in result.train + result.test}
    assert str(damaged["corrupt"]) not in images and str(damaged["garbage"]) not in images
    assert str(damaged["wrong_image"]) not in images
    kept = [s for s in result.train + result.test if s.image == str(damaged["no_mask_image"])]
    assert len(kept) == 1 and kept[0].boxes is None and kept[0].anomalous  # kept: label known, boxes not
    summary = json.loads((out / "split.json").read_text())
    excluded = {e["path"]: e["message"] for e in summary["excluded"]}
    assert set(excluded) == {str(damaged["corrupt"]), str(damaged["garbage"]), str(damaged["wrong_image"])}
    assert str(damaged["wrong_mask"]) in excluded[str(damaged["wrong_image"])]
    assert [p["path"] for p in summary["problems"]] == [str(damaged["no_mask_image"])]
    n_all = 6 + 3 + 3
    assert len(result.train) + len(result.test) == n_all - 3
    assert len(read_manifest(out / "train.jsonl")) == len(result.train)


def test_strict_split_refuses_and_names_files(damaged, tmp_path, capsys):
    with pytest.raises(SplitError) as info:
        make_split([DatasetSource(damaged["root"])], SplitConfig(), out_dir=tmp_path / "s", strict=True)
    assert str(damaged["corrupt"]) in str(info.value)
    assert not (tmp_path / "s" / "train.jsonl").exists()
    code = main(["split", "--protocol", "multi-domain", "--dataset", str(damaged["root"]),
                 "--out", str(tmp_path / "s2"), "--strict", "--quiet"])
    assert code == 1
    assert str(damaged["wrong_mask"]) in capsys.readouterr().err


def test_missing_visa_mask_and_missing_image_are_named(tmp_path):
    root = make_synthetic_dataset(tmp_path / "visa", layout="visa", categories=("candle",), n_train=2,
                                  n_test_good=1, n_test_defect=2, defects=("spot",), size=SIZE)
    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png"
    mask.unlink()
    image = root / "candle" / "Data" / "Images" / "Normal" / "0001.JPG"
    image.unlink()
    from adfm.trainer.data import scan_dataset

    scan, _ = scan_dataset(root)
    msgs = {p.kind: p.message for p in scan.problems}
    assert f"mask {mask} not found" in msgs["missing_mask"]
    assert msgs["missing_image"].startswith(f"{image}: listed at {root / 'split_csv' / '1cls.csv'}:")


def test_bad_root_exits_2_with_the_path(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: dataset root not found" in capsys.readouterr().err
    bad_csv = tmp_path / "labels.csv"
    bad_csv.write_text("file,label\nx.png,normal\n")
    assert main(["inspect", str(bad_csv)]) == 2
    assert str(bad_csv) in capsys.readouterr().err
