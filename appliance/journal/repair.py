"""`adfm-appliance journal check|recover`: find and mend what a crash, a full disk or a bad disk left.

`check` reads the journal without changing it: SQLite's full integrity check, seqs without gaps,
rows whose image file is missing, image files without a row. `recover` (with the service stopped)
mends what it can: rows whose image is gone are marked pruned; on a sound database stray files
(a crash between an image's write and its row) are removed; a damaged database is moved aside and
every readable row — parts, operator verdicts, revisions — is copied into a fresh one, which gets
a new epoch so followers and queued verdicts know its seqs were rebuilt.

Recover never deletes evidence: after a rebuild every image file stays (a file whose row was lost
is still the only record of that part), symlinks under `images/` are neither followed nor removed,
and nothing outside the journal folder is touched. Run as root, it gives the new database the
owner and mode of the old one, so the service user can still write it; run as another user who
does not own the folder, it refuses.
"""

from __future__ import annotations

import os
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
    #: symlinks under images/ (never followed, never deleted; nothing the journal writes is one)
    symlinks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.integrity == ["ok"] and not (self.seq_gaps or self.missing_images or self.orphan_files)

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _image_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(regular files in the real day folders, symlinks met on the way) — symlinks are not followed."""
    images = root / IMAGES_DIR
    if not images.is_dir() or images.is_symlink():
        return [], ([images] if images.is_symlink() else [])
    files: list[Path] = []
    links: list[Path] = []
    for day in sorted(images.iterdir()):
        if day.is_symlink():
            links.append(day)
        elif day.is_dir():
            for f in sorted(day.iterdir()):
                if f.is_symlink():
                    links.append(f)
                elif f.is_file():
                    files.append(f)
    return files, links


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
    files, links = _image_files(root)
    report.orphan_files = [str(f.relative_to(root)) for f in files if str(f.relative_to(root)) not in known]
    report.symlinks = [str(f.relative_to(root)) for f in links]
    return report


@dataclass
class RecoverReport:
    """What `journal recover` did and what it kept."""

    db: str
    rebuilt: bool = False
    damaged_copy: str = ""
    parts_salvaged: int = 0
    verdicts_salvaged: int = 0
    revisions_salvaged: int = 0
    commands_salvaged: int = 0
    rows_lost: int = 0
    images_before: int = 0
    images_after: int = 0
    #: image files without a row after a rebuild: kept, they are the only record of those parts
    images_without_rows: list[str] = field(default_factory=list)
    orphans_removed: int = 0
    symlinks_left: list[str] = field(default_factory=list)
    missing_marked_pruned: int = 0
    owner: str = ""
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
        top = None
    # The journal's rowids are dense (rows are never deleted), so 64 chunks in a row that give
    # nothing (empty or unreadable) end the table, even when a damaged page reports a huge MAX(rowid).
    lo = 1
    misses = 0
    while (top is None or lo <= top) and misses < 64:
        sql = f"SELECT {', '.join(cols)} FROM {table} WHERE rowid >= ? AND rowid < ?"
        try:
            chunk = conn.execute(sql, (lo, lo + _CHUNK)).fetchall()
        except sqlite3.DatabaseError:
            chunk = []
            for rid in range(lo, lo + _CHUNK):
                try:
                    chunk += conn.execute(sql, (rid, rid + 1)).fetchall()
                except sqlite3.DatabaseError:
                    lost += 1
        rows += chunk
        misses = 0 if chunk else misses + 1
        lo += _CHUNK
    return cols, rows, lost


def _owner_of(root: Path) -> os.stat_result:
    """The stat whose owner and mode the journal's files keep: the database's, else the folder's.
    Refuses a user who neither is root nor owns the folder (the files would change hands)."""
    db = root / DB_NAME
    st = db.stat() if db.is_file() else root.stat()
    euid = os.geteuid()
    if euid not in (0, st.st_uid):
        raise JournalError(f"{root}: owned by uid {st.st_uid}; run `journal recover` as that user "
                           f"(e.g. sudo -u '#{st.st_uid}') or as root, not as uid {euid}")
    return st


def _keep_owner(root: Path, st: os.stat_result) -> None:
    """Give the (new) database files the owner and mode the old database had."""
    for suffix in ("", "-wal", "-shm"):
        f = Path(str(root / DB_NAME) + suffix)
        if not f.exists() or f.is_symlink():
            continue
        if os.geteuid() == 0 and (f.stat().st_uid, f.stat().st_gid) != (st.st_uid, st.st_gid):
            os.chown(f, st.st_uid, st.st_gid)
        os.chmod(f, st.st_mode & 0o666)


def recover_journal(root: str | Path, station: str | None = None) -> RecoverReport:
    """Mend a journal in place (run with the service stopped). See the module docstring."""
    root = Path(root)
    if not (root / DB_NAME).is_file():
        raise JournalError(f"{root / DB_NAME}: no journal database here")
    owner = _owner_of(root)
    before = check_journal(root)
    db = root / DB_NAME
    report = RecoverReport(str(db), epoch_before=before.epoch, owner=f"{owner.st_uid}:{owner.st_gid}",
                           images_before=len(_image_files(root)[0]))
    if before.integrity != ["ok"]:
        _rebuild(root, station or before.station, report)
        before = check_journal(root)
    try:
        with Journal(root, station or before.station, sweep=False) as journal:
            report.epoch_after = journal.epoch
            if report.rebuilt:
                report.images_without_rows = before.orphan_files
            else:
                for rel in before.orphan_files:  # a crash's leftovers: regular files, real folders
                    (root / rel).unlink(missing_ok=True)
                    report.orphans_removed += 1
            if before.missing_images:
                with journal._write() as w:
                    for seq in before.missing_images:
                        report.missing_marked_pruned += w.execute(
                            "UPDATE parts SET image_pruned = 1 WHERE seq = ? AND state = 'done'", (seq,)).rowcount
                journal._image_bytes = journal._sum_image_bytes()
    finally:
        _keep_owner(root, owner)
    files, links = _image_files(root)
    report.images_after, report.symlinks_left = len(files), [str(f.relative_to(root)) for f in links]
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
    revisions: tuple[list[str], list[tuple], int] = ([], [], 0)
    commands: tuple[list[str], list[tuple], int] = ([], [], 0)
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
        with suppress(sqlite3.DatabaseError):
            revisions = _salvage(old, "revisions")
        with suppress(sqlite3.DatabaseError):
            commands = _salvage(old, "commands")  # absent from journals older than the table
    part_cols, part_rows, _ = parts
    seqs = {r[part_cols.index("seq")] for r in part_rows} if part_rows else set()
    verdict_cols, verdict_rows, _ = verdicts
    verdict_rows = [r for r in verdict_rows if r[verdict_cols.index("seq")] in seqs]  # its part survived
    revision_cols, revision_rows, _ = revisions
    revision_rows = [r for r in revision_rows if r[revision_cols.index("seq")] in seqs]
    # A new database (a new epoch), opened without the orphan sweep: it has no rows yet, so every
    # image would look like an orphan.
    with Journal(root, station, sweep=False) as fresh, fresh._write() as w:
        for cols, rows, table in ((part_cols, part_rows, "parts"),
                                  (verdict_cols, verdict_rows, "operator_verdicts"),
                                  (revision_cols, revision_rows, "revisions"),
                                  (commands[0], commands[1], "commands")):
            if rows:
                w.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) "
                              f"VALUES ({', '.join('?' * len(cols))})", rows)
    report.parts_salvaged, report.verdicts_salvaged = len(part_rows), len(verdict_rows)
    report.revisions_salvaged = len(revision_rows)
    report.commands_salvaged = len(commands[1])
    report.rows_lost = parts[2] + verdicts[2] + revisions[2] + commands[2]
