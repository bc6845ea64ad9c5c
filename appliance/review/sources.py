"""Where the dashboard's parts come from: a live station, or a journal on disk.

A source runs in its own thread and hands the app lists of events through `emit` (which the app
makes thread-safe). `LiveSource` follows a station through the appliance's client library: gap-free
results, status, verdict announcements; it watches the connection (any bus traffic or control
reply counts as alive; silence is probed with a status request), reconnects on its own and, on
reconnection, has the client fetch everything journaled meanwhile. Verdicts go into the outbox
first and are delivered from this thread, oldest first. `JournalSource` polls a journal
read-only; it cannot take verdicts.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

from adfm.files import write_atomic
from adfm.schema import Ack, InspectionResult, OperatorVerdict, StationStatus, VerdictRequest

from ..bus.client import (
    JournalReplaced,
    StationAuthError,
    StationClient,
    StationError,
    StationUnreachable,
)
from ..bus.server import is_local_endpoint
from ..config.station import ID_PATTERN
from .journal_reader import JournalReader, JournalReadError, confined, relative_image_problem

if TYPE_CHECKING:
    from ..bus.keys import ClientCurve
    from .outbox import VerdictOutbox

log = logging.getLogger(__name__)

_ID = re.compile(ID_PATTERN)


def untrusted_path_problem(result: InspectionResult) -> str | None:
    """Why the ids a station sent cannot name a file here (None when they can): the station, the
    epoch and the image path come from another machine (or anyone between, on an insecure bus), so
    each is checked against the id pattern before any path is built from it."""
    if not _ID.match(result.station):
        return f"station id {result.station!r} does not match {ID_PATTERN}"
    if result.epoch and not _ID.match(result.epoch):
        return f"epoch {result.epoch!r} does not match {ID_PATTERN}"
    return relative_image_problem(result.image_path)




# ---- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Results:
    results: list[InspectionResult]
    products: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Announced:
    """A verdict the station journaled (anyone's)."""

    verdict: OperatorVerdict


@dataclass(frozen=True)
class Status:
    status: StationStatus


@dataclass(frozen=True)
class Connection:
    """Reachability changed. `connected` None: not reached yet (connecting)."""

    connected: bool | None
    detail: str
    at: datetime
    station: str | None = None


@dataclass(frozen=True)
class VerdictUpdate:
    """A verdict made here: queued (e.g. found in the outbox at start), sent (acked) or rejected."""

    verdict: OperatorVerdict
    state: Literal["queued", "sent", "rejected"]
    detail: str = ""


@dataclass(frozen=True)
class Notice:
    text: str
    severity: Literal["information", "warning", "error"] = "information"


@dataclass(frozen=True)
class Replaced:
    """The station's journal was replaced (a new epoch): every seq shown so far is void; the new
    journal's parts follow from its first seq."""

    station: str
    old_epoch: str
    new_epoch: str


Event = Results | Announced | Status | Connection | VerdictUpdate | Notice | Replaced
Emit = Callable[[list[Event]], None]


class ReadOnlySource(RuntimeError):
    """This source cannot take verdicts (a journal opened for reading)."""


def _now() -> datetime:
    return datetime.now(UTC)


class Source(ABC):
    """What the app needs from a source; see LiveSource and JournalSource."""

    description = ""
    read_only = True

    @abstractmethod
    def start(self, emit: Emit) -> None:
        """Begin following the source; `emit` receives batches of events from any thread."""

    @abstractmethod
    def stop(self) -> None:
        """Stop following; returns when the source's thread has ended or timed out."""

    def send(self, verdict: OperatorVerdict) -> None:
        raise ReadOnlySource(f"{self.description} is read-only: verdicts need a live station (--connect)")

    def image_file(self, result: InspectionResult) -> Path | None:
        """Where the part's image can be read here, None when this machine has no access to it."""
        return None

    def map_file(self, result: InspectionResult) -> Path | None:
        """Where the part's gate heat map can be read here, None when there is none or no access."""
        return None


class _Threaded(Source):
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._emit: Emit = lambda events: None

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self._stop.clear()
        self._thread = threading.Thread(target=self._guarded, name=type(self).__name__, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _guarded(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a source failure must show, not vanish with its thread
            log.exception("review source failed")
            self._emit([Connection(False, f"{self.description}: {type(exc).__name__}: {exc}", _now()),
                        Notice(f"the dashboard stopped following {self.description}: {exc}", "error")])

    @abstractmethod
    def _run(self) -> None:
        """The source's loop, run on its own thread until `_stop` is set."""

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


# ---- a live station --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveOptions:
    """Timings of the live connection. `history`: parts loaded at connection (the queue and the
    feed start from the station's last `history` parts)."""

    history: int = 5000
    timeout_s: float = 1.5
    heartbeat_s: float = 2.0
    retry_s: float = 1.0
    poll_s: float = 0.1


class LiveSource(_Threaded):
    read_only = False

    def __init__(
        self,
        publish: str,
        control: str,
        outbox: VerdictOutbox,
        *,
        curve: ClientCurve | None = None,
        images_dir: str | Path | None = None,
        options: LiveOptions | None = None,
    ) -> None:
        super().__init__()
        self.publish = publish
        self.control = control
        self.outbox = outbox
        self.curve = curve
        self.images_dir = Path(images_dir) if images_dir else None
        self.options = options or LiveOptions()
        self.description = publish
        self.station: str | None = None
        self.connected: bool | None = None
        self._client: StationClient | None = None
        self._last_heard = 0.0
        self._last_probe = 0.0

    def send(self, verdict: OperatorVerdict) -> None:
        """Queue a verdict durably, then wake the bus thread to deliver it."""
        self.outbox.add(verdict)
        self._wake.set()

    def image_file(self, result: InspectionResult) -> Path | None:
        """The part's image: from --images when this machine sees the journal folder, otherwise
        fetched over the (authenticated) control socket once and kept in a local cache."""
        return self._file(result, "image")

    def map_file(self, result: InspectionResult) -> Path | None:
        """The part's gate heat map, found or fetched like its image."""
        return self._file(result, "gate_map")

    def _file(self, result: InspectionResult, kind: str) -> Path | None:
        rel = result.image_path if kind == "image" else result.gate_map_path
        if not rel:
            return None
        why = untrusted_path_problem(result) or relative_image_problem(rel)
        if why is not None:
            log.warning("%s of seq %d not fetched: %s", kind, result.seq, why)
            return None
        if self.images_dir is not None:
            return confined(self.images_dir, rel)
        tail = "" if kind == "image" else ".gate"
        cached = (self.outbox.path.parent / "images" / result.station / (result.epoch or "no-epoch")
                  / f"{result.seq:010d}{tail}{PurePosixPath(rel).suffix.lower()}")
        if cached.is_file():
            return cached
        client = StationClient(self.publish, self.control, station=result.station, curve=self.curve,
                               timeout_s=self.options.timeout_s, retries=1)
        try:
            data, _media = client.fetch_image(result.seq, kind=kind, epoch=result.epoch or None)
        except StationError as exc:
            log.warning("%s of seq %d not fetched: %s", kind, result.seq, exc)
            return None
        finally:
            client.close()
        write_atomic(cached, data)
        return cached

    # ---- the bus thread ---------------------------------------------------------------------------

    def _client_for(self, station: str | None, from_seq: int | None) -> StationClient:
        o = self.options
        return StationClient(self.publish, self.control, station=station, from_seq=from_seq, curve=self.curve,
                             timeout_s=o.timeout_s, retries=1)

    def _open(self) -> None:
        """Ask the station who it is and where its journal ends; subscribe from `history` back."""
        probe = self._client_for(None, None)
        try:
            status = probe.status()
        finally:
            probe.close()
        self.station = status.station
        client = self._client_for(status.station, max(1, status.last_seq - self.options.history + 1))
        client.connect()
        self._client = client
        queued = self.outbox.queued(status.station)
        self._emit([Status(status), *(VerdictUpdate(v, "queued") for v in queued)])
        self._heard()

    def _run(self) -> None:
        self._emit([Connection(None, f"connecting to {self.publish}", _now())])
        while not self._stop.is_set():
            try:
                if self._client is None:
                    self._open()
                self._cycle()
            except StationAuthError as exc:
                self._down(str(exc))
                self._sleep(max(self.options.retry_s, 5.0))
            except StationUnreachable as exc:
                self._down(str(exc))
                self._sleep(self.options.retry_s)
            except StationError as exc:
                self._emit([Notice(str(exc), "error")])
                self._sleep(self.options.retry_s)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _cycle(self) -> None:
        assert self._client is not None
        o = self.options
        events = self._client.poll(o.poll_s)
        if events:
            self._heard()
            self._emit(self._convert(events))
        now = time.monotonic()
        silent_for = now - self._last_heard
        probe_every = o.heartbeat_s if self.connected else o.retry_s
        if silent_for >= o.heartbeat_s and now - self._last_probe >= probe_every:
            self._last_probe = now
            status = self._client.status()  # raises StationUnreachable when the station is gone
            self._heard()
            self._check_journal(status)
            self._emit([Status(status)])
        if self.connected:
            self._flush()

    def _convert(self, events: list) -> list[Event]:
        out: list[Event] = []
        results: list[InspectionResult] = []
        for e in events:
            if isinstance(e, InspectionResult):
                results.append(e)
                continue
            if results:
                out.append(Results(results))
                results = []
            if isinstance(e, JournalReplaced):
                out.append(Replaced(e.station, e.old_epoch, e.new_epoch))
            elif isinstance(e, OperatorVerdict):
                out.append(Announced(e))
            elif isinstance(e, StationStatus):
                self._check_journal(e)
                out.append(Status(e))
        if results:
            out.append(Results(results))
        return out

    def _check_journal(self, status: StationStatus) -> None:
        nxt = self._client.next_seq if self._client else None
        if nxt is not None and status.last_seq < nxt - 1:
            self._emit([Notice(f"station {status.station} reports last seq {status.last_seq} but this dashboard "
                               f"already has seq {nxt - 1}: was its journal replaced? restart adfm-review", "warning")])

    def _heard(self) -> None:
        self._last_heard = time.monotonic()
        if self.connected is not True:
            self.connected = True
            if self._client is not None:
                self._client.resync()  # fetch everything journaled while unreachable
            self._emit([Connection(True, f"connected to {self.publish}", _now(), self.station)])

    def _down(self, why: str) -> None:
        if self.curve is None and not is_local_endpoint(self.publish):
            why += " (no CURVE keys given: a station serving other machines needs --keys)"
        if self.connected is not False:
            self.connected = False
            self._emit([Connection(False, why, _now(), self.station)])

    def _flush(self) -> None:
        """Deliver queued verdicts, oldest first; stop at the first that cannot be delivered."""
        assert self._client is not None and self.station is not None
        for verdict in self.outbox.queued(self.station):
            try:
                reply = self._client.request(VerdictRequest(verdict=verdict))
            except StationUnreachable:
                raise
            except StationError as exc:
                self.outbox.mark_rejected(verdict.verdict_id, str(exc))
                self._emit([VerdictUpdate(verdict, "rejected", str(exc))])
                continue
            if not isinstance(reply, Ack) or not reply.ok:
                detail = getattr(reply, "detail", "") or f"unexpected reply {reply.type!r}"
                self.outbox.mark_rejected(verdict.verdict_id, detail)
                self._emit([VerdictUpdate(verdict, "rejected", detail)])
                continue
            self.outbox.mark_sent(verdict.verdict_id, reply.detail)
            self._heard()
            self._emit([VerdictUpdate(verdict, "sent", reply.detail)])


# ---- a journal on disk -----------------------------------------------------------------------------


class JournalSource(_Threaded):
    """Follow a journal read-only: new parts and verdicts are picked up every `interval_s`."""

    read_only = True

    def __init__(self, path: str | Path, *, history: int = 5000, interval_s: float = 1.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.history = history
        self.interval_s = interval_s
        self.description = f"journal {self.path}"
        self.reader: JournalReader | None = None

    def image_file(self, result: InspectionResult) -> Path | None:
        if self.reader is None or not result.image_path:
            return None
        return self.reader.image_file(result.image_path)

    def map_file(self, result: InspectionResult) -> Path | None:
        if self.reader is None or not result.gate_map_path:
            return None
        return self.reader.image_file(result.gate_map_path)

    def _run(self) -> None:
        try:
            reader = self.reader = JournalReader(self.path)
        except JournalReadError as exc:
            self._emit([Connection(False, str(exc), _now()), Notice(str(exc), "error")])
            return
        try:
            after = max(0, reader.last_seq() - self.history)
            rowid = reader.last_verdict_rowid()
            note = " (read-only copy: later changes are not shown)" if reader.immutable else ""
            self._emit([Connection(True, f"reading {reader.db_path}{note}", _now(), reader.station)])
            while not self._stop.is_set():
                while True:
                    parts = reader.parts_after(after, 500)
                    if not parts:
                        break
                    after = parts[-1].result.seq
                    self._emit([Results([p.result for p in parts], {p.result.seq: p.product for p in parts})])
                verdicts, rowid = reader.verdicts_after(rowid)
                if verdicts:
                    self._emit([Announced(v) for v in verdicts])
                if reader.immutable:
                    return
                self._sleep(self.interval_s)
        except JournalReadError as exc:
            self._emit([Connection(False, str(exc), _now(), reader.station), Notice(str(exc), "error")])
        finally:
            reader.close()
