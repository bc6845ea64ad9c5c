"""A customer's own station images, in one of two simple forms.

Folders:
    ROOT/normal/**          normal images (any depth)
    ROOT/anomalous/**       anomalous images; a first-level subfolder names the defect type
    ROOT/masks/<stem>.png   optional mask of `anomalous/…/<stem>.*` (same relative folder allowed)

CSV (`ROOT` is the file, or a folder holding exactly one CSV with this header):
    path,label[,mask][,category]   label `normal` or `anomalous`; paths relative to the CSV

The category is the root folder's name unless the CSV gives one per row.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..imageio import DataFileError, is_image_file
from ..records import Sample
from .base import Problem, Scan, list_unreferenced, sample_id, walk_files

_LABELS = ("normal", "anomalous")


def find_labels_csv(root: Path) -> Path | None:
    """The CSV that makes `root` a CSV-variant folder dataset, if there is exactly one."""
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if not root.is_dir():
        return None
    found = []
    for p in sorted(root.glob("*.csv")):
        with p.open(newline="", encoding="utf-8-sig") as f:
            header = [h.strip().lower() for h in next(csv.reader(f), [])]
        if header[:2] == ["path", "label"]:
            found.append(p)
    return found[0] if len(found) == 1 else None


def _mask_for(masks_dir: Path, rel: Path) -> Path | None:
    for base in (masks_dir / rel.parent, masks_dir):
        for cand in (base / f"{rel.stem}.png", base / f"{rel.stem}_mask.png"):
            if cand.is_file():
                return cand
    return None


def scan_folder(root: str | Path, category: str | None = None) -> Scan:
    root = Path(root).absolute()
    labels_csv = find_labels_csv(root)
    if labels_csv is not None and not (root / "normal").is_dir() and not (root / "anomalous").is_dir():
        return scan_folder_csv(labels_csv, category)
    cat = category or root.name
    scan = Scan(layout="folder", root=root)
    referenced: list[Path] = []
    for label in _LABELS:
        folder = root / label
        for img in (p for p in walk_files(folder) if is_image_file(p)) if folder.is_dir() else ():
            rel = img.relative_to(folder)
            anomalous = label == "anomalous"
            defect = (rel.parts[0] if len(rel.parts) > 1 else "anomaly") if anomalous else "good"
            mask = _mask_for(root / "masks", rel) if anomalous else None
            if anomalous and mask is None:
                scan.problems.append(Problem(
                    str(img), "missing_mask",
                    f"{img}: anomalous image without mask (no {root / 'masks' / rel.with_suffix('.png')}); "
                    "its boxes stay unknown",
                    excluded=False,
                ))
            referenced.append(img)
            if mask is not None:
                referenced.append(mask)
            scan.samples.append(Sample(
                id=sample_id("folder", cat, "test", defect, rel.with_suffix("").as_posix()),
                image=str(img),
                dataset="folder",
                category=cat,
                split="test",
                label=label,  # type: ignore[arg-type]
                defect_type=defect,
                masks=[str(mask)] if mask else [],
                boxes=None if anomalous else [],
                extra={"native_split": "none"},
            ))
    scan.skipped = list_unreferenced(root, referenced, "folder")
    return scan


def scan_folder_csv(labels_csv: str | Path, category: str | None = None) -> Scan:
    labels_csv = Path(labels_csv).absolute()
    base = labels_csv.parent
    scan = Scan(layout="folder", root=base)
    referenced: list[Path] = [labels_csv]
    with labels_csv.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if header[:2] != ["path", "label"]:
            raise DataFileError(labels_csv, f"header must start with 'path,label', got {','.join(header)}")
        seen: set[str] = set()
        for lineno, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            where = f"{labels_csv}:{lineno}"
            label = row.get("label", "").lower()
            if not row.get("path") or label not in _LABELS:
                scan.problems.append(Problem(
                    where, "bad_metadata",
                    f"{where}: label must be 'normal' or 'anomalous' and path non-empty, got "
                    f"path={row.get('path')!r} label={row.get('label')!r}",
                    excluded=True,
                ))
                continue
            img = (base / row["path"]).absolute()
            if not img.is_file():
                scan.problems.append(Problem(
                    str(img), "missing_image", f"{img}: listed at {where} but not found", excluded=True,
                ))
                continue
            if str(img) in seen:
                scan.problems.append(Problem(
                    where, "bad_metadata", f"{where}: {img} is listed twice; the first row is used",
                    excluded=False,
                ))
                continue
            seen.add(str(img))
            anomalous = label == "anomalous"
            mask = (base / row["mask"]).absolute() if row.get("mask") else None
            if anomalous and (mask is None or not mask.is_file()):
                looked = f"mask {mask} not found" if mask else "no mask given"
                scan.problems.append(Problem(
                    str(img), "missing_mask",
                    f"{img}: anomalous image without mask ({looked} at {where}); its boxes stay unknown",
                    excluded=False,
                ))
                mask = None
            cat = row.get("category") or category or base.name
            rel = Path(row["path"]).with_suffix("").as_posix().lstrip("./")
            referenced.append(img)
            if mask is not None and anomalous:
                referenced.append(mask)
            scan.samples.append(Sample(
                id=sample_id("folder", cat, "test", "anomaly" if anomalous else "good", rel),
                image=str(img),
                dataset="folder",
                category=cat,
                split="test",
                label=label,  # type: ignore[arg-type]
                defect_type="anomaly" if anomalous else "good",
                masks=[str(mask)] if mask is not None and anomalous else [],
                boxes=None if anomalous else [],
                extra={"native_split": "none"},
            ))
    scan.skipped = list_unreferenced(base, referenced, "folder")
    return scan
