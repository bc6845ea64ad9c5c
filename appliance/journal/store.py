"""The station journal: SQLite (WAL) plus image files on disk — the appliance's source of truth.

A part is *accepted* when its row (state `pending`, a new per-station `seq`) and its image file
are both durable; only then is the camera acknowledged. The row is later *completed* with its
`InspectionResult` (state `done`) and only then published. A SIGKILL at any point therefore
leaves either no row (the camera still holds the part) or a pending row whose image is on disk
(the service re-inspects it at start-up): nothing accepted is lost, nothing is recorded twice.

Parts complete in seq order, so the done rows always form a prefix of the seqs: the journal's
`last_seq` is the newest seq below the first pending one, and replays never skip a part.

Images are kept within a retention policy (age and disk quota); pruning deletes image files,
oldest first, and marks their rows `image_pruned` — result rows are never deleted.

Every journal has an *epoch*, a random id made when its database is created: a seq names a part
only together with the epoch. A replaced or rebuilt journal starts a new epoch, so followers know
their seqs are void and verdicts queued against the old journal are refused, not misapplied.

Every SQLite failure leaves as a JournalError: JournalFullError (disk full, the service degrades
and retries), JournalCorrupt (a damaged database: `adfm-appliance journal recover`), or plain
JournalError (anything else); no raw sqlite3 exception reaches the pipeline.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from adfm.files import write_atomic
from adfm.schema import InspectionResult, OperatorVerdict

JOURNAL_VERSION = 1
DB_NAME = "journal.sqlite"
IMAGES_DIR = "images"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    seq INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    dedupe_key TEXT UNIQUE,
    part_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    product TEXT NOT NULL DEFAULT '',
    frame_number INTEGER NOT NULL,
    captured_wall REAL NOT NULL,
    image_path TEXT NOT NULL,
    image_width INTEGER NOT NULL,
    image_height INTEGER NOT NULL,
    image_bytes INTEGER NOT NULL DEFAULT 0,
    map_path TEXT NOT NULL DEFAULT '',
    map_bytes INTEGER NOT NULL DEFAULT 0,
    image_pruned INTEGER NOT NULL DEFAULT 0,
    recoveries INTEGER NOT NULL DEFAULT 0,
    verdict TEXT,
    result_json TEXT,
    operator_json TEXT,
    accepted_wall REAL NOT NULL,
    completed_wall REAL
);
CREATE INDEX IF NOT EXISTS parts_pending ON parts (state) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS parts_unpruned ON parts (seq) WHERE image_pruned = 0;
CREATE TABLE IF NOT EXISTS operator_verdicts (
    verdict_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL REFERENCES parts (seq),
    decision TEXT NOT NULL,
    operator TEXT NOT NULL,
    at TEXT NOT NULL,
    verdict_json TEXT NOT NULL,
    received_wall REAL NOT NULL,
    part_id TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS verdicts_by_seq ON operator_verdicts (seq);
CREATE TABLE IF NOT EXISTS revisions (
    seq INTEGER NOT NULL REFERENCES parts (seq),
    revision INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    result_json TEXT NOT NULL,
    recorded_wall REAL NOT NULL,
    PRIMARY KEY (seq, revision)
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    command TEXT NOT NULL,
    argument TEXT NOT NULL,
    client TEXT NOT NULL,
    operator TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    verdict TEXT NOT NULL,
    result_json TEXT NOT NULL,
    recorded_wall REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_by_model ON shadow_results (model_id, seq);
"""
#: columns added after version 1 was first written; added on open to older files
_ADDED_COLUMNS = {"operator_verdicts": (("part_id", "TEXT NOT NULL DEFAULT ''"),
                                        ("client", "TEXT NOT NULL DEFAULT ''"))}
#: a replay reply stops adding results once their JSON reaches this many bytes (at least one is sent);
#: small, so that replies queued for a client that does not read them stay small (bench/control_plane.py)
REPLAY_MAX_BYTES = 512 * 1024


class JournalError(RuntimeError):
    """The journal cannot do what was asked; the message names the file and why."""


class JournalFullError(JournalError):
    """The disk (or quota) is full even after pruning: the part was NOT accepted."""


class JournalCorrupt(JournalError):
    """The database file is damaged; restarting cannot fix it (`adfm-appliance journal recover`)."""


def new_epoch() -> str:
    return secrets.token_hex(8)


