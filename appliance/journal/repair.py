"""`adfm-appliance journal check|recover`: find and mend what a crash, a full disk or a bad disk left.

`check` reads the journal without changing it: SQLite's full integrity check, seqs without gaps,
rows whose image file is missing, image files without a row. `recover` (with the service stopped)
mends what it can: stray files are removed and rows whose image is gone are marked pruned; a
damaged database is moved aside and every readable row is copied into a fresh one, which gets a
new epoch so followers and queued verdicts know its seqs were rebuilt.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .store import DB_NAME, IMAGES_DIR, Journal, JournalError

_CHUNK = 256


@dataclass
class CheckReport:
    """What `journal check` found; `ok` when nothing needs mending."""

    db: str
    integrity: list[str] = field(default_factory=list)
    station: str = ""
    epoch: str = ""
    parts: int = 0
    pending: int = 0
    seq_gaps: list[list[int]] = field(default_factory=list)
    missing_images: list[int] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.integrity == ["ok"] and not (self.seq_gaps or self.missing_images or self.orphan_files)

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _image_files(root: Path) -> list[Path]:
    images = root / IMAGES_DIR
    if not images.is_dir():
        return []
    return sorted(f for day in images.iterdir() if day.is_dir() for f in day.iterdir() if f.is_file())


def check_journal(root: str | Path) -> CheckReport:
    """Inspect a journal directory; never writes. Raises JournalError when there is no journal."""
    root = Path(root)
    db = root / DB_NAME
    if not db.is_file():
        raise JournalError(f"{db}: no journal database here")
    report = CheckReport(str(db))
    try:
        with closing(_read_only(db)) as conn:
            report.integrity = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
            if report.integrity != ["ok"]:
                return report
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            report.station, report.epoch = meta.get("station", ""), meta.get("epoch", "")
            rows = conn.execute(
                "SELECT seq, state, image_path, map_path, image_pruned FROM parts ORDER BY seq").fetchall()
    except sqlite3.DatabaseError as exc:
        report.integrity = [f"unreadable: {exc}"]
        return report
    report.parts = len(rows)
    report.pending = sum(1 for r in rows if r[1] == "pending")
    expected = 1
    for seq, *_ in rows:
        if seq != expected:
            report.seq_gaps.append([expected, seq - 1])
        expected = seq + 1
    known: set[str] = set()
    for seq, _state, image, gate_map, pruned in rows:
        known.update(p for p in (image, gate_map) if p)
        if not pruned and image and not (root / image).is_file():
            report.missing_images.append(seq)
    report.orphan_files = [str(f.relative_to(root)) for f in _image_files(root)
                           if str(f.relative_to(root)) not in known]
    return report


@dataclass
class RecoverReport:
    db: str
    rebuilt: bool = False
    damaged_copy: str = ""
    parts_salvaged: int = 0
    verdicts_salvaged: int = 0
    rows_lost: int = 0
    orphans_removed: int = 0
    missing_marked_pruned: int = 0
    epoch_before: str = ""
    epoch_after: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _salvage(conn: sqlite3.Connection, table: str) -> tuple[list[str], list[tuple], int]:
    """Every readable row of `table`, read in rowid chunks and row by row around damage."""
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    try:
        return cols, conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall(), 0
    except sqlite3.DatabaseError:
        pass
    rows: list[tuple] = []
    lost = 0
    try:
        top = int(conn.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()[0] or 0)
    except sqlite3.DatabaseError:
        top = 10_000_000
    lo = 1
    misses = 0
    while lo <= top and misses < 64:
        sql = f"SELECT {', '.join(cols)} FROM {table} WHERE rowid >= ? AND rowid < ?"
        try:
            chunk = conn.execute(sql, (lo, lo + _CHUNK)).fetchall()
            rows += chunk
            misses = misses + 1 if not chunk and top == 10_000_000 else 0
        except sqlite3.DatabaseError:
            for rid in range(lo, lo + _CHUNK):
                try:
                    rows += conn.execute(sql, (rid, rid + 1)).fetchall()
                except sqlite3.DatabaseError:
                    lost += 1
        lo += _CHUNK
    return cols, rows, lost


def recover_journal(root: str | Path, station: str | None = None) -> RecoverReport:
    """Mend a journal in place (run with the service stopped). See the module docstring."""
    root = Path(root)
    before = check_journal(root)
    db = root / DB_NAME
    report = RecoverReport(str(db), epoch_before=before.epoch)
    if before.integrity != ["ok"]:
        _rebuild(root, station or before.station, report)
        before = check_journal(root)
    with Journal(root, station or before.station) as journal:
        report.epoch_after = journal.epoch
        for rel in before.orphan_files:
            (root / rel).unlink(missing_ok=True)
            report.orphans_removed += 1
        if before.missing_images:
            with journal._write() as w:
                for seq in before.missing_images:
                    report.missing_marked_pruned += w.execute(
                        "UPDATE parts SET image_pruned = 1 WHERE seq = ? AND state = 'done'", (seq,)).rowcount
            journal._image_bytes = journal._sum_image_bytes()
    return report


def _rebuild(root: Path, station: str, report: RecoverReport) -> None:
    db = root / DB_NAME
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = root / f"{DB_NAME}.damaged-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(db) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    report.rebuilt, report.damaged_copy = True, str(aside)
    parts: tuple[list[str], list[tuple], int] = ([], [], 0)
    verdicts: tuple[list[str], list[tuple], int] = ([], [], 0)
    with closing(sqlite3.connect(f"file:{aside}?mode=ro", uri=True)) as old:
        with suppress(sqlite3.DatabaseError):
            meta = dict(old.execute("SELECT key, value FROM meta").fetchall())
            station = station or meta.get("station", "")
        if not station:
            raise JournalError(f"{aside}: the station id is unreadable; pass --station")
        with suppress(sqlite3.DatabaseError):
            parts = _salvage(old, "parts")
        with suppress(sqlite3.DatabaseError):
            verdicts = _salvage(old, "operator_verdicts")
    part_cols, part_rows, _ = parts
    seqs = {r[part_cols.index("seq")] for r in part_rows} if part_rows else set()
    verdict_cols, verdict_rows, _ = verdicts
    verdict_rows = [r for r in verdict_rows if r[verdict_cols.index("seq")] in seqs]  # its part survived
    with Journal(root, station) as fresh, fresh._write() as w:  # a new database: a new epoch
        for cols, rows, table in ((part_cols, part_rows, "parts"),
                                  (verdict_cols, verdict_rows, "operator_verdicts")):
            if rows:
                w.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) "
                              f"VALUES ({', '.join('?' * len(cols))})", rows)
    report.parts_salvaged, report.verdicts_salvaged = len(part_rows), len(verdict_rows)
    report.rows_lost = parts[2] + verdicts[2]
