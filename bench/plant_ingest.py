"""Plant store: results/s from 10 simulated stations into PostgreSQL, and the plant view's queries
over 1 million stored results (p50/p95 and EXPLAIN ANALYZE plans).

What runs is the product's own code against a real PostgreSQL 15 (a throwaway cluster made with
initdb in a temporary folder, fsync off — durability is not measured; the same settings for every
run):

Ingest. 10 station processes, each with the appliance's `Journal` and `ResultBus` on loopback TCP,
journal filled first (the 2 kB three-stage results of bench/bus_throughput.py, distinct per station)
and then published at a fixed rate per station (`--rate`, the bus's rate the stations are asked to
keep), their status reporting the last *published* seq as a station's does. The real `adfm-plant
collect` process follows all ten (a thread and a database connection per station, batches by COPY).
`count(*)` of stored results is sampled every 0.5 s; sustained rate = rows stored between 20 % and
90 % of the total / the time between (start-up and the tail left out), also the overall rate (all
rows / first row to last row). Then a catch-up run: the collector is started after every journal is
full, so everything comes by replay (the bus's replay path), measured the same way.

Queries. A fresh database is filled with `--rows` results (10 stations on 2 lines, 90 days, ~8 %
flagged, 30 % of flagged parts judged, gate scores drifting) through the collector's own `Store.write`
(its rate is reported too: results, hourly counts, gate bins and verdicts in one transaction per
5,000), ANALYZEd, then each of the view's main queries runs `--repeats` times
round-robin over the view's default windows (yield and line decisions: 7 days; drift: 8 weeks;
gallery: the newest page) and over the whole 90 days; p50/p95/min/max in ms, and one EXPLAIN
(ANALYZE, BUFFERS) plan per query.

Run: nice -n 10 python bench/plant_ingest.py   (≈ 6-8 min on 2 cores; --rows, --per-station, --rate)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STATIONS = 10


# ---- simulated stations ----------------------------------------------------------------------------


def _station_main(name: str, root: str, n: int, conn) -> None:
    """Fill a journal with n results, serve it on a bus; on each "live" command journal and publish
    more at the rate asked, as a station does (journal first, then publish)."""
    from bus_throughput import make_result

    from adfm.appliance.bus.server import ResultBus
    from adfm.appliance.journal.store import Journal
    from adfm.schema import StationStatus

    journal = Journal(Path(root), name)
    journal._conn().execute("PRAGMA synchronous = OFF")  # the fixture only, as in bus_throughput.py

    def add():
        part = journal.open_part(part_id=f"{name}-part", camera="cam0", triggered_wall=time.time())
        result = make_result(part.seq, part.part_id, part.captured_at).model_copy(update={"station": name})
        return journal.complete(result)

    for _ in range(n):
        add()

    def status() -> StationStatus:
        return StationStatus(station=name, healthy=True, last_seq=journal.last_seq(), epoch=journal.epoch)

    bus = ResultBus(name, journal, status, publish=["tcp://127.0.0.1:*"], control=["tcp://127.0.0.1:*"],
                    status_interval_s=1.0)
    bus.start()
    conn.send((bus.bound["publish"][0], bus.bound["control"][0]))
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        rate, m = cmd
        t0 = time.monotonic()
        late = 0
        for i in range(m):
            wait = t0 + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late += 1
            bus.publish(add())
        # CLOCK_MONOTONIC is one clock for every process on the machine
        conn.send({"published": m, "seconds": time.monotonic() - t0, "behind_schedule": late,
                   "t_end": time.monotonic()})
    bus.stop()
    journal.close()


class Stations:
    def __init__(self, root: Path, per_station: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs, self.endpoints = [], [], []
        for i in range(STATIONS):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_station_main, args=(f"sim{i:02d}", str(root / f"sim{i:02d}"), per_station, child),
                            daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        self.endpoints = [c.recv() for c in self.conns]

    def live(self, rate: float, m: int) -> None:
        for c in self.conns:
            c.send((rate, m))

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(20)
            if p.is_alive():
                p.kill()


def _collector(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "adfm.plant.cli", "--log-level", "WARNING", "collect",
                             "--config", str(cfg)], cwd=REPO)


def _follow(dsn: str, total: int, timeout_s: float) -> list[tuple[float, int]]:
    """(monotonic time, rows stored) every 0.25 s until `total` rows are stored."""
    from adfm.plant.db import connect

    samples = []
    deadline = time.monotonic() + timeout_s
    with connect(dsn) as conn:
        while time.monotonic() < deadline:
            n = conn.execute("SELECT count(*) FROM results").fetchone()[0]
            samples.append((time.monotonic(), n))
            if n >= total:
                break
            time.sleep(0.25)
    return samples


def _rates(samples: list[tuple[float, int]], base: int, total: int) -> dict:
    """Rates of the rows from `base` to `total`: sustained (20 % → 90 % of them), overall (first new
    row → last)."""
    span = total - base

    def first_at(k: float) -> tuple[float, int] | None:
        return next(((t, n) for t, n in samples if n >= k), None)

    a, b = first_at(base + 0.2 * span), first_at(base + 0.9 * span)
    start = next(((t, n) for t, n in samples if n > base), None)
    end = first_at(total)
    return {
        "results": span, "stored": samples[-1][1] - base if samples else 0,
        "sustained_results_per_s": round((b[1] - a[1]) / (b[0] - a[0]), 1) if a and b and b[0] > a[0] else None,
        "overall_results_per_s": round((end[1] - start[1]) / (end[0] - start[0]), 1)
        if start and end and end[0] > start[0] else None,
        "first_to_last_s": round(end[0] - start[0], 2) if start and end else None,
    }


def ingest(cluster, root: Path, per_station: int, live_per_station: int, rate: float, rounds: int) -> dict:
    """Each round: a fresh database, the collector catching up on every journal (replay), then the
    stations journaling and publishing `live_per_station` more each at `rate`/s while it follows."""
    import yaml

    from adfm.plant.db import connect, migrate

    t = time.monotonic()
    stations = Stations(root, per_station)
    fill_s = time.monotonic() - t
    out: dict = {"stations": STATIONS, "journal_fill_s": round(fill_s, 1), "catch_up": [], "live": []}
    journaled = STATIONS * per_station
    try:
        for rnd in range(rounds):
            dsn = cluster.create_database(f"ingest_{rnd}")
            with connect(dsn) as conn:
                migrate(conn)
            cfg = root / f"plant-{rnd}.yaml"
            cfg.write_text(yaml.safe_dump({
                "database": dsn, "collector": {"verdict_lookback": 0},
                "stations": [{"id": f"sim{i:02d}", "publish": p, "control": c}
                             for i, (p, c) in enumerate(stations.endpoints)]}))
            load = os.getloadavg()
            collector = _collector(cfg)
            try:
                samples = _follow(dsn, journaled, timeout_s=600)
                catch = {"round": rnd, **_rates(samples, 0, journaled), "loadavg_1m_before": round(load[0], 2)}
                out["catch_up"].append(catch)
                print(f"ingest catch-up round {rnd}: {catch}", flush=True)
                load = os.getloadavg()
                stations.live(rate, live_per_station)
                samples = _follow(dsn, journaled + STATIONS * live_per_station, timeout_s=600)
                published = [c.recv() for c in stations.conns]
            finally:
                collector.terminate()
                collector.wait(30)
            live = {"round": rnd, **_rates(samples, journaled, journaled + STATIONS * live_per_station),
                    "offered_results_per_s": rate * STATIONS,
                    "published_results_per_s": round(sum(p["published"] for p in published)
                                                     / max(p["seconds"] for p in published), 1),
                    "stored_after_last_publish_s": round(samples[-1][0] - max(p["t_end"] for p in published), 2),
                    "loadavg_1m_before": round(load[0], 2)}
            out["live"].append(live)
            print(f"ingest live round {rnd}: {live}", flush=True)
            journaled += STATIONS * live_per_station
    finally:
        stations.close()
    for mode in ("catch_up", "live"):
        out[f"{mode}_summary"] = _summary([e["sustained_results_per_s"] for e in out[mode]])
    return out


# ---- queries over a million results ---------------------------------------------------------------


def _fill(dsn: str, rows: int, batch: int = 5000) -> dict:
    """`rows` made-up results (10 stations, 90 days) through Store.write; 30 % of flagged parts judged."""
    import random

    from adfm.plant.db import connect
    from adfm.plant.store import Store
    from adfm.schema import OperatorVerdict
    from tests.plant_support import synthetic_results

    rng = random.Random(1)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    made_s = write_s = 0.0
    with connect(dsn) as conn:
        store = Store(conn)
        for i in range(STATIONS):
            store.register(f"st{i + 1}", "line-1" if i < 6 else "line-2", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
        step_days = 90.0 * batch / rows
        for k in range(0, rows, batch):
            t = time.monotonic()
            results = synthetic_results(min(batch, rows - k), stations=STATIONS, start=start + timedelta(
                days=step_days * k / batch), span_days=step_days, seed=k)
            results = [r.model_copy(update={"seq": r.seq + k, "part_id": f"{r.station}-{r.seq + k}"})
                       for r in results]
            verdicts = [OperatorVerdict(station=r.station, seq=r.seq, epoch=r.epoch, part_id=r.part_id,
                                        decision="confirmed_defect" if rng.random() < 0.7 else "false_alarm",
                                        operator="anna", verdict_id=f"v{r.station}-{r.seq}",
                                        at=r.captured_at + timedelta(minutes=5))
                        for r in results if r.verdict != "pass" and rng.random() < 0.3]
            made_s += time.monotonic() - t
            t = time.monotonic()
            store.write("bench", results, verdicts, None, None)
            write_s += time.monotonic() - t
        conn.execute("ANALYZE")
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
    return {"rows": rows, "batch": batch, "store_write_s": round(write_s, 1),
            "store_write_results_per_s": round(rows / write_s, 1), "making_results_s": round(made_s, 1),
            "database_size": size}


def _queries(end: datetime):
    from adfm.plant import queries as q

    week = q.Filters(end - timedelta(days=7), end)
    weeks8 = q.Filters(end - timedelta(weeks=8), end)
    whole = q.Filters(end - timedelta(days=91), end)
    one = q.Filters(end - timedelta(days=7), end, station="st3")
    return {
        "yield_by_station_per_day_7d": lambda c: q.yield_over_time(c, week, "station", "day"),
        "yield_by_line_per_hour_7d": lambda c: q.yield_over_time(c, week, "line", "hour"),
        "yield_one_station_7d": lambda c: q.yield_over_time(c, one, "station", "day"),
        "line_decisions_7d": lambda c: q.line_decisions(c, week),
        "agreement_7d": lambda c: q.agreement(c, week),
        "gallery_first_page_7d": lambda c: q.flagged_parts(c, week),
        "gallery_false_alarms_7d": lambda c: q.flagged_parts(c, week, decided="false_alarm"),
        "gate_drift_8w": lambda c: q.gate_drift(c, weeks8),
        "filter_menus": lambda c: q.choices(c),
        "yield_by_station_per_day_90d": lambda c: q.yield_over_time(c, whole, "station", "day"),
        "line_decisions_90d": lambda c: q.line_decisions(c, whole),
        "agreement_90d": lambda c: q.agreement(c, whole),
        "gate_drift_90d": lambda c: q.gate_drift(c, whole),
    }


def _explain(conn, fn) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement `fn` runs (recorded by a cursor class, then explained)."""
    import psycopg

    seen: list[tuple] = []

    class Recording(psycopg.Cursor):
        def execute(self, query, params=None, **kw):
            seen.append((query, params))
            return super().execute(query, params, **kw)

    conn.cursor_factory = Recording
    try:
        fn(conn)
    finally:
        conn.cursor_factory = psycopg.Cursor
    plans = []
    for query, params in seen:
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + query, params).fetchall()
        plans.append("\n".join(r[0] for r in rows))
    return "\n---\n".join(plans)


