"""`adfm-plant export-labels`: the plant's reviewed parts as a dataset `adfm-data` reads.

Operators' latest decisions, from every station in the store: confirmed defects become
`anomalous`, false alarms `normal`; skipped and undecided parts stay out. The generic station
format's CSV variant, since a plant export spans products (its category column is the recipe,
or the station when the station has no recipes):

    ROOT/labels.csv                   path,label,mask,category
    ROOT/images/<station>-<epoch>-<seq>.<ext>
    ROOT/adfm-labels.jsonl            where each file came from: station, seq, operator, note, model

Images are the stations' journal bytes: from the store when the collector copied them, else
fetched from the station over the bus; a part whose image cannot be had is listed under `errors`
and left out of labels.csv (the export still writes the rest).
"""

from __future__ import annotations

import csv
import io
import json
import mimetypes
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from adfm.files import write_atomic
from adfm.schema import DECISION_TRAINING_LABEL

from .config import PlantConfig
from .db import connect, require_current
from .stations import StationError, fetch_image

PROVENANCE = "adfm-labels.jsonl"
LABELS_CSV = "labels.csv"
LABEL_OF = {d: label for d, label in DECISION_TRAINING_LABEL.items() if label is not None}
#: why a decided part gets no label, by decision
NO_LABEL_WHY = {"skip": "skipped by the operator", "unsure": "operator unsure"}


class ExportError(RuntimeError):
    """The export cannot run as asked; the message names the argument or file and why."""


@dataclass(frozen=True)
class ExportOptions:
    out: Path
    since: datetime | None = None
    until: datetime | None = None
    stations: tuple[str, ...] = ()
    recipe: str | None = None


@dataclass
class ExportReport:
    out: str
    normal: int = 0
    anomalous: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    by_category: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


_SELECT = """
SELECT r.station, r.epoch, r.seq, r.part_id, r.camera, r.captured_at, r.verdict, r.decision, r.model_id,
       r.prompt_version, r.recipe, r.image_path, op.decision AS op_decision, op.operator, op.note, op.at,
       op.verdict_id, op.boxes AS op_boxes,
       (SELECT i.media_type FROM images i WHERE i.station = r.station AND i.epoch = r.epoch
        AND i.seq = r.seq AND i.kind = 'image') AS stored_media
FROM results r
JOIN LATERAL (SELECT v.decision, v.operator, v.note, v.at, v.verdict_id, v.boxes FROM verdicts v
              WHERE v.station = r.station AND v.epoch = r.epoch AND v.seq = r.seq
              ORDER BY v.at DESC LIMIT 1) op ON true
WHERE r.first_stored {where}
ORDER BY r.station, r.captured_at, r.seq
"""


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: give a new or empty folder")


def _image(conn, config: PlantConfig, row: dict) -> tuple[bytes, str]:
    if row["stored_media"]:
        got = conn.execute("SELECT data FROM images WHERE station = %s AND epoch = %s AND seq = %s AND kind = 'image'",
                           (row["station"], row["epoch"], row["seq"])).fetchone()
        return bytes(got[0]), row["stored_media"]
    return fetch_image(config, row["station"], row["seq"], row["epoch"])


def export_labels(config: PlantConfig, opts: ExportOptions) -> ExportReport:
    """Write the dataset into `opts.out` (a new or empty folder); see the module docstring."""
    from psycopg.rows import dict_row

    if opts.since and opts.until and opts.since >= opts.until:
        raise ExportError(f"--since {opts.since.isoformat()} must be before --until {opts.until.isoformat()}")
    _check_out(opts.out)
    where: list[str] = []
    params: dict[str, object] = {}
    if opts.since:
        where.append("r.captured_at >= %(since)s")
        params["since"] = opts.since
    if opts.until:
        where.append("r.captured_at < %(until)s")
        params["until"] = opts.until
    if opts.stations:
        where.append("r.station = ANY(%(stations)s)")
        params["stations"] = list(opts.stations)
    if opts.recipe:
        where.append("r.recipe = %(recipe)s")
        params["recipe"] = opts.recipe
    report = ExportReport(out=str(opts.out))
    left: Counter = Counter()
    rows_out: list[tuple[str, str, str]] = []
    provenance: list[str] = []
    with connect(config.database) as conn:
        require_current(conn)
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(_SELECT.format(where="".join(" AND " + w for w in where)), params).fetchall()
        for row in rows:
            label = LABEL_OF.get(row["op_decision"])
            if label is None:
                left[NO_LABEL_WHY.get(row["op_decision"], f"decision {row['op_decision']}")] += 1
                continue
            try:
                data, media_type = _image(conn, config, row)
            except StationError as exc:
                report.errors.append(f"{row['station']} seq {row['seq']}: image not available: {exc}")
                continue
            suffix = Path(row["image_path"]).suffix.lower() or mimetypes.guess_extension(media_type) or ".png"
            rel = f"images/{row['station']}-{row['epoch'] or 'none'}-{row['seq']:010d}{suffix}"
            write_atomic(opts.out / rel, data)
            category = row["recipe"] or row["station"]
            rows_out.append((rel, label, category))
            counts = report.by_category.setdefault(category, {"normal": 0, "anomalous": 0})
            counts[label] += 1
            if label == "normal":
                report.normal += 1
            else:
                report.anomalous += 1
            provenance.append(json.dumps({
                "file": rel, "label": label, "category": category, "station": row["station"], "epoch": row["epoch"],
                "seq": row["seq"], "part_id": row["part_id"], "camera": row["camera"],
                "captured_at": row["captured_at"].isoformat(), "line_verdict": row["verdict"],
                "model_decision": row["decision"], "decision": row["op_decision"], "operator": row["operator"],
                "note": row["note"], "decided_at": row["at"].isoformat(), "verdict_id": row["verdict_id"],
                "model_id": row["model_id"], "prompt_version": row["prompt_version"],
                "operator_boxes": [[b["x1"], b["y1"], b["x2"], b["y2"]] for b in row["op_boxes"] or []]},
                ensure_ascii=False))
    report.left_out = dict(left)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "mask", "category"])
    writer.writerows((rel, label, "", cat) for rel, label, cat in rows_out)
    opts.out.mkdir(parents=True, exist_ok=True)
    write_atomic(opts.out / LABELS_CSV, buf.getvalue().encode())
    write_atomic(opts.out / PROVENANCE, ("\n".join(provenance) + "\n" if provenance else "").encode())
    return report


def format_report(report: ExportReport) -> str:
    total = report.normal + report.anomalous
    lines = [f"exported {total} part{'s' if total != 1 else ''} to {report.out}: {report.normal} normal, "
             f"{report.anomalous} anomalous"]
    for cat, counts in sorted(report.by_category.items()):
        lines.append(f"  {cat}: {counts['normal']} normal, {counts['anomalous']} anomalous")
    for why, n in sorted(report.left_out.items()):
        lines.append(f"left out: {n} {why}")
    lines += [f"NOT exported: {e}" for e in report.errors]
    if total:
        lines.append(f"next: adfm-data inspect {report.out}")
    return "\n".join(lines)
