"""The plant view's queries: yield, line decisions, operator-vs-model agreement, gate-score drift,
the flagged-part gallery. Each counts a part once (its first stored row). Counts come from the
hourly table and gate scores from the weekly bins the collector keeps (so a range's cost is its
hours, not its parts; ranges are whole hours); the gallery and the operators' decisions read the
results themselves, by index. bench/plant_ingest.py times them over a million results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import dict_row

GROUPS = {"station": "h.station", "line": "s.line", "recipe": "h.recipe", "model": "h.model_id"}
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

    def where(self, alias: str = "r", time: str = "captured_at", parts: bool = True) -> tuple[str, dict]:
        """SQL conditions and parameters for table `alias` (its time column `time`; `parts`: a
        results table, counted by each part's first stored row)."""
        sql = [f"{alias}.{time} >= %(since)s", f"{alias}.{time} < %(until)s"]
        if parts:
            sql.insert(0, f"{alias}.first_stored")
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

    def hours(self) -> tuple[str, dict]:
        """Conditions on the hourly table: the hours that start inside the range."""
        where, params = self.where("h", "hour", parts=False)
        params["since"] = self.since.replace(minute=0, second=0, microsecond=0)
        return where, params


def _rows(conn: psycopg.Connection, sql: str, params: dict) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()  # type: ignore[arg-type]


def yield_over_time(conn: psycopg.Connection, f: Filters, by: str = "station", bucket: str = "day") -> list[dict]:
    """Parts, passes and flagged parts per time bucket and group (station, line, recipe or model)."""
    if by not in GROUPS or bucket not in BUCKETS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)} and bucket one of {', '.join(BUCKETS)}")
    where, params = f.hours()
    return _rows(conn, f"""
        SELECT date_trunc('{bucket}', h.hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS t, {GROUPS[by]} AS g,
               sum(h.parts)::bigint AS parts, sum(h.passed)::bigint AS passed, sum(h.flagged)::bigint AS flagged
        FROM hourly h JOIN stations s ON s.station = h.station
        WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2""", params)


def line_decisions(conn: psycopg.Connection, f: Filters) -> list[dict]:
    """Per station: where decisions came from, deadline misses and the fail-safe's share."""
    where, params = f.hours()
    return _rows(conn, f"""
        SELECT h.station, s.line, sum(h.parts)::bigint AS parts, sum(h.by_gate)::bigint AS gate,
               sum(h.by_vlm)::bigint AS vlm, sum(h.failsafe)::bigint AS failsafe,
               sum(h.deadline_missed)::bigint AS deadline_missed, sum(h.review)::bigint AS review
        FROM hourly h JOIN stations s ON s.station = h.station
        WHERE {where} GROUP BY 1, 2 ORDER BY 1""", params)


_LATEST_VERDICT = """
    LEFT JOIN LATERAL (SELECT v.decision, v.operator, v.note, v.at FROM verdicts v
                       WHERE v.station = r.station AND v.epoch = r.epoch AND v.seq = r.seq
                       ORDER BY v.at DESC LIMIT 1) op ON true"""


def agreement(conn: psycopg.Connection, f: Filters) -> list[dict]:
    """Per station and model version: flagged parts, how many operators judged, how many they
    confirmed (model right) or called false alarms (overruled), and passes judged defective.
    Flagged counts from the hourly table; decisions from the verdicts of the range (each carries
    its part's capture time, model and line verdict), the latest per part."""
    hwhere, hparams = f.hours()
    flagged = {(r["station"], r["model_id"]): r["flagged"] for r in _rows(conn, f"""
        SELECT h.station, h.model_id, sum(h.flagged)::bigint AS flagged FROM hourly h
        WHERE {hwhere} GROUP BY 1, 2""", hparams)}
    where, params = f.where("v", "captured_at", parts=False)
    judged = _rows(conn, f"""
        WITH latest AS (SELECT DISTINCT ON (v.station, v.epoch, v.seq) v.station, v.model_id, v.line_verdict,
                               v.decision
                        FROM verdicts v WHERE {where} ORDER BY v.station, v.epoch, v.seq, v.at DESC)
        SELECT station, model_id,
               count(*) FILTER (WHERE line_verdict <> 'pass' AND decision NOT IN ('skip', 'unsure')) AS judged,
               count(*) FILTER (WHERE line_verdict <> 'pass'
                                AND decision IN ('confirmed_defect', 'defect_wrong_box')) AS confirmed,
               count(*) FILTER (WHERE line_verdict <> 'pass' AND decision = 'false_alarm') AS false_alarms,
               count(*) FILTER (WHERE line_verdict = 'pass'
                                AND decision IN ('confirmed_defect', 'defect_wrong_box')) AS missed
        FROM latest GROUP BY 1, 2""", params)
    out = {(r["station"], r["model_id"]): {**r, "flagged": flagged.get((r["station"], r["model_id"]), 0)}
           for r in judged}
    for key, n in flagged.items():
        if n and key not in out:
            out[key] = {"station": key[0], "model_id": key[1], "flagged": n, "judged": 0, "confirmed": 0,
                        "false_alarms": 0, "missed": 0}
    return [out[k] for k in sorted(out)]


@dataclass
class Histogram:
    lo: float
    hi: float
    rows: list[dict] = field(default_factory=list)  # station, week, counts (HIST_BINS), n, p50, p95


def _bin_edge(b: int) -> float:
    """The lower edge of a fine bin (migrations/0002: bin = floor(100 ln(1 + score)))."""
    return math.expm1(b / 100)


def gate_drift(conn: psycopg.Connection, f: Filters) -> Histogram:
    """The gate score's distribution per station and week, on shared display bins (drift at a
    glance), merged from the collector's fine bins; quantiles within a fine bin (~1 %)."""
    where, params = f.where("g", "week", parts=False)
    params["since"] = params["since"] - timedelta(days=params["since"].weekday(), hours=params["since"].hour,
                                                  minutes=params["since"].minute, seconds=params["since"].second)
    rows = _rows(conn, f"""
        SELECT g.station, g.week, g.bin, sum(g.n)::bigint AS n FROM gate_bins g
        WHERE {where} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""", params)
    if not rows:
        return Histogram(0.0, 1.0)
    lo, hi = _bin_edge(min(r["bin"] for r in rows)), _bin_edge(max(r["bin"] for r in rows) + 1)
    width = (hi - lo) / HIST_BINS
    out: dict[tuple, dict] = {}
    for row in rows:
        entry = out.setdefault((row["station"], row["week"]), {"station": row["station"], "week": row["week"],
                                                                "counts": [0] * HIST_BINS, "fine": []})
        centre = (_bin_edge(row["bin"]) + _bin_edge(row["bin"] + 1)) / 2
        entry["counts"][min(int((centre - lo) / width), HIST_BINS - 1)] += row["n"]
        entry["fine"].append((row["bin"], row["n"]))
    for entry in out.values():
        fine = entry.pop("fine")
        entry["n"] = sum(n for _, n in fine)
        entry["p50"], entry["p95"] = (_quantile(fine, q) for q in (0.5, 0.95))
    return Histogram(lo, hi, list(out.values()))


def _quantile(fine: list[tuple[int, int]], q: float) -> float:
    """A quantile read off the fine bins (the upper edge of the bin it falls in)."""
    target, seen = q * sum(n for _, n in fine), 0
    for b, n in sorted(fine):
        seen += n
        if seen >= target:
            return _bin_edge(b + 1)
    return _bin_edge(max(b for b, _ in fine) + 1)


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
