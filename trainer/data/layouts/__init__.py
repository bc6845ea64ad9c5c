"""Dataset layouts: detection, and one adapter per native on-disk layout.

`scan_dataset(root)` detects the layout (or takes a forced one) and returns a `Scan`: samples in
the one record format, every file it did not take, and the problems it found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..imageio import DataFileError
from .base import Problem, Scan, Skipped
from .dagm import class_dirs, scan_dagm
from .folder import find_labels_csv, scan_folder
from .known import KNOWN_CATEGORIES, LOCO_DEFECT_DIRS, MVTEC_LIKE
from .mmad import MMAD_JSON, scan_mmad
from .mvtec import category_dirs, scan_mvtec_like, scan_mvtec_loco
from .visa import SPLIT_CSV, scan_visa

LAYOUTS: dict[str, Callable[[Path], Scan]] = {
    "mvtec": lambda root: scan_mvtec_like(root, "mvtec"),
    "mpdd": lambda root: scan_mvtec_like(root, "mpdd"),
    "goodsad": lambda root: scan_mvtec_like(root, "goodsad"),
    "dtd": lambda root: scan_mvtec_like(root, "dtd"),
    "mvtec_loco": scan_mvtec_loco,
    "visa": scan_visa,
    "dagm": scan_dagm,
    "mmad": scan_mmad,
    "folder": scan_folder,
}

__all__ = ["LAYOUTS", "Detection", "Problem", "Scan", "Skipped", "detect_layout", "scan_dataset"]


@dataclass(frozen=True)
class Detection:
    layout: str
    reason: str


def _vote_mvtec_like(cats: list[Path]) -> Detection:
    names = {c.name for c in cats}
    loco_dirs = {d.name for c in cats if (c / "test").is_dir() for d in (c / "test").iterdir() if d.is_dir()}
    if loco_dirs & LOCO_DEFECT_DIRS or names & KNOWN_CATEGORIES["mvtec_loco"]:
        return Detection("mvtec_loco", "MVTec structure with logical/structural anomaly folders")
    votes = {lay: len(names & KNOWN_CATEGORIES[lay]) for lay in MVTEC_LIKE}
    best = max(votes, key=lambda k: votes[k])
    if votes[best] == 0:
        return Detection(
            "mvtec",
            f"MVTec structure with categories not of any known benchmark ({', '.join(sorted(names))}); "
            "read as mvtec — pass --layout mpdd|goodsad|dtd to name it otherwise",
        )
    hits = sorted(names & KNOWN_CATEGORIES[best])
    return Detection(best, f"MVTec structure; {best} categories {', '.join(hits)}")


def detect_layout(root: str | Path) -> Detection:
    """Name the layout of `root` from its marker files, then MVTec-like structure and category names."""
    root = Path(root)
    if not root.exists():
        raise DataFileError(root, "dataset root not found")
    if root.is_file():
        if find_labels_csv(root) is not None:
            return Detection("folder", f"CSV with path,label columns: {root.name}")
        raise DataFileError(root, "a dataset root must be a folder, or a CSV with a 'path,label' header")
    if (root / MMAD_JSON).is_file():
        return Detection("mmad", f"{MMAD_JSON} found")
    if (root / SPLIT_CSV).is_file():
        return Detection("visa", f"{SPLIT_CSV} found")
    if class_dirs(root):
        return Detection("dagm", "ClassN folders found")
    cats = category_dirs(root)
    if cats:
        return _vote_mvtec_like(cats)
    if (root / "normal").is_dir() or (root / "anomalous").is_dir():
        return Detection("folder", "normal/ and anomalous/ folders found")
    if find_labels_csv(root) is not None:
        return Detection("folder", "a CSV with path,label columns found")
    raise DataFileError(
        root,
        "no known dataset layout: expected mmad.json, split_csv/1cls.csv (VisA), ClassN/ folders (DAGM), "
        "<category>/train|test/ folders (MVTec AD, MPDD, GoodsAD, DTD, MVTec LOCO), normal/ and "
        "anomalous/ folders, or a path,label CSV; pass --layout to force one",
    )


def scan_dataset(root: str | Path, layout: str | None = None) -> tuple[Scan, Detection]:
    """Read the dataset at `root` (detected, or the forced `layout`)."""
    root = Path(root)
    if layout is None:
        detection = detect_layout(root)
    else:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
        if not root.exists():
            raise DataFileError(root, "dataset root not found")
        detection = Detection(layout, "forced with --layout")
    scan = LAYOUTS[detection.layout](root)
    ids: dict[str, str] = {}
    unique = []
    for s in scan.samples:  # e.g. 000.png and 000.jpg side by side: keep the first, name the other
        if s.id in ids:
            scan.problems.append(Problem(
                s.image, "duplicate", f"{s.image}: same sample id {s.id!r} as {ids[s.id]}; left out",
                excluded=True,
            ))
            continue
        ids[s.id] = s.image
        unique.append(s)
    scan.samples = unique
    return scan, detection
