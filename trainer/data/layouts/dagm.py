"""DAGM 2007: `ClassN/{Train,Test}/NNNN.PNG`, label masks `Label/NNNN_label.PNG`, `Label/Labels.txt`.

`Labels.txt` starts with a count line, then one line per image, tab-separated:
`<index> <defective 0|1> <image file> <0> <label file or 0>`. An image is defective when it has a
label mask. Without `Labels.txt` the label masks alone decide (and that is reported).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..records import Sample
from .base import (
    Problem,
    Scan,
    find_child,
    image_files,
    list_unreferenced,
    sample_id,
    subdirs,
)

CLASS_RE = re.compile(r"^class\d+$", re.IGNORECASE)
_PHASES = (("Train", "train"), ("Test", "test"))


def class_dirs(root: Path) -> list[Path]:
    return [d for d in subdirs(root) if CLASS_RE.match(d.name)]


def _read_labels(path: Path, scan: Scan) -> dict[str, str | None]:
    """{image file name: label file name or None} from Labels.txt; bad lines become problems."""
    out: dict[str, str | None] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or (lineno == 1 and len(parts) == 1 and parts[0].isdigit()):
            continue
        if len(parts) < 3 or parts[1] not in ("0", "1"):
            where = f"{path}:{lineno}"
            scan.problems.append(Problem(
                where, "bad_metadata",
                f"{where}: expected '<index> <0|1> <image> <0> <label file>', got {line.strip()!r}",
                excluded=True,
            ))
            continue
        label_file = parts[4] if len(parts) >= 5 and parts[4] != "0" else None
        out[parts[2]] = label_file if parts[1] == "1" else None
        if parts[1] == "1" and label_file is None:
            out[parts[2]] = ""  # defective, but no label file named
    return out


def scan_dagm(root: str | Path) -> Scan:
    root = Path(root).absolute()
    scan = Scan(layout="dagm", root=root)
    referenced: list[Path] = []
    reasons: dict[str, str] = {}
    for cls_dir in class_dirs(root):
        cat = cls_dir.name
        for phase, split in _PHASES:
            phase_dir = find_child(cls_dir, phase)
            if phase_dir is None or not phase_dir.is_dir():
                continue
            label_dir = find_child(phase_dir, "Label")
            labels_txt = find_child(label_dir, "Labels.txt") if label_dir else None
            label_masks = {p.name: p for p in image_files(label_dir)[0]} if label_dir else {}
            if labels_txt is not None and labels_txt.is_file():
                referenced.append(labels_txt)
                listed: dict[str, str | None] | None = _read_labels(labels_txt, scan)
            else:
                listed = None
                scan.notes.append(f"{phase_dir}: no Label/Labels.txt; labels taken from the label masks")
            by_stem = {p.stem.removesuffix("_label"): p for p in label_masks.values()}
            images, _ = image_files(phase_dir)
            for img in images:
                if listed is not None and img.name not in listed:
                    reasons[str(img)] = f"not listed in {labels_txt}"
                    continue
                if listed is not None:
                    entry = listed[img.name]
                    anomalous = entry is not None
                    mask = (label_masks.get(entry) if entry else None) or (by_stem.get(img.stem) if anomalous else None)
                else:
                    mask = by_stem.get(img.stem)
                    anomalous = mask is not None
                if anomalous and mask is None:
                    scan.problems.append(Problem(
                        str(img), "missing_mask",
                        f"{img}: defective in Labels.txt but its label mask "
                        f"{(label_dir or phase_dir / 'Label') / (img.stem + '_label.PNG')} is missing; "
                        "its boxes stay unknown",
                        excluded=False,
                    ))
                referenced.append(img)
                if mask is not None:
                    referenced.append(mask)
                scan.samples.append(Sample(
                    id=sample_id("dagm", cat, split, "defect" if anomalous else "good", img.stem),
                    image=str(img),
                    dataset="dagm",
                    category=cat,
                    split=split,  # type: ignore[arg-type]
                    label="anomalous" if anomalous else "normal",
                    defect_type="defect" if anomalous else "good",
                    masks=[str(mask)] if mask is not None else [],
                    boxes=None if anomalous else [],
                    extra={"native_split": split},
                ))
            if listed is not None:
                present = {p.name for p in images}
                for name in sorted(set(listed) - present):
                    missing = phase_dir / name
                    scan.problems.append(Problem(
                        str(missing), "missing_image", f"{missing}: listed in {labels_txt} but not found",
                        excluded=True,
                    ))
            for m in label_masks.values():
                reasons.setdefault(str(m), "label mask of no listed defective image")
    scan.skipped = list_unreferenced(root, referenced, "dagm", reasons)
    return scan
