"""The verdict outbox: every operator decision is written here before it is sent.

A small SQLite file under the dashboard's state directory. A verdict is `queued` when written,
`sent` once the station acknowledged it, `rejected` when the station refused it (the reason is
kept). The station journals a verdict once per `verdict_id`, so re-sending a queued verdict after
a timeout, a reconnect or a restart of the dashboard never records it twice — and a decision made
while the station is unreachable survives until it is delivered.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import suppress
from pathlib import Path

from adfm.schema import OperatorVerdict

OUTBOX_NAME = "verdicts.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    verdict_id TEXT PRIMARY KEY,
    station TEXT NOT NULL,
    seq INTEGER NOT NULL,
    verdict_json TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'rejected')),
    detail TEXT NOT NULL DEFAULT '',
    created_wall REAL NOT NULL,
    done_wall REAL
);
CREATE INDEX IF NOT EXISTS verdicts_queued ON verdicts (station, created_wall) WHERE state = 'queued';
"""


class OutboxError(RuntimeError):
    """The outbox file cannot be used; the message names it."""


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/adfm-review` (default `~/.local/state/adfm-review`)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "adfm-review"


class VerdictOutbox:
    """Durable queue of operator verdicts; safe to use from the UI thread and the bus thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")  # a decision survives a power cut
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise OutboxError(f"{self.path}: cannot open the verdict outbox: {exc}") from exc
        self._lock = threading.Lock()

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> VerdictOutbox:
        return cls(Path(state_dir) / OUTBOX_NAME)

    def close(self) -> None:
        with self._lock, suppress(sqlite3.Error):
            self._db.close()

    def add(self, verdict: OperatorVerdict) -> None:
        """Write a new verdict (queued). Adding the same verdict_id again changes nothing."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO verdicts (verdict_id, station, seq, verdict_json, state, created_wall) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (verdict.verdict_id, verdict.station, verdict.seq, verdict.model_dump_json(), time.time()),
            )

    def _finish(self, verdict_id: str, state: str, detail: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE verdicts SET state = ?, detail = ?, done_wall = ? WHERE verdict_id = ? AND state = 'queued'",
                (state, detail, time.time(), verdict_id),
            )

    def mark_sent(self, verdict_id: str, detail: str = "") -> None:
        self._finish(verdict_id, "sent", detail)

    def mark_rejected(self, verdict_id: str, reason: str) -> None:
        self._finish(verdict_id, "rejected", reason)

    def queued(self, station: str | None = None) -> list[OperatorVerdict]:
        """Verdicts not yet acknowledged, oldest first (of one station, or all)."""
        query = "SELECT verdict_json FROM verdicts WHERE state = 'queued'"
        args: tuple = ()
        if station is not None:
            query += " AND station = ?"
            args = (station,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_wall, rowid", args).fetchall()
        return [OperatorVerdict.model_validate_json(r[0]) for r in rows]

    def state(self, verdict_id: str) -> tuple[str, str] | None:
        """(state, detail) of a verdict, None when unknown."""
        with self._lock:
            row = self._db.execute("SELECT state, detail FROM verdicts WHERE verdict_id = ?", (verdict_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM verdicts GROUP BY state").fetchall()
        return {s: int(n) for s, n in rows}
