"""A throwaway PostgreSQL cluster for the plant tests and bench: initdb + pg_ctl in a temporary
folder, on a free loopback port, as an unprivileged user when run as root (postgres refuses root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: from PATH, else Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    return next((str(d / name) for d in PG_BIN_DIRS if (d / name).is_file()), None)


def missing_reason() -> str | None:
    """Why a cluster cannot be started here (None when it can)."""
    for name in ("initdb", "pg_ctl"):
        if pg_bin(name) is None:
            return f"PostgreSQL's {name} not found (apt-get install postgresql)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """initdb, start, give a DSN per database, stop with `close()` (immediate: it is thrown away)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="adfm-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._user = None
        if os.geteuid() == 0:  # the server refuses to run as root: run it as nobody
            self._user = "nobody"
            shutil.chown(self.root, user="nobody")
        self.root.chmod(0o700)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100", "start")

    def _run(self, *cmd: str | None) -> None:
        args = [c for c in cmd if c is not None]
        if self._user:
            args = ["runuser", "-u", self._user, "--", *args]
        proc = subprocess.run(args, capture_output=True, text=True, cwd=self.root if not self._user else "/")
        if proc.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}\n{log}")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def close(self) -> None:
        try:
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ---- a plant's history, made up: stations on two lines, recipes, two model versions ----------------


def synthetic_results(n: int, *, stations: int = 3, start=None, span_days: float = 28.0, seed: int = 0,
                      station_prefix: str = "st"):
    """`n` results spread over `span_days` (oldest first): ~8 % flagged, line decisions with some
    fail-safes and deadline misses, a gate score that drifts up over the span."""
    import random
    from datetime import UTC, datetime, timedelta

    from adfm.schema import Box, InspectionResult

    rng = random.Random(seed)
    start = start or datetime(2026, 2, 1, tzinfo=UTC)
    step = span_days * 86400 / max(n, 1)
    seqs: dict[str, int] = {}
    out = []
    for i in range(n):
        station = f"{station_prefix}{i % stations + 1}"
        seq = seqs[station] = seqs.get(station, 0) + 1
        t = start + timedelta(seconds=i * step)
        frac = i / max(n, 1)
        gate = rng.gauss(0.3 + 0.2 * frac * (station.endswith("1")), 0.08)
        flagged = rng.random() < 0.08
        source = rng.choices(["gate", "vlm", "failsafe_timeout"], [0.7, 0.27, 0.03])[0] if not flagged else \
            rng.choices(["vlm", "failsafe_timeout"], [0.9, 0.1])[0]
        late = source == "failsafe_timeout"
        out.append(InspectionResult(
            station=station, seq=seq, epoch=f"ep-{station}", part_id=f"{station}-{seq}", camera="cam0",
            frame_number=seq, captured_at=t, verdict="fail" if flagged else "pass",
            reason="model answered yes" if flagged else "screening gate: score below its threshold",
            decision=flagged, gate_score=gate, boxes=[Box.from_xyxy([10, 12, 40, 30], "scratch")] if flagged else [],
            think="A dark streak near the upper left." if flagged else "", answer="yes" if flagged else "",
            format_ok=True, prompt_version="multi-stage-v1", model_id="washer-v1@q4" if frac < 0.5 else "washer-v2@q4",
            image_width=64, image_height=48, latency_ms={"total": 40.0}, attempts=1, decision_source=source,
            action="reject" if flagged or late else "pass", triggered_at=t,
            decided_at=t + timedelta(milliseconds=650 if late else 120), deadline_ms=500.0,
            recipe="housing-a" if (i // 7) % 2 else "housing-b"))
    return out


def rollups_from_results(conn) -> tuple[list, list]:
    """The hourly counts and gate bins recomputed from `results` (migrations/0002's backfill) and
    as the collector kept them: equal when every part was counted once."""
    from adfm.plant.db import migrations

    backfill = migrations()[1].sql.split("INSERT INTO hourly", 1)[1]
    hourly_sql, bins_sql = backfill.split("INSERT INTO gate_bins", 1)
    kept = (sorted(conn.execute("SELECT * FROM hourly").fetchall()),
            sorted(conn.execute("SELECT * FROM gate_bins").fetchall()))
    recomputed = (sorted(conn.execute(hourly_sql.strip().rstrip(";")).fetchall()),
                  sorted(conn.execute(bins_sql.strip().rstrip(";")).fetchall()))
    return kept, recomputed
