"""`adfm-review export-labels`: operators' decisions out as a dataset `adfm-data` reads.

Confirmed defects (with the model's boxes or the operator's redrawn ones) become `anomalous`, false
alarms `normal`; skipped and unsure parts stay out. Two layouts of the generic station format read
by adfm-data's folder adapter:

    folder:  ROOT/normal/<station>-<seq>.png, ROOT/anomalous/<station>-<seq>.png,
             ROOT/masks/<station>-<seq>.png (only with --masks-from-boxes)
    csv:     ROOT/labels.csv (path,label,mask,category; category = the part's product),
             ROOT/images/…, ROOT/masks/…

Images are copied byte for byte from the journal (after checking they decode). A folder dataset
has one category (the folder's name), so a folder export takes one product; the CSV layout names
each row's. `ROOT/adfm-labels.jsonl` records where every file came from (station, seq, operator,
note, verdict id); exporting again into the same ROOT replaces that export — files it wrote and
no longer selects are removed, nothing else is touched. Written without torch or adfm.trainer:
the line PC has neither.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from adfm.files import write_atomic
from adfm.schema import DECISION_TRAINING_LABEL, Box, InspectionResult

from ..journal.store import JournalError, decode_image
from .journal_reader import JournalPart, JournalReader

PROVENANCE = "adfm-labels.jsonl"
LABELS_CSV = "labels.csv"
LABEL_OF = {d: label for d, label in DECISION_TRAINING_LABEL.items() if label is not None}
#: why a decided part gets no label, by decision
NO_LABEL_WHY = {"skip": "skipped by the operator", "unsure": "operator unsure"}


class ExportError(RuntimeError):
    """The export cannot run as asked; the message says which argument or file and why."""


@dataclass(frozen=True)
class ExportOptions:
    journal: Path
    out: Path
    layout: Literal["folder", "csv"] = "folder"
    cameras: tuple[str, ...] = ()
    product: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    masks_from_boxes: bool = False
    dry_run: bool = False


@dataclass
class ExportReport:
    out: str
    layout: str
    normal: int = 0
    anomalous: int = 0
    masks: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> parts
    errors: list[str] = field(default_factory=list)  # parts that should have gone and could not
    removed: list[str] = field(default_factory=list)  # files of an earlier export no longer selected
    dry_run: bool = False

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Item:
    part: JournalPart
    label: str
    image_rel: str
    mask_rel: str
    category: str


def _selected(part: JournalPart, opts: ExportOptions) -> bool:
    r = part.result
    if opts.cameras and r.camera not in opts.cameras:
        return False
    if opts.product is not None and part.product != opts.product:
        return False
    if opts.since is not None and r.captured_at < opts.since:
        return False
    return opts.until is None or r.captured_at < opts.until


def _stem(r: InspectionResult) -> str:
    return f"{r.station}-{r.seq:010d}"


def _previous_files(out: Path) -> set[str]:
    """Files an earlier export wrote into `out` (from its provenance file)."""
    prov = out / PROVENANCE
    files: set[str] = set()
    if not prov.is_file():
        return files
    for lineno, line in enumerate(prov.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExportError(f"{prov}:{lineno}: not a JSON line ({exc}); remove the file to export anew") from exc
        files.update(f for f in (row.get("file"), row.get("mask")) if f)
    return files


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PROVENANCE).is_file():
        raise ExportError(f"--out {out}: folder is not empty and holds no earlier export ({PROVENANCE}); "
                          "give an empty or new folder")


def mask_boxes(r: InspectionResult) -> list[Box]:
    """The boxes a defect's mask is made of: the operator's own when they redrew them
    (`defect_wrong_box`), otherwise the model's."""
    if r.operator is not None and r.operator.boxes:
        return list(r.operator.boxes)
    return list(r.boxes)


def _box_mask(r: InspectionResult, height: int, width: int) -> np.ndarray:
    """The part's defect boxes (`mask_boxes`) filled in (255) on its image's grid."""
    mask = np.zeros((height, width), np.uint8)
    sx = width / r.image_width if r.image_width else 1.0
    sy = height / r.image_height if r.image_height else 1.0
    for b in mask_boxes(r):
        x1, y1 = max(0, int(np.floor(b.x1 * sx))), max(0, int(np.floor(b.y1 * sy)))
        x2, y2 = min(width, int(np.ceil(b.x2 * sx))), min(height, int(np.ceil(b.y2 * sy)))
        if x2 > x1 and y2 > y1:
            mask[y1:y2, x1:x2] = 255
    return mask


