"""Reading a station journal without ever writing to it (`adfm-review --journal`, export-labels).

`adfm.appliance.journal.store.Journal` is the station's writer: opening it creates tables and sweeps
stray image files, which a viewer must never do to a live station's journal or to a copy taken
for review. This reader opens the SQLite file read-only (`mode=ro`; `immutable=1` for a copy on
read-only media, which then shows no later changes) and decodes rows through the journal's own
row decoder, so a result reads the same here as through the station's replay. (Like any reader
of a WAL database, SQLite may create the `-wal`/`-shm` side files when the folder is writable;
the database and the images are never changed.)
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from pydantic import ValidationError

from adfm.schema import InspectionResult, OperatorVerdict

from ..journal.store import DB_NAME, JOURNAL_VERSION, Journal

_COLUMNS = "seq, product, result_json, operator_json, image_pruned"
#: a journal path component: what the journal itself writes (day folders, seq-numbered files)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: the suffixes a journaled image (or gate map) may have
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def relative_image_problem(rel: str) -> str | None:
    """Why `rel` is not a journal image path (`images/<day>/<file>.png`), None when it is."""
    parts = PurePosixPath(rel).parts
    if (len(parts) != 3 or parts[0] != "images" or any(p in ("..", ".") or not _NAME.match(p) for p in parts[1:])
            or PurePosixPath(rel).suffix.lower() not in _IMAGE_SUFFIXES or "\\" in rel):
        return f"image path {rel!r} is not images/<day>/<file>.png|.jpg"
    return None


def confined(folder: Path, rel: str) -> Path | None:
    """`folder / rel` when `rel` is a journal image path that stays inside `folder`, else None."""
    if relative_image_problem(rel):
        return None
    path = folder / rel
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return None
    return path if inside else None


class JournalReadError(RuntimeError):
    """The journal cannot be read; the message names the file and why."""


@dataclass(frozen=True)
class JournalPart:
    result: InspectionResult
    product: str
    image_pruned: bool


class JournalReader:
    """Read-only view of one journal directory (or its `journal.sqlite`)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.db_path = path / DB_NAME if path.is_dir() else path
        self.root = self.db_path.parent
        if not self.db_path.is_file():
            raise JournalReadError(f"{self.db_path}: no journal here (expected a station's journal directory "
                                   f"holding {DB_NAME})")
        self.immutable = False
        self._db = self._open()
        meta = self._meta()
        if meta.get("journal_version") != str(JOURNAL_VERSION):
            raise JournalReadError(f"{self.db_path}: journal version {meta.get('journal_version')!r}, this adfm "
                                   f"reads version {JOURNAL_VERSION}")
        self.station = meta.get("station", "")

    def _open(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.db_path.absolute()))}"
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
            db.execute("SELECT 1 FROM meta LIMIT 1")
            return db
        except sqlite3.DatabaseError:
            pass  # e.g. a WAL journal copied without write access to its folder: read it as a snapshot
        try:
            db = sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)
            db.execute("SELECT 1 FROM meta LIMIT 1")
        except sqlite3.DatabaseError as exc:
            raise JournalReadError(f"{self.db_path}: not a readable station journal: {exc}") from exc
        self.immutable = True
        return db

    def _meta(self) -> dict[str, str]:
        try:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise JournalReadError(f"{self.db_path}: not a station journal: {exc}") from exc

    def close(self) -> None:
        with suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise JournalReadError(f"{self.db_path}: cannot read: {exc}") from exc

    def _part(self, row: tuple) -> JournalPart:
        seq, product, result_json, operator_json, pruned = row
        try:
            result = Journal.result_from_row(result_json, operator_json, pruned)
        except ValidationError as exc:
            raise JournalReadError(f"{self.db_path}: seq {seq}: unreadable result row: {exc}") from exc
        return JournalPart(result, product or "", bool(pruned))

    # ---- reading ------------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The newest inspected seq (done rows form a prefix of the seqs)."""
        return int(self._query("SELECT COALESCE(MAX(seq), 0) FROM parts WHERE state = 'done'")[0][0])

    def parts_after(self, after_seq: int, limit: int = 500) -> list[JournalPart]:
        """Inspected parts with seq > after_seq, oldest first, at most `limit`."""
        rows = self._query(f"SELECT {_COLUMNS} FROM parts WHERE state = 'done' AND seq > ? ORDER BY seq LIMIT ?",
                           (after_seq, limit))
        return [self._part(r) for r in rows]

    def decided_parts(self) -> Iterator[JournalPart]:
        """Every inspected part that carries an operator verdict, oldest first."""
        after = 0
        while True:
            rows = self._query(
                f"SELECT {_COLUMNS} FROM parts WHERE state = 'done' AND operator_json IS NOT NULL AND seq > ? "
                "ORDER BY seq LIMIT 500", (after,))
            if not rows:
                return
            for row in rows:
                yield self._part(row)
            after = rows[-1][0]

    def verdicts_after(self, after_rowid: int) -> tuple[list[OperatorVerdict], int]:
        """Operator verdicts journaled after `after_rowid`, and the newest rowid seen."""
        rows = self._query("SELECT rowid, verdict_json FROM operator_verdicts WHERE rowid > ? ORDER BY rowid",
                           (after_rowid,))
        verdicts = []
        for rowid, payload in rows:
            try:
                verdicts.append(OperatorVerdict.model_validate_json(payload))
            except ValidationError as exc:
                raise JournalReadError(f"{self.db_path}: operator verdict row {rowid} unreadable: {exc}") from exc
        return verdicts, (rows[-1][0] if rows else after_rowid)

    def last_verdict_rowid(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(rowid), 0) FROM operator_verdicts")[0][0])

    def image_file(self, rel: str) -> Path | None:
        """The image file `rel` names, None when the path leaves the journal's image folder."""
        return confined(self.root, rel)
