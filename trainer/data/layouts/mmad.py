"""MMAD: `mmad.json` keyed by image path relative to the root, over its source datasets' folders.

Each value holds `conversation` (list of {Question, Answer, Options, type} — the benchmark's
subtasks), `mask_path` (relative to the image's `<source>/<category>/<split>` folder, sometimes
with `../`), and the normal templates `similar_templates` / `random_templates` (paths relative
to the root). As in MMAD's own scoring, an image is normal when its path has a `good` folder.
Categories are `<source>/<category>` (e.g. `DS-MVTec/bottle`) so sources never mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..imageio import DataFileError
from ..records import Sample
from .base import Problem, Scan, list_unreferenced, sample_id

MMAD_JSON = "mmad.json"


def _resolve_mask(root: Path, key_parts: list[str], mask_path: str) -> tuple[Path | None, list[Path]]:
    """Find the mask file; MMAD's mask paths are relative to `<source>/<cat>/<split>` (or shallower)."""
    tried = []
    for depth in (3, 2, 0):
        base = root.joinpath(*key_parts[:depth]) if depth else root
        cand = Path(os.path.normpath(base / mask_path))
        tried.append(cand)
        if cand.is_file():
            return cand, tried
    return None, tried


def _templates(root: Path, value: dict[str, Any], key: str) -> list[str]:
    items = value.get(key) or []
    return [str(root / t) for t in items if isinstance(t, str) and t]


def scan_mmad(root: str | Path) -> Scan:
    root = Path(root).absolute()
    meta = root / MMAD_JSON
    if not meta.is_file():
        raise DataFileError(meta, "MMAD index not found (expected mmad.json under the root)")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFileError(meta, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataFileError(meta, f"expected an object keyed by image path, got {type(data).__name__}")
    scan = Scan(layout="mmad", root=root)
    referenced: list[Path] = [meta]
    for key, value in data.items():
        parts = Path(key).parts
        if not isinstance(value, dict) or len(parts) < 3:
            scan.problems.append(Problem(
                f"{meta}:{key}", "bad_metadata",
                f"{meta}: entry {key!r} must be an object keyed by '<source>/<category>/…/<image>'",
                excluded=True,
            ))
            continue
        img = root / key
        if not img.is_file():
            scan.problems.append(Problem(
                str(img), "missing_image", f"{img}: listed in {meta} but not found", excluded=True,
            ))
            continue
        source, cat = parts[0], parts[1]
        anomalous = "good" not in parts[:-1]
        defect = parts[-2] if anomalous else "good"
        masks: list[str] = []
        mask_path = value.get("mask_path")
        if anomalous:
            found, tried = _resolve_mask(root, list(parts), mask_path) if mask_path else (None, [])
            if found is not None:
                masks = [str(found)]
            else:
                looked = f"mask_path {mask_path!r} not found (tried {', '.join(map(str, tried))})" \
                    if mask_path else "no mask_path"
                scan.problems.append(Problem(
                    str(img), "missing_mask",
                    f"{img}: anomalous image without mask ({looked}); its boxes stay unknown",
                    excluded=False,
                ))
        similar = _templates(root, value, "similar_templates")
        random_ = _templates(root, value, "random_templates")
        referenced.extend([img, *map(Path, masks), *map(Path, similar), *map(Path, random_)])
        split = "train" if "train" in parts[2:-1] else "test"
        scan.samples.append(Sample(
            id=sample_id("mmad", f"{source}/{cat}", split, defect, Path(key).stem),
            image=str(img),
            dataset="mmad",
            category=f"{source}/{cat}",
            split=split,  # type: ignore[arg-type]
            label="anomalous" if anomalous else "normal",
            defect_type=defect,
            masks=masks,
            boxes=None if anomalous else [],
            extra={
                "native_split": split,
                "source": source,
                "key": key,
                "conversation": value.get("conversation") or [],
                "similar_templates": similar,
                "random_templates": random_,
            },
        ))
    scan.skipped = list_unreferenced(root, referenced, "mmad")
    return scan
