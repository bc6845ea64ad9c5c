"""VisA, read through its own split file `split_csv/1cls.csv`.

Columns: object, split (train/test), label (normal/anomaly), image, mask (empty for normal
images); paths are relative to the root, e.g. `candle/Data/Images/Anomaly/000.JPG` with mask
`candle/Data/Masks/Anomaly/000.png` — JPG images, PNG masks whose anomalous pixels are non-zero
(not always 255). When `<object>/image_anno.csv` is present its defect descriptions fill
`defect_type`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..imageio import DataFileError
from ..records import Sample
from .base import Problem, Scan, list_unreferenced, sample_id

SPLIT_CSV = Path("split_csv") / "1cls.csv"
_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": "normal", "anomaly": "anomalous", "anomalous": "anomalous"}


def _defect_descriptions(root: Path, obj: str, used: list[Path]) -> dict[str, str]:
    """{image path relative to root: defect description} from `<obj>/image_anno.csv`, if any."""
    path = root / obj / "image_anno.csv"
    if not path.is_file():
        return {}
    used.append(path)
    out = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            image, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
            if image and label and label.lower() != "normal":
                out[image] = label
    return out


def scan_visa(root: str | Path) -> Scan:
    root = Path(root).absolute()
    split_csv = root / SPLIT_CSV
    if not split_csv.is_file():
        raise DataFileError(split_csv, "VisA split file not found (expected split_csv/1cls.csv under the root)")
    scan = Scan(layout="visa", root=root)
    referenced: list[Path] = [split_csv]
    descriptions: dict[str, dict[str, str]] = {}
    with split_csv.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise DataFileError(split_csv, f"missing column(s) {', '.join(missing)}; header is {header}")
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            where = f"{split_csv}:{lineno}"
            obj, split, label = row["object"], row["split"].lower(), row["label"].lower()
            if split not in ("train", "test") or label not in _LABELS or not row["image"] or not obj:
                scan.problems.append(Problem(
                    where, "bad_metadata",
                    f"{where}: expected object, split train|test, label normal|anomaly and an image path; "
                    f"got {row}", excluded=True,
                ))
                continue
            img = root / row["image"]
            if not img.is_file():
                scan.problems.append(Problem(
                    str(img), "missing_image", f"{img}: listed at {where} but not found", excluded=True,
                ))
                continue
            referenced.append(img)
            anomalous = _LABELS[label] == "anomalous"
            masks: list[str] = []
            if anomalous:
                mask = root / row["mask"] if row["mask"] else None
                if mask is not None and mask.is_file():
                    masks = [str(mask)]
                    referenced.append(mask)
                else:
                    looked = f"mask {mask} not found" if mask else "no mask listed"
                    scan.problems.append(Problem(
                        str(img), "missing_mask",
                        f"{img}: anomalous image without mask ({looked} at {where}); its boxes stay unknown",
                        excluded=False,
                    ))
            if obj not in descriptions:
                descriptions[obj] = _defect_descriptions(root, obj, referenced)
            defect = descriptions[obj].get(row["image"], "anomaly") if anomalous else "good"
            scan.samples.append(Sample(
                id=sample_id("visa", obj, split, "anomaly" if anomalous else "good", img.stem),
                image=str(img),
                dataset="visa",
                category=obj,
                split=split,  # type: ignore[arg-type]
                label="anomalous" if anomalous else "normal",
                defect_type=defect,
                masks=masks,
                boxes=None if anomalous else [],
                extra={"native_split": split},
            ))
    scan.skipped = list_unreferenced(root, referenced, "visa")
    return scan
