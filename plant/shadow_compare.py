"""The plant view's comparison of a candidate model in shadow with the active model and the operators:
the same figures as a station's `adfm-appliance models compare` (appliance/models/compare.py, whose
definitions and Wilson intervals this reuses), over every station that ran the candidate.
"""

from __future__ import annotations

import json

import psycopg
from psycopg.rows import dict_row

from adfm.appliance.models.compare import ComparedPart, Comparison
from adfm.schema import Box, InspectionResult

from .queries import Filters

_COMPARE = """
WITH s AS (
    SELECT DISTINCT ON (station, epoch, seq) station, epoch, seq, row_id, model_id, verdict, answer, reason, boxes,
           captured_at
    FROM shadow_results s WHERE {where}
    ORDER BY station, epoch, seq, row_id DESC
)
SELECT s.station, s.epoch, s.seq, s.model_id, s.verdict, s.answer, s.reason, s.boxes, s.captured_at,
       r.part_id, r.camera, r.frame_number, r.image_path, r.image_width, r.image_height, r.model_id AS line_model,
       r.verdict AS line_verdict, r.decision_source AS line_source, r.boxes AS line_boxes, r.answer AS line_answer,
       r.reason AS line_reason, own.verdict AS own_verdict, own.boxes AS own_boxes, own.answer AS own_answer,
       own.reason AS own_reason, op.decision AS operator
FROM s JOIN results r ON r.station = s.station AND r.epoch = s.epoch AND r.seq = s.seq AND r.first_stored
LEFT JOIN LATERAL (SELECT x.verdict, x.boxes, x.answer, x.reason FROM results x
                   WHERE x.station = s.station AND x.epoch = s.epoch AND x.seq = s.seq AND x.decision_source = 'vlm'
                   ORDER BY x.revision DESC LIMIT 1) own ON true
LEFT JOIN LATERAL (SELECT v.decision FROM verdicts v WHERE v.station = s.station AND v.epoch = s.epoch
                   AND v.seq = s.seq ORDER BY v.at DESC LIMIT 1) op ON true
ORDER BY s.captured_at, s.station, s.seq
"""


def _where(f: Filters, candidate: str | None) -> tuple[str, dict]:
    sql = ["s.captured_at >= %(since)s", "s.captured_at < %(until)s"]
    params: dict = {"since": f.since, "until": f.until}
    if candidate is not None:
        sql.append("s.model_id = %(candidate)s")
        params["candidate"] = candidate
    if f.station:
        sql.append("s.station = %(station)s")
        params["station"] = f.station
    if f.line:
        sql.append("s.station IN (SELECT station FROM stations WHERE line = %(line)s)")
        params["line"] = f.line
    return " AND ".join(sql), params


def candidates(conn: psycopg.Connection, f: Filters) -> list[dict]:
    """Models with shadow results in the range: id, stations, parts, newest answer."""
    where, params = _where(f, None)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"""
            SELECT s.model_id, count(DISTINCT s.station) AS stations, count(*) AS answers, max(s.captured_at) AS last
            FROM shadow_results s WHERE {where} GROUP BY 1 ORDER BY last DESC""", params).fetchall()  # type: ignore[arg-type]


def _boxes(value) -> list[Box]:
    data = json.loads(value) if isinstance(value, str) else (value or [])
    return [Box(**b) for b in data]


def compare(conn: psycopg.Connection, f: Filters, candidate: str) -> Comparison:
    """The candidate's shadow answers in the range against the active model's and the operators'."""
    where, params = _where(f, candidate)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_COMPARE.format(where=where), params).fetchall()  # type: ignore[arg-type]
    out = Comparison(candidate, [])
    for r in rows:
        base = dict(station=r["station"], epoch=r["epoch"], seq=r["seq"], part_id=r["part_id"], camera=r["camera"],
                    frame_number=r["frame_number"], captured_at=r["captured_at"], image_path=r["image_path"],
                    image_width=r["image_width"], image_height=r["image_height"])
        shadow = InspectionResult(**base, verdict=r["verdict"], answer=r["answer"], reason=r["reason"],
                                  boxes=_boxes(r["boxes"]), model_id=r["model_id"])
        own = r["own_verdict"] is not None
        active = InspectionResult(
            **base, model_id=r["line_model"], decision_source=r["line_source"] if not own else "vlm",
            verdict=r["own_verdict"] if own else r["line_verdict"],
            answer=r["own_answer"] if own else r["line_answer"], reason=r["own_reason"] if own else r["line_reason"],
            boxes=_boxes(r["own_boxes"] if own else r["line_boxes"]))
        if r["line_model"] not in out.active_models:
            out.active_models.append(r["line_model"])
        out.parts.append(ComparedPart(r["seq"], r["part_id"], r["image_path"], shadow, active, own, r["operator"]))
    return out
