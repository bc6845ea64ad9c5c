"""Writing what the collector receives into PostgreSQL, exactly once.

A batch (one poll's results and verdicts) and the station's cursor are written in one
transaction: results by COPY into a temporary table, then inserted with ON CONFLICT DO NOTHING on
(station, epoch, seq, revision, captured_at) — a part's revisions share its capture time, so this
is the issue's (station, epoch, seq, revision) key. The same statement adds the newly stored parts to the
hourly counts and gate-score bins the view reads. A collector killed at any point has either
stored a batch (with its counts) and moved its cursor, or neither; what it receives again after a restart is
dropped by the key, so every result is stored once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from adfm.schema import InspectionResult, OperatorVerdict

from .partitions import Partitions

RESULT_COLUMNS = (
    "station", "epoch", "seq", "revision", "part_id", "camera", "frame_number", "captured_at", "verdict",
    "reason", "decision", "score", "gate_score", "boxes", "think", "rethink", "answer", "format_ok",
    "problems", "prompt_version", "model_id", "image_path", "image_width", "image_height", "gate_map_path",
    "latency_ms", "attempts", "decision_source", "action", "decided_at", "triggered_at", "deadline_ms",
    "deadline_missed", "recipe",
)
_COLS = ", ".join(RESULT_COLUMNS)
_INSERT = f"""
WITH stored AS (
    INSERT INTO results ({_COLS}, first_stored)
    SELECT {", ".join("i." + c for c in RESULT_COLUMNS)},
           i.nth = 1 AND NOT EXISTS (SELECT 1 FROM results r WHERE r.station = i.station AND r.epoch = i.epoch
                                     AND r.seq = i.seq AND r.captured_at = i.captured_at)
    FROM (SELECT *, row_number() OVER (PARTITION BY station, epoch, seq ORDER BY revision) AS nth
          FROM incoming) i
    ON CONFLICT DO NOTHING
    RETURNING station, captured_at, recipe, model_id, verdict, decision_source, deadline_missed, gate_score,
              first_stored
), counted AS (
    INSERT INTO hourly
    SELECT station, date_trunc('hour', captured_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', recipe, model_id,
           count(*), count(*) FILTER (WHERE verdict = 'pass'), count(*) FILTER (WHERE verdict <> 'pass'),
           count(*) FILTER (WHERE verdict = 'review'), count(*) FILTER (WHERE decision_source = 'gate'),
           count(*) FILTER (WHERE decision_source = 'vlm'),
           count(*) FILTER (WHERE decision_source LIKE 'failsafe%%'), count(*) FILTER (WHERE deadline_missed)
    FROM stored WHERE first_stored GROUP BY 1, 2, 3, 4
    ON CONFLICT (station, hour, recipe, model_id) DO UPDATE SET
        parts = hourly.parts + excluded.parts, passed = hourly.passed + excluded.passed,
        flagged = hourly.flagged + excluded.flagged, review = hourly.review + excluded.review,
        by_gate = hourly.by_gate + excluded.by_gate, by_vlm = hourly.by_vlm + excluded.by_vlm,
        failsafe = hourly.failsafe + excluded.failsafe,
        deadline_missed = hourly.deadline_missed + excluded.deadline_missed
), binned AS (
    INSERT INTO gate_bins
    SELECT station, date_trunc('week', captured_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', recipe, model_id,
           floor(100 * ln(1 + greatest(gate_score, 0)))::integer, count(*)
    FROM stored WHERE first_stored AND gate_score IS NOT NULL GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (station, week, recipe, model_id, bin) DO UPDATE SET n = gate_bins.n + excluded.n
)
SELECT count(*) FROM stored
"""
#: a verdict gets its part's capture time, model, recipe and line verdict once both are stored
_PLACE_VERDICTS = """
UPDATE verdicts v SET captured_at = r.captured_at, model_id = r.model_id, recipe = r.recipe, line_verdict = r.verdict
FROM results r
WHERE v.captured_at IS NULL AND v.station = ANY(%s) AND r.station = v.station AND r.epoch = v.epoch AND r.seq = v.seq
  AND r.first_stored
"""
_VERDICT = """
INSERT INTO verdicts (station, verdict_id, epoch, seq, part_id, decision, operator, note, at, client, boxes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""


def deadline_missed(r: InspectionResult) -> bool:
    """Decided after the deadline the line gave it (only line stations have one)."""
    if r.deadline_ms is None or r.decided_at is None or r.triggered_at is None:
        return False
    return (r.decided_at - r.triggered_at).total_seconds() * 1000 > r.deadline_ms


def result_row(r: InspectionResult) -> tuple:
    """The row for `results` (JSON columns as JSON text)."""
    return (
        r.station, r.epoch, r.seq, r.revision, r.part_id, r.camera, r.frame_number, r.captured_at, r.verdict,
        r.reason, r.decision, r.score, r.gate_score, json.dumps([b.model_dump() for b in r.boxes]), r.think,
        r.rethink, r.answer, r.format_ok, json.dumps(r.problems), r.prompt_version, r.model_id, r.image_path,
        r.image_width, r.image_height, r.gate_map_path, json.dumps(r.latency_ms), r.attempts, r.decision_source,
        r.action, r.decided_at, r.triggered_at, r.deadline_ms, deadline_missed(r), r.recipe,
    )


@dataclass
class Written:
    results: int = 0  # rows new to the store
    verdicts: int = 0


@dataclass(frozen=True)
class Cursor:
    epoch: str
    next_seq: int


class Store:
    """One writer connection in autocommit mode (one per collected station: each station's batches
    are serial)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.partitions = Partitions()
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS incoming AS SELECT {_COLS} FROM results WITH NO DATA")

    def register(self, station: str, line: str, publish: str, control: str) -> None:
        """Record a configured station (its line is what the view groups by)."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO stations (station, line, publish, control) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (station) DO UPDATE SET line = excluded.line, publish = excluded.publish, "
                "control = excluded.control", (station, line, publish, control))

    def cursor(self, station: str) -> Cursor:
        """Where collection of `station` resumes: the journal epoch and the first seq not stored."""
        row = self.conn.execute("SELECT epoch, next_seq FROM stations WHERE station = %s", (station,)).fetchone()
        return Cursor(row[0], row[1]) if row else Cursor("", 1)

    def write(self, station: str, results: Iterable[InspectionResult], verdicts: Iterable[OperatorVerdict],
              epoch: str | None, next_seq: int | None) -> Written:
        """Store a batch and move the station's cursor, all or nothing."""
        results = list(results)
        verdicts = list(verdicts) + [r.operator for r in results if r.operator is not None]
        out = Written()
        if results:
            self.partitions.ensure(self.conn, [r.captured_at for r in results])
        with self.conn.transaction():
            if results:
                self.conn.execute("TRUNCATE incoming")
                with self.conn.cursor().copy(f"COPY incoming ({_COLS}) FROM STDIN") as copy:
                    for r in results:
                        copy.write_row(result_row(r))
                row = self.conn.execute(_INSERT).fetchone()
                out.results = row[0] if row else 0
            for v in verdicts:
                cur = self.conn.execute(_VERDICT, (v.station or station, v.verdict_id, v.epoch, v.seq, v.part_id,
                                                   v.decision, v.operator, v.note, v.at, v.client,
                                                   json.dumps([b.model_dump() for b in v.boxes])))
                out.verdicts += cur.rowcount
            if results or verdicts:
                stations = sorted({r.station for r in results} | {v.station or station for v in verdicts})
                self.conn.execute(_PLACE_VERDICTS, (stations,))
            if epoch is not None and next_seq is not None:
                self.conn.execute(
                    "INSERT INTO stations (station, epoch, next_seq, updated_at) VALUES (%s, %s, %s, now()) "
                    "ON CONFLICT (station) DO UPDATE SET updated_at = now(), epoch = excluded.epoch, next_seq = "
                    "CASE WHEN stations.epoch = excluded.epoch THEN greatest(stations.next_seq, excluded.next_seq) "
                    "ELSE excluded.next_seq END", (station, epoch, next_seq))
        return out

    def shadow_cursor(self, station: str, epoch: str) -> int:
        """The first shadow row id of `station`'s journal `epoch` not stored yet."""
        row = self.conn.execute("SELECT COALESCE(MAX(row_id), 0) FROM shadow_results WHERE station = %s AND epoch = %s",
                                (station, epoch)).fetchone()
        return int(row[0]) + 1 if row else 1

    def write_shadow(self, station: str, shadows: Iterable[tuple[int, InspectionResult]]) -> int:
        """Store shadow results ((journal row id, result) pairs); returns how many were new."""
        n = 0
        with self.conn.transaction():
            for row_id, r in shadows:
                cur = self.conn.execute(
                    "INSERT INTO shadow_results (station, epoch, row_id, seq, model_id, verdict, answer, reason, "
                    "boxes, captured_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (r.station or station, r.epoch, row_id, r.seq, r.model_id, r.verdict, r.answer, r.reason,
                     json.dumps([b.model_dump() for b in r.boxes]), r.captured_at))
                n += cur.rowcount
        return n

    def has_image(self, station: str, epoch: str, seq: int, kind: str = "image") -> bool:
        row = self.conn.execute("SELECT 1 FROM images WHERE station = %s AND epoch = %s AND seq = %s AND kind = %s",
                                (station, epoch, seq, kind)).fetchone()
        return row is not None

    def put_image(self, station: str, epoch: str, seq: int, kind: str, media_type: str, data: bytes) -> None:
        with self.conn.transaction():
            self.conn.execute("INSERT INTO images (station, epoch, seq, kind, media_type, data) "
                              "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                              (station, epoch, seq, kind, media_type, data))