def journal_error(exc: sqlite3.DatabaseError, where: Path, what: str) -> JournalError:
    """The JournalError for a SQLite failure: full, corrupt, or other."""
    text = f"{where}: {what}: {exc}"
    if _is_disk_full(exc):
        return JournalFullError(text)
    if not isinstance(exc, sqlite3.OperationalError) or "malformed" in str(exc).lower():
        return JournalCorrupt(text + "; stop the service and run `adfm-appliance journal recover`")
    return JournalError(text)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long images are kept. Result rows are kept forever; only image files are pruned.

    `max_age_days`: images older than this are deleted (None: no age limit).
    `max_image_bytes`: quota for all journal images; at quota the oldest are deleted down to
    `prune_to_fraction` of it, so pruning runs in batches rather than once per part.
    `min_free_bytes`: keep at least this much free on the journal's filesystem.
    """

    max_age_days: float | None = 30.0
    max_image_bytes: int | None = None
    min_free_bytes: int = 256 * 1024 * 1024
    prune_to_fraction: float = 0.9


@dataclass(frozen=True)
class AcceptedPart:
    """A journaled part waiting for (or holding) its result."""

    seq: int
    part_id: str
    camera: str
    product: str
    frame_number: int
    captured_wall: float
    image_path: str
    image_width: int
    image_height: int
    duplicate: bool = False

    @property
    def captured_at(self) -> datetime:
        return datetime.fromtimestamp(self.captured_wall, UTC)


@dataclass(frozen=True)
class StoredImage:
    """An image file written for a part (journal-relative path), not yet entered in its row."""

    path: str
    width: int
    height: int
    nbytes: int


@dataclass(frozen=True)
class PruneReport:
    images_removed: int = 0
    bytes_freed: int = 0
    image_bytes_left: int = 0


@dataclass(frozen=True)
class VerdictOutcome:
    stored: bool  # False when this verdict_id was already journaled (a re-send)
    result: InspectionResult


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


def write_durable(path: Path, data: bytes) -> None:
    """Write a file so that it exists whole or not at all, even across a power cut."""
    write_atomic(path, data, durable=True)


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """RGB uint8 → PNG (fast, lossless) or JPEG (quality 95) bytes."""
    import cv2

    if image.ndim == 2:
        bgr = image
    elif image.ndim == 3 and image.shape[2] == 3:
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    else:
        raise ValueError(f"image must be H×W or H×W×3 uint8, got shape {image.shape}")
    # PNG: the cheap "up" filter instead of per-row filter search, and Huffman coding alone instead
    # of zlib's match search: the encoding runs beside the model on the same cores for every part a
    # camera delivers as pixels. On a 640×480 image with camera noise (σ 1–3 levels) that takes about
    # half the CPU of zlib level 1 and gives slightly smaller files; on a noise-free rendered image
    # it is 15 % faster and a third larger (measured here, 2026-11).
    params = ([cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
               cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY] if fmt == "png"
              else [cv2.IMWRITE_JPEG_QUALITY, 95])
    ok, buf = cv2.imencode("." + fmt, bgr, params)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()


def decode_image(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8; a clear error names the file when it is missing or corrupt."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise JournalError(f"{path}: cannot read image: {exc.strerror or exc}") from exc
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise JournalError(f"{path}: not a readable image (corrupt or truncated)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Journal:
    """One station's journal under `root` (`journal.sqlite`, `images/`).

    Safe to share between threads: each thread gets its own SQLite connection, and SQLite's
    locking serializes writers (the pipeline's accept/complete, the control socket's verdicts).
    """

    def __init__(
        self,
        root: str | Path,
        station: str,
        *,
        image_format: str = "png",
        retention: RetentionPolicy | None = None,
        busy_timeout_s: float = 10.0,
        sweep: bool = True,
    ) -> None:
        """`sweep=False`: leave stray image files alone — `journal recover` opens a database it is
        about to fill, whose last seq is still 0, and must not take every image for an orphan."""
        if image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
        self.root = Path(root)
        self.station = station
        self.image_format = image_format
        self.retention = retention or RetentionPolicy()
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        try:
            (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"{self.root}: cannot create the journal directory: {exc.strerror}") from exc
        self.db_path = self.root / DB_NAME
        self.epoch = ""
        self._init_db()
        with self._sql("opening"):
            self._image_bytes = self._sum_image_bytes()
        if sweep:
            self._sweep_orphans()

    # ---- connections ------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a commit survives a power cut, not only a process kill.
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.DatabaseError as exc:
                raise journal_error(exc, self.db_path, "cannot open the journal") from exc
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE … COMMIT); rolled back on any error, a failed
        COMMIT included (SQLite may already have rolled back then, so ROLLBACK's own error is moot)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _sql(self, what: str) -> Iterator[None]:
        """Turn any SQLite failure inside into the matching JournalError naming the database."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise journal_error(exc, self.db_path, what) from exc

    def _init_db(self) -> None:
        try:
            conn = self._conn()
            status = conn.execute("PRAGMA quick_check").fetchall()
            if [r[0] for r in status] != ["ok"]:
                raise JournalCorrupt(
                    f"{self.db_path}: the journal database is damaged ({'; '.join(r[0] for r in status[:3])}); "
                    "stop the service and run `adfm-appliance journal recover`"
                )
            with self._write() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                for table, columns in _ADDED_COLUMNS.items():
                    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                    for name, decl in columns:
                        if name not in have:
                            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    meta = {"journal_version": str(JOURNAL_VERSION), "station": self.station}
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
                if "epoch" not in meta:  # a new journal, or one written before epochs existed
                    meta["epoch"] = new_epoch()
                    conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (meta["epoch"],))
        except JournalError:
            raise
        except sqlite3.DatabaseError as exc:
            if _is_disk_full(exc):
                raise JournalFullError(f"{self.db_path}: cannot open the journal: disk full") from exc
            raise JournalCorrupt(
                f"{self.db_path}: not a usable journal database: {exc}; if it is the station's journal, "
                "run `adfm-appliance journal recover`"
            ) from exc
        self.epoch = meta["epoch"]
        if meta.get("journal_version") != str(JOURNAL_VERSION):
            raise JournalError(
                f"{self.db_path}: journal version {meta.get('journal_version')!r}, this adfm reads "
                f"version {JOURNAL_VERSION}"
            )
        if meta.get("station") != self.station:
            raise JournalError(
                f"{self.db_path}: this journal belongs to station {meta.get('station')!r}, not "
                f"{self.station!r}; give each station its own journal directory"
            )

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                with suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- accepting and completing parts ------------------------------------------------------

    def image_file(self, rel: str) -> Path:
        return self.root / rel

    def image_bytes_for(self, image: np.ndarray, encoded: bytes | None = None) -> tuple[bytes, str]:
        """The bytes to store for a part's image and their suffix.

        A camera's own file is kept as it is — no second encoding on the station's CPU, which the
        model needs — when every reader decodes it to the same pixels (adfm.camera.images.
        storable_as_is) and it is a JPEG (never larger than its re-encoding, and lossless with
        respect to what the camera delivered) or a PNG in a PNG journal (a JPEG journal asked for
        small files). Otherwise the pixels are encoded in the journal's format."""
        if encoded is not None:
            from adfm.camera.images import storable_as_is

            kind = storable_as_is(encoded)
            if kind == "jpg" or (kind is not None and kind == self.image_format):
                return encoded, "." + kind
        return encode_image(image, self.image_format), "." + self.image_format

    def _image_rel(self, seq: int, captured_wall: float, suffix: str) -> str:
        day = datetime.fromtimestamp(captured_wall, UTC).strftime("%Y-%m-%d")
        return f"{IMAGES_DIR}/{day}/{seq:010d}{suffix}"

    def accept(
        self,
        image: np.ndarray,
        *,
        part_id: str,
        camera: str,
        frame_number: int,
        captured_wall: float,
        product: str = "",
        dedupe_key: str | None = None,
        encoded: bytes | None = None,
    ) -> AcceptedPart:
        """Journal a new part with its image; returns it with its seq.

        `encoded`: the camera's own file of `image` (Frame.encoded), stored as it is when it can be
        (see `image_bytes_for`) instead of encoding the pixels again. With a `dedupe_key` already in
        the journal (a part the camera delivered again after a crash, before its acknowledgement),
        nothing is written and the existing part is returned with `duplicate=True`. Raises
        JournalFullError (nothing written) when the disk is full even after pruning.
        """
        if image.ndim < 2:
            raise ValueError(f"part {part_id!r} from {camera!r}: image has shape {image.shape}")
        if dedupe_key is not None:
            existing = self._find_dedupe(dedupe_key)
            if existing is not None:
                return existing
        data, suffix = self.image_bytes_for(image, encoded)
        self._ensure_room(len(data))
        try:
            return self._accept_once(image, data, suffix, part_id, camera, frame_number, captured_wall, product,
                                     dedupe_key)
        except (OSError, sqlite3.DatabaseError) as exc:
            if not _is_disk_full(exc):
                if isinstance(exc, sqlite3.DatabaseError):
                    raise journal_error(exc, self.db_path, f"cannot journal part {part_id!r}") from exc
                raise JournalError(f"{self.root}: cannot journal part {part_id!r}: {exc}") from exc
        # Disk full: prune harder (everything the policy allows beyond a margin) and try once more.
        self.prune(extra_bytes=4 * len(data) + self.retention.min_free_bytes)
        try:
            return self._accept_once(image, data, suffix, part_id, camera, frame_number, captured_wall, product,
                                     dedupe_key)
        except (OSError, sqlite3.DatabaseError) as exc:
            if _is_disk_full(exc):
                raise JournalFullError(
                    f"{self.root}: disk full ({self._free_bytes()} bytes free) — part {part_id!r} from "
                    f"camera {camera!r} was not accepted; free space or lower retention.max_image_mb"
                ) from exc
            if isinstance(exc, sqlite3.DatabaseError):
                raise journal_error(exc, self.db_path, f"cannot journal part {part_id!r}") from exc
            raise JournalError(f"{self.root}: cannot journal part {part_id!r}: {exc}") from exc

    def _accept_once(
        self,
        image: np.ndarray,
        data: bytes,
        suffix: str,
        part_id: str,
        camera: str,
        frame_number: int,
        captured_wall: float,
        product: str,
        dedupe_key: str | None,
    ) -> AcceptedPart:
        """Write the image under the next seq's name, then insert its row in a short transaction:
        the write lock is never held across the image's fsync (verdicts do not wait behind it),
        and the file is removed again whenever the row is not committed."""
        height, width = int(image.shape[0]), int(image.shape[1])
        seq = self._conn().execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM parts").fetchone()[0]
        rel = self._image_rel(seq, captured_wall, suffix)
        write_durable(self.image_file(rel), data)
        try:
            with self._write() as conn:
                actual = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM parts").fetchone()[0]
                if actual != seq:  # another writer took that seq meanwhile: the file follows the row
                    moved = self._image_rel(actual, captured_wall, suffix)
                    os.replace(self.image_file(rel), self.image_file(moved))
                    seq, rel = actual, moved
                conn.execute(
                    "INSERT INTO parts (seq, state, dedupe_key, part_id, camera, product, frame_number, "
                    "captured_wall, image_path, image_width, image_height, image_bytes, accepted_wall) "
                    "VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, dedupe_key, part_id, camera, product, int(frame_number), float(captured_wall),
                     rel, width, height, len(data), time.time()),
                )
        except BaseException:
            self.image_file(rel).unlink(missing_ok=True)
            raise
        self._image_bytes += len(data)
        return AcceptedPart(seq, part_id, camera, product, int(frame_number), float(captured_wall), rel,
                            width, height)

    # ---- line parts: a row at the trigger, the image when the frame comes, revisions later --------

    def open_part(self, *, part_id: str, camera: str, triggered_wall: float, product: str = "",
                  seq: int | None = None) -> AcceptedPart:
        """Journal a triggered part before it has a frame (state pending, no image), so that every
        trigger has a seq and a row whatever becomes of its frame. `seq`: the number the line gave
        the part when it was triggered (the deciding loop numbers parts itself, so it never waits
        for this write); by default the next free one. Opening a seq already journaled for the same
        part changes nothing (a retried write). Raises JournalFullError when not even the row fits."""
        try:
            with self._write() as conn:
                if seq is None:
                    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM parts").fetchone()[0]
                else:
                    row = conn.execute("SELECT part_id FROM parts WHERE seq = ?", (seq,)).fetchone()
                    if row is not None:
                        if row[0] != part_id:
                            raise JournalError(f"{self.db_path}: seq {seq} is part {row[0]!r}, not {part_id!r}")
                        return AcceptedPart(seq, part_id, camera, product, 0, float(triggered_wall), "", 0, 0)
                conn.execute(
                    "INSERT INTO parts (seq, state, part_id, camera, product, frame_number, captured_wall, "
                    "image_path, image_width, image_height, accepted_wall) "
                    "VALUES (?, 'pending', ?, ?, ?, 0, ?, '', 0, 0, ?)",
                    (seq, part_id, camera, product, float(triggered_wall), time.time()),
                )
        except sqlite3.OperationalError as exc:
            kind = JournalFullError if _is_disk_full(exc) else JournalError
            raise kind(f"{self.db_path}: cannot journal triggered part {part_id!r}: {exc}") from exc
        return AcceptedPart(seq, part_id, camera, product, 0, float(triggered_wall), "", 0, 0)

    def max_seq(self) -> int:
        """The highest seq journaled, pending parts included (0 for an empty journal)."""
        with self._sql("reading the highest seq"):
            return int(self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM parts").fetchone()[0])

    def store_image(self, part: AcceptedPart, image: np.ndarray, *, captured_wall: float,
                    encoded: bytes | None = None) -> StoredImage:
        """Write a triggered part's image file (durably) without touching the database, so a writer
        holding SQLite's lock never delays it; `record_image` then enters it in the part's row.
        JournalFullError when the disk is full even after pruning."""
        data, suffix = self.image_bytes_for(image, encoded)
        rel = self._image_rel(part.seq, captured_wall, suffix)
        height, width = int(image.shape[0]), int(image.shape[1])
        for last_try in (False, True):
            try:
                self._ensure_room(len(data))
                write_durable(self.image_file(rel), data)
                break
            except OSError as exc:
                self.image_file(rel).unlink(missing_ok=True)
                if not _is_disk_full(exc):
                    raise JournalError(f"{self.root}: cannot store the image of seq {part.seq}: {exc}") from exc
                if last_try:
                    raise JournalFullError(
                        f"{self.root}: disk full ({self._free_bytes()} bytes free) — the image of part "
                        f"{part.part_id!r} (seq {part.seq}) was not stored; its row is kept"
                    ) from exc
                self.prune(extra_bytes=4 * len(data) + self.retention.min_free_bytes)
        self._image_bytes += len(data)
        return StoredImage(rel, width, height, len(data))

    def record_image(self, part: AcceptedPart, stored: StoredImage, *, frame_number: int,
                     captured_wall: float) -> AcceptedPart:
        """Enter an image written by `store_image` in its part's row."""
        try:
            with self._write() as conn:
                conn.execute(
                    "UPDATE parts SET image_path = ?, image_width = ?, image_height = ?, image_bytes = ?, "
                    "frame_number = ?, captured_wall = ? WHERE seq = ?",
                    (stored.path, stored.width, stored.height, stored.nbytes, int(frame_number),
                     float(captured_wall), part.seq),
                )
        except sqlite3.OperationalError as exc:
            kind = JournalFullError if _is_disk_full(exc) else JournalError
            raise kind(f"{self.db_path}: cannot record the image of seq {part.seq}: {exc}") from exc
        return AcceptedPart(part.seq, part.part_id, part.camera, part.product, int(frame_number),
                            float(captured_wall), stored.path, stored.width, stored.height)

    def attach_image(self, part: AcceptedPart, image: np.ndarray, *, frame_number: int,
                     captured_wall: float, encoded: bytes | None = None) -> AcceptedPart:
        """Store the frame of a part opened by `open_part` and enter it in its row (`encoded` as in
        `accept`). JournalFullError (the row stays, without an image: a minimal record) when the
        disk is full even after pruning."""
        stored = self.store_image(part, image, captured_wall=captured_wall, encoded=encoded)
        try:
            return self.record_image(part, stored, frame_number=frame_number, captured_wall=captured_wall)
        except BaseException:
            self.image_file(stored.path).unlink(missing_ok=True)
            raise

    def revise(self, result: InspectionResult) -> InspectionResult:
        """Record a later verdict on a done part (`result.revision` ≥ 1, same seq and part id).

        The part's row keeps the decision the line acted on (its verdict, source and action); every
        revision, the first decision included, stays in `revisions` beside it. A revision already
        recorded is not recorded again."""
        if result.revision < 1:
            raise ValueError(f"seq {result.seq}: a revision needs revision >= 1, got {result.revision}")
        payload = result.model_copy(update={"operator": None, "epoch": ""}).model_dump_json()
        with self._write() as conn:
            row = conn.execute("SELECT state, part_id, verdict, result_json, completed_wall FROM parts "
                               "WHERE seq = ?", (result.seq,)).fetchone()
            if row is None or row[0] != "done":
                raise JournalError(f"{self.db_path}: cannot revise seq {result.seq}: no decided part")
            if row[1] != result.part_id:
                raise JournalError(f"{self.db_path}: revision of seq {result.seq} names part "
                                   f"{result.part_id!r}, the journal has {row[1]!r}")
            first = InspectionResult.model_validate_json(row[3])
            conn.execute("INSERT OR IGNORE INTO revisions (seq, revision, verdict, result_json, recorded_wall) "
                         "VALUES (?, ?, ?, ?, ?)", (result.seq, first.revision, row[2], row[3], row[4] or 0.0))
            conn.execute("INSERT OR IGNORE INTO revisions (seq, revision, verdict, result_json, recorded_wall) "
                         "VALUES (?, ?, ?, ?, ?)", (result.seq, result.revision, result.verdict, payload, time.time()))
            stored = conn.execute("SELECT result_json FROM revisions WHERE seq = ? AND revision = ?",
                                  (result.seq, result.revision)).fetchone()[0]
        return self.result_from_row(stored, None, 0, epoch=self.epoch)

    def revisions(self, seq: int) -> list[InspectionResult]:
        """Every recorded revision of a part, the line's decision (revision 0) first; just the one
        result when it was never revised."""
        rows = self._conn().execute(
            "SELECT result_json FROM revisions WHERE seq = ? ORDER BY revision", (seq,)).fetchall()
        if rows:
            return [self.result_from_row(r[0], None, 0, epoch=self.epoch) for r in rows]
        one = self.get(seq)
        return [] if one is None else [one]

    def _find_dedupe(self, key: str) -> AcceptedPart | None:
        with self._sql("looking up a re-delivered part"):
            row = self._conn().execute(
            "SELECT seq, part_id, camera, product, frame_number, captured_wall, image_path, image_width, "
                "image_height FROM parts WHERE dedupe_key = ?",
                (key,),
            ).fetchone()
        return None if row is None else AcceptedPart(*row, duplicate=True)

    def attach_map_file(self, seq: int, write: Callable[[Path], None], suffix: str = ".gate.png") -> str:
        """Store a companion image of a pending part (the gate's heat map): `write(path)` writes it;
        returns its journal-relative path. A crash mid-write leaves the part pending, and its
        re-inspection rewrites the file."""
        with self._sql("storing a gate map"):
            row = self._conn().execute("SELECT captured_wall FROM parts WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise JournalError(f"{self.db_path}: no part with seq {seq}")
        rel = self._image_rel(seq, row[0], suffix)
        path = self.image_file(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._ensure_room(0)
        try:
            write(path)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            size = path.stat().st_size
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise (JournalFullError if _is_disk_full(exc) else JournalError)(
                f"{path}: cannot store the gate map: {exc.strerror or exc}"
            ) from exc
        try:
            with self._sql("storing a gate map"), self._write() as conn:
                conn.execute("UPDATE parts SET map_path = ?, map_bytes = ? WHERE seq = ?", (rel, size, seq))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self._image_bytes += size
        return rel

    def complete(self, result: InspectionResult) -> InspectionResult:
        """Record a pending part's result (state `done`). Completing a done part changes nothing
        and returns what was recorded first, so a retried completion never records twice."""
        payload = result.model_copy(update={"operator": None, "epoch": ""}).model_dump_json()
        with self._sql(f"completing seq {result.seq}"), self._write() as conn:
            cur = conn.execute(
                "UPDATE parts SET state = 'done', verdict = ?, result_json = ?, completed_wall = ? "
                "WHERE seq = ? AND state = 'pending'",
                (result.verdict, payload, time.time(), result.seq),
            )
            if cur.rowcount == 0:
                exists = conn.execute("SELECT 1 FROM parts WHERE seq = ?", (result.seq,)).fetchone()
                if exists is None:
                    raise JournalError(f"{self.db_path}: cannot complete seq {result.seq}: no such part")
        stored = self.get(result.seq)
        assert stored is not None
        return stored

    def pending(self) -> list[AcceptedPart]:
        """Accepted parts without a result (left by a crash), oldest first."""
        with self._sql("listing pending parts"):
            rows = self._conn().execute(
                "SELECT seq, part_id, camera, product, frame_number, captured_wall, image_path, image_width, "
                "image_height FROM parts WHERE state = 'pending' ORDER BY seq"
            ).fetchall()
        return [AcceptedPart(*r) for r in rows]

    def note_recovery(self, seq: int) -> int:
        """Count one more start-up that found this part pending; returns the new count."""
        with self._sql(f"counting a recovery of seq {seq}"), self._write() as conn:
            conn.execute("UPDATE parts SET recoveries = recoveries + 1 WHERE seq = ?", (seq,))
            row = conn.execute("SELECT recoveries FROM parts WHERE seq = ?", (seq,)).fetchone()
        return int(row[0]) if row else 0

    def load_image(self, part: AcceptedPart) -> np.ndarray:
        return decode_image(self.image_file(part.image_path))

    # ---- reading ------------------------------------------------------------------------------

    @staticmethod
    def result_from_row(result_json: str, operator_json: str | None, pruned: int, epoch: str = "") -> InspectionResult:
        """Decode a journal row exactly as the station replays it (the read-only reader uses it too)."""
        result = InspectionResult.model_validate_json(result_json)
        update: dict = {"epoch": epoch} if epoch else {}
        if operator_json:
            update["operator"] = OperatorVerdict.model_validate_json(operator_json)
        if pruned:
            update["image_path"] = ""
            update["gate_map_path"] = ""
            update["problems"] = [*result.problems, "image pruned by the retention policy"]
        return result.model_copy(update=update) if update else result

    def get(self, seq: int) -> InspectionResult | None:
        """The result of a done part (with its latest operator verdict), None otherwise."""
        with self._sql(f"reading seq {seq}"):
            row = self._conn().execute(
                "SELECT result_json, operator_json, image_pruned FROM parts WHERE seq = ? AND state = 'done'",
                (seq,),
            ).fetchone()
        return None if row is None else self.result_from_row(*row, epoch=self.epoch)

    def last_seq(self) -> int:
        """The newest seq such that every part up to it has its result (0 for an empty journal)."""
        with self._sql("reading the last seq"):
            conn = self._conn()
            first_pending = conn.execute("SELECT MIN(seq) FROM parts WHERE state = 'pending'").fetchone()[0]
            if first_pending is not None:
                return int(first_pending) - 1
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM parts").fetchone()[0])

    def replay(
        self, from_seq: int, to_seq: int | None = None, limit: int = 500, max_bytes: int = REPLAY_MAX_BYTES
    ) -> tuple[list[InspectionResult], int, bool]:
        """Results with from_seq ≤ seq ≤ min(to_seq, last_seq), oldest first, at most `limit` and
        about `max_bytes` of JSON (always at least one result, so a reader always progresses).

        Returns (results, last_seq, more): `more` says further results in range were left out.
        """
        conn = self._conn()
        rows: list[tuple] = []
        more = False
        with self._sql(f"replaying from seq {from_seq}"):
            conn.execute("BEGIN")  # one snapshot for last_seq and the rows
            try:
                last = self.last_seq()
                upper = last if to_seq is None else min(to_seq, last)
                cur = conn.execute(
                    "SELECT result_json, operator_json, image_pruned FROM parts "
                    "WHERE seq >= ? AND seq <= ? AND state = 'done' ORDER BY seq LIMIT ?",
                    (from_seq, upper, limit + 1),
                )
                size = 0
                for row in cur:
                    grown = size + len(row[0]) + len(row[1] or "")
                    if len(rows) >= limit or (rows and grown > max_bytes):
                        more = True
                        break
                    rows.append(row)
                    size = grown
                cur.close()
                later = self._later_revisions(conn, rows)
            finally:
                conn.execute("COMMIT")
        out: list[InspectionResult] = []
        for row in rows:
            result = self.result_from_row(*row, epoch=self.epoch)
            out.append(result)
            out += later.get(result.seq, [])
        return out, last, more

    def _later_revisions(self, conn: sqlite3.Connection, rows: list[tuple]) -> dict[int, list[InspectionResult]]:
        """The revisions (≥ 1) of the replayed parts, so a subscriber that missed them live gets them."""
        if not rows:
            return {}
        seqs = [InspectionResult.model_validate_json(r[0]).seq for r in rows]
        found = conn.execute("SELECT seq, result_json FROM revisions WHERE seq >= ? AND seq <= ? AND revision > 0 "
                             "ORDER BY seq, revision", (min(seqs), max(seqs))).fetchall()
        out: dict[int, list[InspectionResult]] = {}
        for seq, payload in found:
            out.setdefault(int(seq), []).append(self.result_from_row(payload, None, 0, epoch=self.epoch))
        return out

    def counts(self) -> dict[str, int]:
        """Verdict counts over the whole journal."""
        with self._sql("counting verdicts"):
            rows = self._conn().execute(
                "SELECT verdict, COUNT(*) FROM parts WHERE state = 'done' GROUP BY verdict"
            ).fetchall()
        return {str(v): int(n) for v, n in rows}

    # ---- operator verdicts --------------------------------------------------------------------

    def add_verdict(self, verdict: OperatorVerdict, client: str | None = None) -> VerdictOutcome:
        """Journal an operator's decision on a result. A verdict_id seen before is not stored again.

        The verdict must name the part it judged: a `part_id` (or `epoch`) that does not match the
        part now journaled under its seq is refused — that seq belongs to another part (the journal
        was replaced since the operator saw it). `client`: the authenticated sender, recorded.
        """
        if verdict.station != self.station:
            raise JournalError(f"verdict for station {verdict.station!r} sent to station {self.station!r}")
        if verdict.epoch and verdict.epoch != self.epoch:
            raise JournalError(
                f"verdict {verdict.verdict_id} on seq {verdict.seq} was made against journal epoch "
                f"{verdict.epoch!r}, but station {self.station!r} now keeps journal epoch {self.epoch!r} "
                "(its journal was replaced): refused, that seq may be another part"
            )
        if client is not None:
            verdict = verdict.model_copy(update={"client": client})
        payload = verdict.model_dump_json()
        with self._sql(f"journaling verdict {verdict.verdict_id}"), self._write() as conn:
            row = conn.execute("SELECT state, part_id, image_width, image_height FROM parts WHERE seq = ?",
                               (verdict.seq,)).fetchone()
            if row is None or row[0] != "done":
                raise JournalError(f"no inspected part with seq {verdict.seq} on station {self.station!r}")
            if verdict.part_id and verdict.part_id != row[1]:
                raise JournalError(
                    f"verdict {verdict.verdict_id} is for part {verdict.part_id!r} but seq {verdict.seq} on "
                    f"station {self.station!r} is part {row[1]!r}: refused"
                )
            width, height = row[2], row[3]
            outside = [b.xyxy for b in verdict.boxes if width and height and (b.x2 > width or b.y2 > height)]
            if outside:
                raise JournalError(
                    f"verdict {verdict.verdict_id}: box {outside[0]} leaves part {row[1]!r}'s image "
                    f"({width}×{height} px): refused, boxes are in that image's pixels")
            cur = conn.execute(
                "INSERT OR IGNORE INTO operator_verdicts (verdict_id, seq, decision, operator, at, "
                "verdict_json, received_wall, part_id, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (verdict.verdict_id, verdict.seq, verdict.decision, verdict.operator, verdict.at.isoformat(),
                 payload, time.time(), row[1], verdict.client),
            )
            stored = cur.rowcount == 1
            if stored:
                conn.execute("UPDATE parts SET operator_json = ? WHERE seq = ?", (payload, verdict.seq))
        result = self.get(verdict.seq)
        assert result is not None
        return VerdictOutcome(stored, result)

    def verdicts(self, seq: int) -> list[OperatorVerdict]:
        """Every operator verdict on a part, oldest first (the history behind its latest)."""
        with self._sql(f"reading the verdicts of seq {seq}"):
            rows = self._conn().execute(
                "SELECT verdict_json FROM operator_verdicts WHERE seq = ? ORDER BY received_wall, rowid", (seq,)
            ).fetchall()
        return [OperatorVerdict.model_validate_json(r[0]) for r in rows]

    def verdicts_after(self, rowid: int, limit: int = 100) -> list[tuple[int, OperatorVerdict]]:
        """Verdicts journaled after `rowid` (their insertion order), with their rowids: a reader
        that keeps the last rowid it handled resumes there after a restart."""
        with self._sql(f"reading the verdicts after {rowid}"):
            rows = self._conn().execute(
                "SELECT rowid, verdict_json FROM operator_verdicts WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (rowid, limit),
            ).fetchall()
        return [(int(r[0]), OperatorVerdict.model_validate_json(r[1])) for r in rows]

    # ---- commands that change what the line does ------------------------------------------------

    def record_command(self, command: str, argument: str, *, client: str, operator: str, accepted: bool,
                       detail: str) -> dict:
        """Journal a command (a recipe change …), accepted or refused, with the key and operator that
        sent it; returns the record as published. The station's clock stamps it."""
        at = datetime.now(UTC).isoformat()
        with self._sql(f"journaling command {command}"), self._write() as conn:
            cur = conn.execute(
                "INSERT INTO commands (at, command, argument, client, operator, accepted, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (at, command, argument, client, operator, int(accepted), detail))
        return {"id": cur.lastrowid, "station": self.station, "epoch": self.epoch, "at": at, "command": command,
                "argument": argument, "client": client, "operator": operator, "accepted": accepted,
                "detail": detail}

    def record_shadow(self, result: InspectionResult) -> int:
        """Journal a shadow result (a candidate model's answer on part `result.seq`, never acted on);
        returns its row id, the number it is published under."""
        payload = result.model_copy(update={"operator": None, "epoch": ""}).model_dump_json()
        with self._sql(f"journaling the shadow result of seq {result.seq}"), self._write() as conn:
            cur = conn.execute("INSERT INTO shadow_results (seq, model_id, verdict, result_json, recorded_wall) "
                               "VALUES (?, ?, ?, ?, ?)", (result.seq, result.model_id, result.verdict, payload,
                                                          time.time()))
        return int(cur.lastrowid)

    def shadow_replay(self, from_id: int, limit: int = 500) -> tuple[list[tuple[int, InspectionResult]], int, bool]:
        """Shadow results from row id `from_id` on, oldest first: (entries, newest row id, more to
        come). Bounded like a replay: at most `limit` entries and about REPLAY_MAX_BYTES of JSON."""
        with self._sql("reading shadow results"):
            conn = self._conn()
            last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM shadow_results").fetchone()[0]
            rows = conn.execute("SELECT id, result_json FROM shadow_results WHERE id >= ? ORDER BY id LIMIT ?",
                                (from_id, limit + 1)).fetchall()
        out: list[tuple[int, InspectionResult]] = []
        size = 0
        for row_id, payload in rows[:limit]:
            if out and size + len(payload) > REPLAY_MAX_BYTES:
                break
            size += len(payload)
            out.append((row_id, InspectionResult.model_validate_json(payload).model_copy(update={"epoch": self.epoch})))
        return out, last, len(out) < len(rows)

    def commands(self, limit: int = 1000) -> list[dict]:
        """The newest journaled commands, oldest first."""
        with self._sql("reading commands"):
            rows = self._conn().execute(
                "SELECT id, at, command, argument, client, operator, accepted, detail FROM commands "
                "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "at", "command", "argument", "client", "operator", "accepted", "detail")
        return [dict(zip(keys, (*r[:6], bool(r[6]), r[7]), strict=True)) for r in reversed(rows)]

    # ---- retention ----------------------------------------------------------------------------

    def _sum_image_bytes(self) -> int:
        row = self._conn().execute(
            "SELECT COALESCE(SUM(image_bytes + map_bytes), 0) FROM parts WHERE image_pruned = 0"
        ).fetchone()
        return int(row[0])

    @property
    def image_bytes(self) -> int:
        """Bytes of image files the journal currently keeps."""
        return self._image_bytes

    def _free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return 0

    def _ensure_room(self, incoming: int) -> None:
        r = self.retention
        over_quota = r.max_image_bytes is not None and self._image_bytes + incoming > r.max_image_bytes
        if over_quota or self._free_bytes() - incoming < r.min_free_bytes:
            self.prune(extra_bytes=incoming)

    def prune(self, now: float | None = None, extra_bytes: int = 0) -> PruneReport:
        """Apply the retention policy: delete images past their age, then the oldest ones while the
        quota or the free-space floor is exceeded (making room for `extra_bytes` more). Images of
        pending parts are never pruned — the service still needs them."""
        with self._sql("pruning images"):
            return self._prune(time.time() if now is None else now, extra_bytes)

    def _prune(self, now: float, extra_bytes: int) -> PruneReport:
        r = self.retention
        conn = self._conn()
        doomed: list[tuple[int, str, str, int]] = []
        if r.max_age_days is not None:
            cutoff = now - r.max_age_days * 86400.0
            doomed += conn.execute(
                "SELECT seq, image_path, map_path, image_bytes + map_bytes FROM parts "
                "WHERE image_pruned = 0 AND state = 'done' AND captured_wall < ? ORDER BY seq",
                (cutoff,),
            ).fetchall()
        kept = self._image_bytes - sum(d[3] for d in doomed)
        target_total: int | None = None
        if r.max_image_bytes is not None and kept + extra_bytes > r.max_image_bytes:
            target_total = int(r.max_image_bytes * r.prune_to_fraction) - extra_bytes
        free = self._free_bytes() + sum(d[3] for d in doomed)
        need_free = r.min_free_bytes + extra_bytes - free
        if target_total is not None or need_free > 0:
            seen = {d[0] for d in doomed}
            for row in conn.execute(
                "SELECT seq, image_path, map_path, image_bytes + map_bytes FROM parts "
                "WHERE image_pruned = 0 AND state = 'done' ORDER BY seq"
            ):
                quota_ok = target_total is None or kept <= target_total
                if quota_ok and need_free <= 0:
                    break
                if row[0] in seen:
                    continue
                doomed.append(row)
                kept -= row[3]
                need_free -= row[3]
        return self._delete_images(doomed)

    def _delete_images(self, doomed: list[tuple[int, str, str, int]]) -> PruneReport:
        if not doomed:
            return PruneReport(0, 0, self._image_bytes)
        # Mark first, then delete: a crash in between leaves a few stray files, never a row that
        # points at a deleted image.
        with self._write() as conn:
            conn.executemany("UPDATE parts SET image_pruned = 1 WHERE seq = ?", [(d[0],) for d in doomed])
        freed = 0
        for _, image_rel, map_rel, size in doomed:
            for rel in (image_rel, map_rel):
                if rel:
                    self.image_file(rel).unlink(missing_ok=True)
            freed += size
        self._image_bytes = self._sum_image_bytes()
        return PruneReport(len(doomed), freed, self._image_bytes)

    def _sweep_orphans(self) -> None:
        """Remove image files a crash left without a row (written, then the insert never committed).

        Only regular files directly inside a real day folder are touched: a symlinked day folder or
        file is left alone, since deleting through it would delete outside the journal."""
        images = self.root / IMAGES_DIR
        last = int(self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM parts").fetchone()[0])
        for day in sorted(p for p in images.iterdir() if p.is_dir() and not p.is_symlink())[-3:]:
            for f in day.iterdir():
                if f.is_symlink() or not f.is_file():
                    continue
                if f.name.endswith(".tmp"):
                    f.unlink(missing_ok=True)
                    continue
                stem = f.name.split(".", 1)[0]
                if stem.isdigit() and int(stem) > last:
                    f.unlink(missing_ok=True)


def journal_summary(journal: Journal) -> dict:
    """Counts an operator or the demo prints: parts, verdicts, pending, image bytes, paths."""
    conn = journal._conn()
    total, pending, pruned = conn.execute(
        "SELECT COUNT(*), SUM(state = 'pending'), SUM(image_pruned) FROM parts"
    ).fetchone()
    return {
        "db": str(journal.db_path),
        "images": str(journal.root / IMAGES_DIR),
        "parts": int(total or 0),
        "pending": int(pending or 0),
        "images_pruned": int(pruned or 0),
        "image_bytes": journal.image_bytes,
        "verdicts": journal.counts(),
        "last_seq": journal.last_seq(),
    }
