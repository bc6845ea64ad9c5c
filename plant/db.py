"""The plant database: connecting, and versioned migrations (numbered SQL files, applied once each).

Migrations are plain SQL in `migrations/NNNN_name.sql`, applied in order inside one transaction
each, under an advisory lock so two processes starting together (collector and view) never apply
one twice. `schema_migrations` records what ran; a database newer than this code is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

MIGRATIONS_PACKAGE = "adfm.plant.migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
#: pg_advisory_xact_lock key: "adfm" in ASCII
_LOCK = 0x6164666D


class PlantDBError(RuntimeError):
    """The database cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this version, in order; a misnamed file is an error."""
    out = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _NAME.match(entry.name)
        if m is None:
            raise PlantDBError(f"migration file {entry.name!r}: name it NNNN_lowercase_words.sql")
        out.append(Migration(int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise PlantDBError(f"migrations must be numbered 1, 2, 3 … without gaps; found {versions}")
    return out


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    """A connection to the plant database in autocommit mode (writes use explicit transactions); a
    clear error (without the password) when it fails."""
    try:
        return psycopg.connect(dsn, autocommit=True, **kwargs)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlantDBError(f"database {_redact(dsn)!r}: cannot connect: {first}") from None


def _redact(dsn: str) -> str:
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn))


def applied(conn: psycopg.Connection) -> list[int]:
    """The migration versions this database has (empty for a new database)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Bring the schema up to date; returns the names of the migrations applied now."""
    known = migrations()
    done: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                     "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        have = set(applied(conn))
        newer = sorted(v for v in have if v > len(known))
        if newer:
            raise PlantDBError(f"the database has schema version {max(newer)}, newer than this adfm-plant "
                               f"knows ({len(known)}); upgrade adfm-plant")
        for m in known:
            if m.version in have:
                continue
            conn.execute(m.sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
            done.append(m.name)
    return done


def require_current(conn: psycopg.Connection) -> None:
    """Refuse to run against a database whose schema is not this version's (run `adfm-plant migrate`)."""
    have, want = applied(conn), len(migrations())
    if not have or max(have) < want:
        raise PlantDBError(f"the database schema is at version {max(have) if have else 0}, this adfm-plant needs "
                           f"{want}: run `adfm-plant migrate --config FILE` first")
    if max(have) > want:
        raise PlantDBError(f"the database has schema version {max(have)}, newer than this adfm-plant knows "
                           f"({want}); upgrade adfm-plant")