def query_times(dsn: str, repeats: int) -> dict:
    from adfm.plant.db import connect

    end = datetime(2026, 4, 1, 1, tzinfo=UTC)
    named = _queries(end)
    times: dict[str, list[float]] = {k: [] for k in named}
    with connect(dsn, options="-c default_transaction_read_only=on") as conn:
        for fn in named.values():  # one warm-up each: the view's connections are long-lived too
            fn(conn)
        for _ in range(repeats):
            for name, fn in named.items():
                t = time.perf_counter()
                fn(conn)
                times[name].append(1000 * (time.perf_counter() - t))
        plans = {name: _explain(conn, fn) for name, fn in named.items()}
    out = {}
    for name, ms in times.items():
        s = sorted(ms)
        out[name] = {"p50_ms": round(statistics.median(s), 1), "p95_ms": round(s[max(0, int(0.95 * len(s)) - 1)], 1)
                     if len(s) < 20 else round(statistics.quantiles(s, n=20)[-1], 1),
                     "min_ms": round(s[0], 1), "max_ms": round(s[-1], 1), "runs": len(s)}
    return {"times": out, "plans": plans}


# ---- the run ------------------------------------------------------------------------------------


def _summary(values: list) -> dict:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {"median": None}
    med = statistics.median(vals)
    return {"median": round(med, 1), "min": round(vals[0], 1), "max": round(vals[-1], 1),
            "spread_pct": round(100 * (vals[-1] - vals[0]) / med, 1), "rounds": len(vals)}


