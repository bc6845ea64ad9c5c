"""The plant view's queries: yield, line decisions, operator-vs-model agreement, gate-score drift,
the flagged-part gallery. Each counts a part once (its first stored row) over a time range, so the
month partitions outside the range are never read; bench/plant_ingest.py times them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import dict_row

GROUPS = {"station": "r.station", "line": "s.line", "recipe": "r.recipe", "model": "r.model_id"}
BUCKETS = ("hour", "day", "week")
HIST_BINS = 20


@dataclass(frozen=True)
class Filters:
    """What every page filters by; empty strings mean any."""

    since: datetime
    until: datetime
    station: str = ""
    line: str = ""
    recipe: str = ""
    model: str = ""

    def where(self, alias: str = "r") -> tuple[str, dict]:
        sql = [f"{alias}.first_stored", f"{alias}.captured_at >= %(since)s", f"{alias}.captured_at < %(until)s"]
        params: dict = {"since": self.since, "until": self.until}
        for key, col in (("station", f"{alias}.station"), ("recipe", f"{alias}.recipe"),
                         ("model", f"{alias}.model_id")):
            if getattr(self, key):
                sql.append(f"{col} = %({key})s")
                params[key] = getattr(self, key)
        if self.line:
            sql.append(f"{alias}.station IN (SELECT station FROM stations WHERE line = %(line)s)")
            params["line"] = self.line
        return " AND ".join(sql), params


def _rows(conn: psycopg.Connection, sql: str, params: dict) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()  # type: ignore[arg-type]


def yield_over_time(conn: psycopg.Connection, f: Filters, by: str = "station", bucket: str = "day") -> list[dict]:
    """Parts, passes and flagged parts per time bucket and group (station, line, recipe or model)."""
    if by not in GROUPS or bucket not in BUCKETS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)} and bucket one of {', '.join(BUCKETS)}")
    where, params = f.where()
    return _rows(conn, f"""
        SELECT date_trunc('{bucket}', r.captured_at) AS t, {GROUPS[by]} AS g, count(*) AS parts,
               count(*) FILTER (WHERE r.verdict = 'pass') AS passed,
               count(*) FILTER (WHERE r.verdict <> 'pass') AS flagged
        FROM results r JOIN stations s ON s.station = r.station
        WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2""", params)


def line_decisions(conn: psycopg.Connection, f: Filters) -> list[dict]:
    """Per station: where decisions came from, deadline misses and the fail-safe's share."""
    where, params = f.where()
    return _rows(conn, f"""
        SELECT r.station, s.line, count(*) AS parts,
               count(*) FILTER (WHERE r.decision_source = 'gate') AS gate,
               count(*) FILTER (WHERE r.decision_source = 'vlm') AS vlm,
               count(*) FILTER (WHERE r.decision_source LIKE 'failsafe%%') AS failsafe,
               count(*) FILTER (WHERE r.deadline_missed) AS deadline_missed,
               count(*) FILTER (WHERE r.verdict = 'review') AS review
        FROM results r JOIN stations s ON s.station = r.station
        WHERE {where} GROUP BY 1, 2 ORDER BY 1""", params)


_LATEST_VERDICT = """
    LEFT JOIN LATERAL (SELECT v.decision, v.operator, v.note, v.at FROM verdicts v
                       WHERE v.station = r.station AND v.epoch = r.epoch AND v.seq = r.seq
                       ORDER BY v.at DESC LIMIT 1) op ON true"""


def agreement(conn: psycopg.Connection, f: Filters) -> list[dict]:
    """Per station and model version: flagged parts, how many operators judged, how many they
    confirmed (model right) or called false alarms (overruled), and passes judged defective."""
    where, params = f.where()
    return _rows(conn, f"""
        SELECT r.station, r.model_id, count(*) FILTER (WHERE r.verdict <> 'pass') AS flagged,
               count(op.decision) FILTER (WHERE r.verdict <> 'pass' AND op.decision <> 'skip') AS judged,
               count(*) FILTER (WHERE r.verdict <> 'pass' AND op.decision = 'confirmed_defect') AS confirmed,
               count(*) FILTER (WHERE r.verdict <> 'pass' AND op.decision = 'false_alarm') AS false_alarms,
               count(*) FILTER (WHERE r.verdict = 'pass' AND op.decision = 'confirmed_defect') AS missed
        FROM results r {_LATEST_VERDICT}
        WHERE {where} AND (r.verdict <> 'pass' OR EXISTS (
              SELECT 1 FROM verdicts v WHERE v.station = r.station AND v.epoch = r.epoch AND v.seq = r.seq))
        GROUP BY 1, 2 ORDER BY 1, 2""", params)