def _plan(reader: JournalReader, opts: ExportOptions, report: ExportReport) -> list[_Item]:
    items: list[_Item] = []
    left = Counter()
    for part in reader.decided_parts():
        if not _selected(part, opts):
            continue
        r = part.result
        assert r.operator is not None
        label = LABEL_OF.get(r.operator.decision)
        if label is None:
            left[NO_LABEL_WHY.get(r.operator.decision, f"decision {r.operator.decision}")] += 1
            continue
        if part.image_pruned or not r.image_path:
            left["image pruned by the retention policy"] += 1
            continue
        suffix = Path(r.image_path).suffix.lower() or ".png"
        folder = label if opts.layout == "folder" else "images"
        mask_rel = ""
        if opts.masks_from_boxes and label == "anomalous" and mask_boxes(r):
            mask_rel = f"masks/{_stem(r)}.png"
        items.append(_Item(part, label, f"{folder}/{_stem(r)}{suffix}", mask_rel, part.product or r.station))
    report.left_out = dict(left)
    if opts.layout == "folder":
        products = sorted({i.part.product for i in items})
        if len(products) > 1:
            raise ExportError(
                f"the selected parts are of {len(products)} products ({', '.join(p or '(none)' for p in products)}) "
                "but a folder dataset holds one: pass --product NAME, or --layout csv (it has a category column)")
    return items


def export_labels(opts: ExportOptions) -> ExportReport:
    """Write (or with dry_run only count) the dataset; see the module docstring."""
    out = opts.out
    _check_out(out)
    previous = _previous_files(out)
    report = ExportReport(out=str(out), layout=opts.layout, dry_run=opts.dry_run)
    with JournalReader(opts.journal) as reader:
        items = _plan(reader, opts, report)
        written: list[tuple[_Item, str]] = []
        for item in items:
            r = item.part.result
            source = reader.image_file(r.image_path)
            if source is None:
                report.errors.append(f"seq {r.seq}: image path {r.image_path!r} leaves the journal's image folder")
                continue
            try:
                image = decode_image(source)
            except JournalError as exc:
                report.errors.append(f"seq {r.seq}: {exc}")
                continue
            mask_rel = item.mask_rel
            if not opts.dry_run:
                write_atomic(out / item.image_rel, source.read_bytes())
                if mask_rel:
                    import cv2

                    ok, png = cv2.imencode(".png", _box_mask(r, image.shape[0], image.shape[1]))
                    if not ok:
                        raise ExportError(f"seq {r.seq}: cannot encode its mask")
                    write_atomic(out / mask_rel, png.tobytes())
            written.append((item, mask_rel))
            report.masks += bool(mask_rel)
            if item.label == "normal":
                report.normal += 1
            else:
                report.anomalous += 1
        if opts.dry_run:
            return report
        _write_index(out, opts.layout, written)
        keep = {i.image_rel for i, _ in written} | {m for _, m in written if m}
        if opts.layout == "csv":
            keep.add(LABELS_CSV)
        # e.g. a part whose decision changed moves from normal/ to anomalous/: its old copy goes
        for rel in sorted(previous - keep):
            path = out / rel
            if path.is_file():
                path.unlink()
                report.removed.append(rel)
    return report


def _write_index(out: Path, layout: str, written: list[tuple[_Item, str]]) -> None:
    """labels.csv (csv layout) and the provenance file, each written whole or not at all."""
    if layout == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "mask", "category"])
        for item, mask in written:
            w.writerow([item.image_rel, item.label, mask, item.category])
        write_atomic(out / LABELS_CSV, buf.getvalue().encode())
    lines = []
    for item, mask in written:
        r = item.part.result
        v = r.operator
        assert v is not None
        lines.append(json.dumps({
            "file": item.image_rel, "mask": mask, "label": item.label, "station": r.station, "seq": r.seq,
            "part_id": r.part_id, "camera": r.camera, "product": item.part.product,
            "captured_at": r.captured_at.isoformat(), "line_verdict": r.verdict, "model_decision": r.decision,
            "decision": v.decision, "operator": v.operator, "decided_at": v.at.isoformat(), "note": v.note,
            "verdict_id": v.verdict_id, "model_id": r.model_id, "prompt_version": r.prompt_version,
            "operator_boxes": [b.xyxy for b in v.boxes],
        }, ensure_ascii=False))
    if layout == "csv":
        lines.append(json.dumps({"file": LABELS_CSV, "mask": "", "index": True}))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / PROVENANCE, ("\n".join(lines) + "\n" if lines else "").encode())


def format_report(report: ExportReport) -> str:
    verb = "would export" if report.dry_run else "exported"
    total = report.normal + report.anomalous
    lines = [f"{verb} {total} part{'s' if total != 1 else ''} to {report.out} ({report.layout} layout): "
             f"{report.normal} normal, {report.anomalous} anomalous, {report.masks} masks from boxes"]
    for why, n in sorted(report.left_out.items()):
        lines.append(f"left out: {n} {why}")
    for rel in report.removed:
        lines.append(f"removed (no longer selected): {rel}")
    for err in report.errors:
        lines.append(f"NOT exported: {err}")
    if total and not report.dry_run:
        lines.append(f"next: adfm-data inspect {report.out}")
    return "\n".join(lines)