def _machine(dsn: str) -> dict:
    from adfm.plant.db import connect

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "")
    with connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', "
                                     "'work_mem', 'fsync', 'synchronous_commit', 'max_parallel_workers_per_gather', "
                                     "'jit')").fetchall())
    import psycopg

    return {"platform": platform.platform(), "cpu_model": model, "cpus": os.cpu_count(),
            "python": platform.python_version(), "postgresql": version, "postgresql_settings": settings,
            "psycopg": psycopg.__version__, "nice": os.nice(0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="results stored for the query timings")
    p.add_argument("--per-station", type=int, default=5000, help="results each station journals before the run")
    p.add_argument("--live-per-station", type=int, default=3000, help="results each station adds live per round")
    p.add_argument("--rate", type=float, default=600.0, help="results/s each station journals and publishes live")
    p.add_argument("--rounds", type=int, default=2, help="ingest rounds (live and catch-up each)")
    p.add_argument("--repeats", type=int, default=20, help="runs of each query")
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "plant_ingest.json")
    args = p.parse_args(argv)
    from tests.plant_support import PgCluster

    cluster = PgCluster()
    report: dict = {"command": "python bench/plant_ingest.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "when": datetime.now(UTC).isoformat(timespec="seconds"), "loadavg_start": os.getloadavg()}
    try:
        report["machine"] = _machine(cluster.dsn())
        with tempfile.TemporaryDirectory(prefix="adfm-plant-bench-") as tmp:
            if not args.skip_ingest:
                report["ingest"] = ingest(cluster, Path(tmp), args.per_station, args.live_per_station, args.rate,
                                          args.rounds)
        dsn = cluster.create_database("queries")
        from adfm.plant.db import connect, migrate

        with connect(dsn) as conn:
            migrate(conn)
        report["loadavg_before_fill"] = os.getloadavg()
        report["fill"] = _fill(dsn, args.rows)
        print(f"filled: {report['fill']}", flush=True)
        report["loadavg_before_queries"] = os.getloadavg()
        report["queries"] = query_times(dsn, args.repeats)
        report["loadavg_end"] = os.getloadavg()
    finally:
        cluster.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for name, t in report["queries"]["times"].items():
        print(f"{name:34s} p50 {t['p50_ms']:8.1f} ms  p95 {t['p95_ms']:8.1f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
