"""Monthly range partitions of `results`, made before the collector writes into a month.

Native partitioning (PostgreSQL 10+): old months can be detached or dropped whole, and queries over
a time range read only its months. Creation takes an advisory lock so two writers making the same
month do not collide; each process remembers the months it has seen.
"""

from __future__ import annotations

from datetime import date, datetime

import psycopg

_LOCK = 0x706C6E74  # "plnt"


def month_start(t: datetime | date) -> date:
    return date(t.year, t.month, 1)


def _next_month(d: date) -> date:
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"results_{month:%Y%m}"


class Partitions:
    """The months that have a partition, as far as this process knows."""

    def __init__(self) -> None:
        self.known: set[date] = set()

    def ensure(self, conn: psycopg.Connection, times: list[datetime]) -> list[str]:
        """Create the partitions these timestamps need; returns the names created now."""
        months = {month_start(t) for t in times} - self.known
        made: list[str] = []
        if not months:
            return made
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            for m in sorted(months):
                name = partition_name(m)
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
                if not (exists and exists[0]):
                    conn.execute(f"CREATE TABLE {name} PARTITION OF results "  # name from a date: no injection
                                 f"FOR VALUES FROM ('{m.isoformat()}') TO ('{_next_month(m).isoformat()}')")
                    made.append(name)
        self.known |= months
        return made


def existing(conn: psycopg.Connection) -> list[str]:
    """The partitions of `results`, oldest first."""
    rows = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = 'results'::regclass ORDER BY c.relname").fetchall()
    return [r[0] for r in rows]