@dataclass
class Histogram:
    lo: float
    hi: float
    rows: list[dict] = field(default_factory=list)  # station, week, counts (HIST_BINS), n, p50, p95


def gate_drift(conn: psycopg.Connection, f: Filters) -> Histogram:
    """The gate score's distribution per station and week, on shared bins (drift at a glance)."""
    where, params = f.where()
    bounds = conn.execute(f"SELECT min(gate_score), max(gate_score) FROM results r "
                          f"WHERE {where} AND r.gate_score IS NOT NULL", params).fetchone()
    if bounds is None or bounds[0] is None:
        return Histogram(0.0, 1.0)
    lo, hi = float(bounds[0]), float(bounds[1])
    hi = hi if hi > lo else lo + 1.0
    rows = _rows(conn, f"""
        SELECT r.station, date_trunc('week', r.captured_at) AS week,
               least(width_bucket(r.gate_score, %(lo)s, %(hi)s, {HIST_BINS}), {HIST_BINS}) AS bin, count(*) AS n
        FROM results r WHERE {where} AND r.gate_score IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
                 {**params, "lo": lo, "hi": hi})
    out: dict[tuple, dict] = {}
    for row in rows:
        key = (row["station"], row["week"])
        entry = out.setdefault(key, {"station": key[0], "week": key[1], "counts": [0] * HIST_BINS})
        entry["counts"][max(1, row["bin"]) - 1] += row["n"]
    width = (hi - lo) / HIST_BINS
    for entry in out.values():
        n = sum(entry["counts"])
        entry["n"] = n
        entry["p50"], entry["p95"] = (_quantile(entry["counts"], q, lo, width) for q in (0.5, 0.95))
    return Histogram(lo, hi, list(out.values()))


def _quantile(counts: list[int], q: float, lo: float, width: float) -> float:
    """A quantile read off the histogram (the upper edge of the bin it falls in)."""
    target, seen = q * sum(counts), 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= target and c:
            return lo + (i + 1) * width
    return lo + len(counts) * width


def flagged_parts(conn: psycopg.Connection, f: Filters, *, decided: str = "", limit: int = 24,
                  before: datetime | None = None) -> list[dict]:
    """The newest flagged parts (with boxes, reasoning and the operator's latest verdict), a page
    at a time: `before` is the previous page's oldest capture time. `decided`: '' any, 'undecided',
    or an operator decision."""
    where, params = f.where()
    if before is not None:
        where += " AND r.captured_at < %(before)s"
        params["before"] = before
    if decided == "undecided":
        where += " AND op.decision IS NULL"
    elif decided:
        where += " AND op.decision = %(decided)s"
        params["decided"] = decided
    params["limit"] = limit
    return _rows(conn, f"""
        SELECT r.station, r.epoch, r.seq, r.revision, r.part_id, r.camera, r.captured_at, r.verdict, r.reason,
               r.boxes, r.think, r.rethink, r.answer, r.model_id, r.recipe, r.gate_score, r.decision_source,
               r.image_width, r.image_height, r.image_path,
               op.decision AS op_decision, op.operator AS op_operator, op.note AS op_note, op.at AS op_at
        FROM results r {_LATEST_VERDICT}
        WHERE {where} AND r.verdict <> 'pass' ORDER BY r.captured_at DESC LIMIT %(limit)s""", params)


def choices(conn: psycopg.Connection) -> dict[str, list[str]]:
    """What the filter menus offer: stations, lines, recipes and models seen."""
    stations = conn.execute("SELECT station, line FROM stations ORDER BY station").fetchall()
    recent = conn.execute("SELECT DISTINCT recipe, model_id FROM (SELECT recipe, model_id FROM results "
                          "ORDER BY captured_at DESC LIMIT 5000) x").fetchall()
    return {"station": [s for s, _ in stations], "line": sorted({ln for _, ln in stations if ln}),
            "recipe": sorted({r for r, _ in recent if r}), "model": sorted({m for _, m in recent if m})}


def default_range(now: datetime, days: int = 7) -> tuple[datetime, datetime]:
    return now - timedelta(days=days), now + timedelta(minutes=1)
