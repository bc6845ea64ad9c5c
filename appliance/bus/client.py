"""The result-bus client: every result of a station, in seq order, none missed, none twice.

This is what the review TUI and integrators use to follow a station::

    from .client import StationClient

    with StationClient("tcp://10.0.0.5:5560", "tcp://10.0.0.5:5561",
                       curve=ClientCurve(...), from_seq=1) as client:
        for result in client.results():          # blocks; gap-free, in seq order
            print(result.seq, result.verdict, result.boxes)
            if result.verdict == "fail":
                client.send_verdict(result.seq, "confirmed_defect", operator="anna")

How it stays gap-free: results arrive on a SUB socket; a seq beyond the next expected one means
the PUB socket dropped some (slow joiner, high-water mark, reconnect), so the missing range is
fetched from the station's journal through the control socket (a replay request). The periodic
status message carries the journal's `last_seq`, so a result that was never published (a station
restart, a subscriber that was down) is fetched too. Requests time out and are re-sent on a fresh
socket (ZeroMQ's "lazy pirate"); operator verdicts carry a client-chosen id so a re-sent verdict is
journaled once.

A seq names a part only within one journal *epoch* (carried by every result, status and replay
reply). When the station's journal is replaced, the epoch changes and seqs restart: the client
then yields a `JournalReplaced` event and delivers the new journal from its first seq, and
verdicts carry the part id and epoch they were made against, so the station refuses a verdict
whose seq now names another part.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
from pydantic import ValidationError

from adfm.schema import (
    MAX_REPLAY_LIMIT,
    Ack,
    Box,
    ErrorReply,
    ImageReply,
    ImageRequest,
    InspectionResult,
    OperatorDecision,
    OperatorVerdict,
    ReplayReply,
    ReplayRequest,
    ShadowReplayReply,
    ShadowReplayRequest,
    StationStatus,
    StatusRequest,
    VerdictRequest,
    parse_reply,
    result_topic,
    shadow_topic,
    status_topic,
    verdict_topic,
)

if TYPE_CHECKING:
    from .keys import ClientCurve



#: Messages parsed per poll at most. A subscriber that fell behind would otherwise parse its whole
#: backlog (up to RCVHWM) into one list before handing any out: the first result waits, and Python's
#: cyclic GC, walking the thousands of live results, costs more than parsing them (bench/bus_throughput.py).
DRAIN_BATCH = 100


@dataclass(frozen=True)
class JournalReplaced:
    """The station's journal has a new epoch: seqs restarted; results from it follow, from seq 1."""

    station: str
    old_epoch: str
    new_epoch: str


@dataclass(frozen=True)
class ShadowResult:
    """A candidate model's answer on a part, run in shadow (never acted on); `row_id` numbers it in the
    station's journal. Delivered live to clients made with `shadow=True`."""

    row_id: int
    result: InspectionResult


Event = InspectionResult | OperatorVerdict | StationStatus | JournalReplaced | ShadowResult


class StationError(RuntimeError):
    """The station answered a request with an error."""


class StationUnreachable(StationError):
    """No reply from the station's control socket within the timeout, after every retry."""


class StationAuthError(StationUnreachable):
    """The station refused this client's CURVE key (or the client has the wrong server key)."""


