"""MVTec AD and the datasets that copy its structure (MPDD, GoodsAD, DTD-Synthetic), and MVTec LOCO.

    <cat>/train/good/*              normal training images
    <cat>/validation/good/*         (MVTec LOCO) normal validation images
    <cat>/test/good/*               normal test images
    <cat>/test/<defect>/*           anomalous test images
    <cat>/ground_truth/<defect>/<stem>_mask.png   (MVTec AD, MPDD, DTD; GoodsAD may omit `_mask`)
    <cat>/ground_truth/<defect>/<stem>/000.png …  (MVTec LOCO: several masks per image, OR-ed)

The root may also be a single category folder (it has `train/` and `test/` itself).
"""

from __future__ import annotations

from pathlib import Path

from ..imageio import is_image_file
from ..records import Sample
from .base import (
    Problem,
    Scan,
    image_files,
    list_unreferenced,
    sample_id,
    subdirs,
)

_SPLIT_DIRS = (("train", "train"), ("validation", "val"), ("test", "test"))


def category_dirs(root: Path) -> list[Path]:
    """Folders under `root` that look like MVTec categories (have `train/` or `test/`)."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return [root]
    return [d for d in subdirs(root) if (d / "train").is_dir() or (d / "test").is_dir()]


def _mask_index(gt_defect_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """{image stem: mask files} for one `ground_truth/<defect>` folder, and its non-mask files."""
    index: dict[str, list[Path]] = {}
    others: list[Path] = []
    if not gt_defect_dir.is_dir():
        return index, others
    for p in sorted(gt_defect_dir.iterdir()):
        if p.is_dir():  # MVTec LOCO: one folder of masks per image
            masks, rest = image_files(p)
            others.extend(rest)
            if masks:
                index.setdefault(p.name, []).extend(masks)
        elif is_image_file(p):
            stem = p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem
            index.setdefault(stem, []).append(p)
        else:
            others.append(p)
    return index, others


def scan_mvtec_like(root: str | Path, layout: str = "mvtec") -> Scan:
    """Read an MVTec-structured dataset; `layout` becomes `Sample.dataset`."""
    root = Path(root).absolute()
    scan = Scan(layout=layout, root=root)
    referenced: list[Path] = []
    reasons: dict[str, str] = {}
    for cat_dir in category_dirs(root):
        cat = cat_dir.name
        gt_root = cat_dir / "ground_truth"
        used_masks: set[Path] = set()
        for dirname, split in _SPLIT_DIRS:
            split_dir = cat_dir / dirname
            if not split_dir.is_dir():
                continue
            loose_images, _ = image_files(split_dir)
            for p in loose_images:
                reasons[str(p)] = f"directly in {dirname}/, not in a good/ or defect folder"
            for defect_dir in subdirs(split_dir):
                defect = defect_dir.name
                normal = defect == "good"
                index, _ = ({}, []) if normal else _mask_index(gt_root / defect)
                images, _ = image_files(defect_dir)
                for img in images:
                    masks = [] if normal else index.get(img.stem, [])
                    if not normal and not masks:
                        scan.problems.append(Problem(
                            str(img), "missing_mask",
                            f"{img}: anomalous image without mask (looked for "
                            f"{gt_root / defect / (img.stem + '_mask.png')}); its boxes stay unknown",
                            excluded=False,
                        ))
                    used_masks.update(masks)
                    referenced.append(img)
                    referenced.extend(masks)
                    scan.samples.append(Sample(
                        id=sample_id(layout, cat, split, defect, img.stem),
                        image=str(img),
                        dataset=layout,
                        category=cat,
                        split=split,
                        label="normal" if normal else "anomalous",
                        defect_type=defect,
                        masks=[str(m) for m in masks],
                        boxes=[] if normal else None,
                        extra={"native_split": split},
                    ))
        for defect_dir in subdirs(gt_root):
            index, _ = _mask_index(defect_dir)
            for masks in index.values():
                for m in masks:
                    if m not in used_masks:
                        reasons[str(m)] = "mask without a matching test image"
    scan.skipped = list_unreferenced(root, referenced, layout, reasons)
    return scan


def scan_mvtec_loco(root: str | Path) -> Scan:
    """MVTec LOCO AD: logical and structural anomalies, several masks per image (combined by OR)."""
    scan = scan_mvtec_like(root, layout="mvtec_loco")
    for s in scan.samples:
        if s.anomalous:
            s.extra["anomaly_kind"] = s.defect_type.removesuffix("_anomalies")
    return scan