class StationClient:
    """Follow one station's result bus.

    `publish` / `control`: the station's PUB and ROUTER endpoints (its `bus.publish` and
    `bus.control` config, with a host clients can reach). `from_seq`: the first seq to deliver
    (1: the whole journal; None: only results newer than the station's last at connection).
    `station`: its id; asked from the station when omitted. `curve`: keys when the station uses
    CURVE (see `adfm.appliance.bus.keys.load_client_curve`). `epoch`: the journal epoch `from_seq`
    counts in (a resuming subscriber's `client.epoch`); if the station has another, delivery
    starts at the new journal's seq 1 instead. `page_size`: results per replay request (a poll
    hands out at most one page; the station also ends a page at about 4 MiB).
    """

    def __init__(
        self,
        publish: str,
        control: str,
        *,
        station: str | None = None,
        from_seq: int | None = 1,
        curve: ClientCurve | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        context: zmq.Context | None = None,
        epoch: str | None = None,
        page_size: int = 500,
        shadow: bool = False,
    ) -> None:
        if from_seq is not None and from_seq < 1:
            raise ValueError(f"from_seq must be ≥ 1 or None, got {from_seq}")
        if not 1 <= page_size <= MAX_REPLAY_LIMIT:
            raise ValueError(f"page_size must be 1-{MAX_REPLAY_LIMIT}, got {page_size}")
        self.page_size = page_size
        self.shadow = shadow  # also deliver shadow results (ShadowResult)
        self.publish_endpoint = publish
        self.control_endpoint = control
        self.curve = curve
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.station = station
        self.last_status: StationStatus | None = None
        self.gaps_filled = 0  # results fetched by replay rather than received live
        self.epoch: str | None = epoch or None  # the journal epoch the delivered seqs belong to
        self.epoch_changes = 0
        self._ctx = context or zmq.Context.instance()
        self._from_seq = from_seq
        self._next: int | None = None  # next seq to deliver, once connected
        self._held: dict[int, InspectionResult] = {}  # received ahead of a gap
        self._pending: list[Event] = []
        self._dealer: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._topics: tuple[bytes, bytes, bytes] | None = None
        self._behind = False  # a catch-up to the journal's end is still owed
        self._owed = 0  # a catch-up up to this seq is still owed (a gap, a status's last_seq)

    # ---- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> StationClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Subscribe, then catch up: polls deliver everything from `from_seq` on, a replay page
        at a time, so catching up on a long journal never holds all of it."""
        if self._sub is not None:
            return
        if self.station is None:
            self.station = self.status().station
        self._topics = (result_topic(self.station), status_topic(self.station), verdict_topic(self.station))
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        self._secure(sub)
        for topic in self._topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        if self.shadow:
            sub.setsockopt(zmq.SUBSCRIBE, shadow_topic(self.station))
        sub.connect(self.publish_endpoint)
        self._sub = sub
        # Subscribed first, then asked: anything published meanwhile is either replayed or
        # received live, and duplicates are dropped by seq.
        if self._from_seq is None:
            status = self.status()
            self.epoch = status.epoch or None
            self._next = status.last_seq + 1
        else:
            self._next = self._from_seq
            self._behind = True
            # The first page now, the rest in poll(); a station that is down is caught up with
            # once it answers.
            with suppress(StationUnreachable):
                self._catch_up(self._pending)

    def close(self) -> None:
        for sock in (self._sub, self._dealer, self._monitor):
            if sock is not None:
                sock.close(0)
        self._sub = self._dealer = self._monitor = None

    def resync(self) -> None:
        """Have the next poll fetch everything journaled since the last delivered result.

        For a subscriber that knows the station was unreachable and is back: without this the
        gap is found at the station's next status publication or next result.
        """
        if self._next is not None:
            self._behind = True

    @property
    def next_seq(self) -> int | None:
        """The seq the next delivered result will have (None before connect)."""
        return self._next

    # ---- receiving ------------------------------------------------------------------------------

    def poll(self, timeout_s: float | None = None) -> list[Event]:
        """Wait up to `timeout_s` (None: forever) for bus traffic; return what arrived, in order.

        Results come gap-free and in seq order; status messages and announcements of operator
        verdicts come as they arrive. An empty list means nothing arrived in time.
        """
        self.connect()
        assert self._sub is not None
        if self._pending:
            out, self._pending = self._pending, []
            return out
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        out: list[Event] = []
        try:
            if self._held:  # a gap a failed replay left open: try again now
                self._owed = max(self._owed, max(self._held) - 1)
            if self._owes():
                self._catch_up(out)
            if not self._owes() and (out or self._sub.poll(timeout_ms)):
                self._drain(out)
        except StationError:
            self._pending[:0] = out  # already counted as delivered: hand them out next time
            raise
        return out

    def _drain(self, out: list[Event]) -> None:
        """Read what the SUB socket holds, at most DRAIN_BATCH messages (the rest waits for the next poll)."""
        assert self._sub is not None
        for _ in range(DRAIN_BATCH):
            if self._owes():  # live messages wait in the socket until the replay has caught up
                return
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3:  # anything else is not the bus's framing
                continue
            if self.shadow and frames[0] == shadow_topic(self.station or ""):
                with suppress(ValidationError, ValueError):
                    out.append(ShadowResult(int(frames[1]), InspectionResult.model_validate_json(frames[2])))
                continue
            self._on_message(frames[0], frames[2], out)

    def receive(self, timeout_s: float | None = None) -> list[InspectionResult]:
        """Like `poll`, but only the results (the latest status stays in `last_status`)."""
        return [e for e in self.poll(timeout_s) if isinstance(e, InspectionResult)]

    def results(self, idle_timeout_s: float | None = None) -> Iterator[InspectionResult]:
        """Yield results forever (or until nothing arrived for `idle_timeout_s`)."""
        while True:
            got = self.receive(idle_timeout_s if idle_timeout_s is not None else 1.0)
            if not got and idle_timeout_s is not None:
                return
            yield from got

    def _on_message(self, topic: bytes, payload: bytes, out: list[Event]) -> None:
        assert self._topics is not None and self._next is not None
        try:
            if topic == self._topics[0]:
                result = InspectionResult.model_validate_json(payload)
                if self._epoch_changed(result.epoch, out):
                    self._behind = True
                    self._catch_up(out)
                    return
                if result.seq < self._next:
                    if result.revision > 0:  # a later verdict on a delivered part (line stations)
                        out.append(result)
                    return  # already delivered (replayed before it arrived live)
                if result.seq > self._next:
                    self._held[result.seq] = result
                    self._owed = max(self._owed, result.seq - 1)
                    self._catch_up(out)
                    return
                out.append(result)
                self._next += 1
                self._release_held(out)
            elif topic == self._topics[1]:
                status = StationStatus.model_validate_json(payload)
                self.last_status = status
                out.append(status)
                if self._epoch_changed(status.epoch, out) or status.last_seq >= self._next:
                    self._owed = max(self._owed, status.last_seq)
                    self._catch_up(out)
            elif topic == self._topics[2]:
                out.append(OperatorVerdict.model_validate_json(payload))
        except ValidationError:
            return  # a message from a newer, incompatible station: skip it rather than die

    def _epoch_changed(self, epoch: str, out: list[Event]) -> bool:
        """Note the station's epoch; on a new one, restart delivery at seq 1 of the new journal."""
        if not epoch:
            return False
        if self.epoch is None:
            self.epoch = epoch
            return False
        if epoch == self.epoch:
            return False
        out.append(JournalReplaced(self.station or "", self.epoch, epoch))
        self.epoch = epoch
        self.epoch_changes += 1
        self._held.clear()
        self._owed = 0
        self._next = 1
        return True

    def _release_held(self, out: list[Event]) -> None:
        assert self._next is not None
        while self._next in self._held:
            out.append(self._held.pop(self._next))
            self._next += 1
        for seq in [s for s in self._held if s < self._next]:
            del self._held[seq]

    def _owes(self) -> bool:
        """Whether a catch-up by replay is still owed (to the journal's end, or up to a seq)."""
        return self._behind or (self._next is not None and self._next <= self._owed)

    def _catch_up(self, out: list[Event], max_pages: int = 1) -> None:
        """Fetch what is owed by replay, at most `max_pages` pages (the rest at the next poll), and
        deliver it in order. A page at a time, not the whole range: a subscriber far behind holds one
        page of results, not the journal, and hands each page out as soon as it has it."""
        assert self._next is not None
        pages = 0
        while self._owes() and pages < max_pages:
            to_seq = None if self._behind else self._owed
            reply = self._replay_page(self._next, to_seq)
            if self._epoch_changed(reply.epoch, out):
                self._behind = True  # the old range means nothing in the new journal: take all of it
                continue
            pages += 1
            for result in reply.results:
                if result.seq >= self._next:  # a seq the journal lacks (a rebuilt journal) is skipped
                    out.append(result)
                    self._next = result.seq + 1
                    self.gaps_filled += 1
                elif result.revision > 0 and result.seq == self._next - 1:
                    out.append(result)  # a later verdict on the part just delivered (line stations)
            self._release_held(out)
            if not reply.more or not reply.results:
                # Every done part up to the journal's last seq was in the replies: seqs in between
                # that came back empty are not in the journal, so do not wait for them.
                upper = reply.last_seq if to_seq is None else min(to_seq, reply.last_seq)
                if self._next <= upper:
                    self._next = upper + 1
                self._behind = False
                self._owed = 0
        self._release_held(out)

    # ---- requests -------------------------------------------------------------------------------

    def replay(self, from_seq: int, to_seq: int | None = None) -> list[InspectionResult]:
        """Results from the station's journal, from_seq ≤ seq ≤ to_seq (its end when None)."""
        out: list[InspectionResult] = []
        nxt = from_seq
        while True:
            reply = self._replay_page(nxt, to_seq)
            out += reply.results
            if not reply.more or not reply.results:
                return out
            nxt = reply.results[-1].seq + 1

    def _replay_page(self, from_seq: int, to_seq: int | None) -> ReplayReply:
        reply = self.request(ReplayRequest(from_seq=from_seq, to_seq=to_seq, limit=self.page_size))
        if not isinstance(reply, ReplayReply):
            raise StationError(f"replay from {from_seq}: unexpected reply {reply.type!r}")
        return reply

    def status(self) -> StationStatus:
        """The station's current health (cameras, worker, latencies, last seq)."""
        reply = self.request(StatusRequest())
        if not isinstance(reply, StationStatus):
            raise StationError(f"status: unexpected reply {reply.type!r}")
        self.last_status = reply
        if self.station is None:
            self.station = reply.station
        return reply

    def send_verdict(
        self,
        seq: int,
        decision: OperatorDecision,
        operator: str,
        note: str = "",
        verdict_id: str | None = None,
        *,
        part_id: str | None = None,
        epoch: str | None = None,
        boxes: list[Box] | None = None,
    ) -> Ack:
        """Journal an operator's decision on result `seq`. Safe to call again after a timeout with
        the same `verdict_id`: the station stores it once.

        `part_id`/`epoch`: the part the operator saw (from its result). When omitted they are read
        from the station now, for a decision taken on what the station holds at this moment.
        `boxes`: the operator's corrected boxes in image pixels (`defect_wrong_box` needs them)."""
        if self.station is None:
            self.status()
        if part_id is None:
            found = self.replay(seq, seq)
            if not found or found[0].seq != seq:
                raise StationError(f"{self.control_endpoint}: no inspected part with seq {seq}")
            part_id, epoch = found[0].part_id, found[0].epoch
        verdict = OperatorVerdict(
            station=self.station,
            seq=seq,
            decision=decision,
            operator=operator,
            note=note,
            verdict_id=verdict_id or uuid.uuid4().hex,
            part_id=part_id,
            epoch=epoch if epoch is not None else (self.epoch or ""),
            boxes=list(boxes or []),
        )
        reply = self.request(VerdictRequest(verdict=verdict))
        if not isinstance(reply, Ack):
            raise StationError(f"verdict on seq {seq}: unexpected reply {reply.type!r}")
        return reply

    def replay_shadow(self, from_id: int, limit: int = 500) -> ShadowReplayReply:
        """Shadow results journaled from row id `from_id` on (one page; `more` says whether to ask again)."""
        reply = self.request(ShadowReplayRequest(from_id=from_id, limit=limit))
        if not isinstance(reply, ShadowReplayReply):
            raise StationError(f"shadow replay: unexpected reply {reply.type!r}")
        return reply

    def fetch_image(self, seq: int, kind: str = "image", epoch: str | None = None) -> tuple[bytes, str]:
        """A part's journaled image (or gate heat map) over the control socket: (bytes, media type).
        For dashboards on other machines; it comes in pages (the station keeps its replies small),
        and the station refuses files over its size limit."""
        data = b""
        while True:
            reply = self.request(ImageRequest(seq=seq, kind=kind, epoch=epoch or "", offset=len(data)))
            if not isinstance(reply, ImageReply):
                raise StationError(f"image of seq {seq}: unexpected reply {reply.type!r}")
            page = base64.b64decode(reply.data_b64)
            epoch = epoch or reply.epoch  # every page from the same journal
            if reply.offset != len(data) or (not page and len(data) < reply.size):
                raise StationError(f"image of seq {seq}: page at byte {reply.offset}, asked for {len(data)}")
            data += page
            if len(data) >= reply.size:
                return data, reply.media_type

    def request(self, message) -> Ack | ReplayReply | StationStatus | ErrorReply | ImageReply | ShadowReplayReply:
        """Send one control request; retry on a fresh socket after each timeout. Raises
        StationError for an error reply, StationUnreachable / StationAuthError when none comes."""
        payload = message.model_dump_json().encode()
        for _attempt in range(self.retries):
            dealer = self._control_socket()
            try:  # with no connected peer (a refused CURVE handshake) a send would wait for ever
                dealer.send_multipart([b"", payload])
            except zmq.Again:
                sent = False
            else:
                sent = True
            if sent and dealer.poll(int(self.timeout_s * 1000)):
                frames = dealer.recv_multipart()
                reply = parse_reply(frames[-1])
                if isinstance(reply, ErrorReply):
                    raise StationError(f"{self.control_endpoint}: {reply.error}")
                return reply
            auth_failed = self._auth_failed()
            self._reset_control()
            if auth_failed:
                raise StationAuthError(
                    f"{self.control_endpoint}: the station refused this client's CURVE key (or the "
                    "server public key is wrong); ask for a key listed in the station's clients/ folder"
                )
        raise StationUnreachable(
            f"{self.control_endpoint}: no reply to a {message.type} request in {self.retries} tries of "
            f"{self.timeout_s:g} s; is the station running and reachable?"
        )

    # ---- sockets --------------------------------------------------------------------------------

    def _secure(self, sock: zmq.Socket) -> None:
        if self.curve is not None:
            sock.curve_serverkey = self.curve.server_public
            sock.curve_publickey = self.curve.keys.public
            sock.curve_secretkey = self.curve.keys.secret

    def _control_socket(self) -> zmq.Socket:
        if self._dealer is None:
            dealer = self._ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
            self._secure(dealer)
            if self.curve is not None:
                self._monitor = dealer.get_monitor_socket(
                    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                )
            dealer.connect(self.control_endpoint)
            self._dealer = dealer
        return self._dealer

    def _auth_failed(self) -> bool:
        if self._monitor is None:
            return False
        from zmq.utils.monitor import recv_monitor_message

        failed = False
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            if not self._monitor.poll(10):
                continue
            event = recv_monitor_message(self._monitor)
            failed = failed or event["event"] != 0
        return failed

    def _reset_control(self) -> None:
        if self._dealer is not None:
            if self._monitor is not None:
                self._dealer.disable_monitor()
                self._monitor.close(0)
                self._monitor = None
            self._dealer.close(0)
            self._dealer = None
