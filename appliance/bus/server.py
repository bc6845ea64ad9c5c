"""The result bus: a PUB socket for results and status, a ROUTER socket for control requests.

One thread (the bus thread) owns every external socket, so control requests (replay, status,
operator verdicts) are answered while the main loop waits on the model. The main loop hands
results to it through an in-process PUSH/PULL pair.

Wire format (see BUS.md): PUB multipart `[topic, seq, json]` with topics `result.<station>`,
`status.<station>` and `verdict.<station>`; control requests and replies are single JSON frames
after the DEALER/REQ envelope. CURVE encryption and authentication cover both sockets whenever
keys are configured; an open (non-CURVE) endpoint off loopback is refused unless `insecure`.

Nothing a client sends can make the bus thread work, or the station's memory grow, without bound:
request frames over MAX_REQUEST_BYTES are dropped by ZeroMQ itself (MAXMSGSIZE), every field has a
length limit, replies are small pages (replays by bytes, images in IMAGE_PAGE_BYTES pages), and the
ROUTER keeps at most `control_hwm` replies per client: a reply to a client that does not read its
replies is dropped (ROUTER_MANDATORY), never queued. The loop serves the publish queue before every
control request and at most CONTROL_BATCH requests in a row, so a flood of control traffic cannot
delay results.

Authority: reading (replay, status, images) is open to every admitted client; what changes the
record or the line needs a role (keys.py): `verdict` for operator verdicts, `recipe` for a
changeover, `model` for model commands (promote, rollback, shadow). With CURVE a key's roles
come from its `clients/NAME.roles`; clients without CURVE (loopback or ipc only) get
`bus.plain_roles` (default: verdict). Every command is journaled, accepted or refused, with the
key and operator, and published on `command.<station>`. A verdict is
attributed to the key that sent it, never to the name the client claims alone, and stamped with the
station's clock.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
from pydantic import ValidationError

from adfm.schema import (
    MAX_REQUEST_BYTES,
    Ack,
    ErrorReply,
    ImageReply,
    ImageRequest,
    InspectionResult,
    ModelRequest,
    RecipeRequest,
    ReplayReply,
    ReplayRequest,
    ShadowEntry,
    ShadowReplayReply,
    ShadowReplayRequest,
    StationStatus,
    StatusRequest,
    VerdictRequest,
    parse_request,
    result_topic,
    shadow_topic,
    status_topic,
    utcnow,
    verdict_topic,
)

if TYPE_CHECKING:
    from ..journal.store import Journal
    from .keys import ServerCurve

log = logging.getLogger(__name__)

_INPROC = "inproc://adfm-bus-publish-{}"
#: the largest image file sent over the control socket (journal PNGs of line cameras are far smaller)
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: one image reply carries at most this many bytes of the file (the client asks for the next page)
IMAGE_PAGE_BYTES = 512 * 1024
#: control requests served in a row before the publish queue is looked at again
CONTROL_BATCH = 4
#: requests buffered per client before ZeroMQ stops reading its connection
CONTROL_RCVHWM = 64
#: requests per second one connection may have answered (a burst of CONTROL_BURST first); more are
#: dropped unanswered before any work, so a flooding client cannot take the CPU the line needs
CONTROL_RATE = 100.0
CONTROL_BURST = 200.0
_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
#: the identity recorded for verdicts that came without CURVE (only possible on local endpoints)
LOCAL_CLIENT = "local"
#: the role each request that changes something needs (requests not listed only read)
ROLE_OF = {"verdict": "verdict", "recipe": "recipe", "model": "model"}


def command_topic(station: str) -> bytes:
    """Topic on which the station announces every command it was sent, accepted or refused."""
    return f"command.{station}".encode()


class BusError(RuntimeError):
    """The bus cannot start (bad or busy endpoint, insecure bind); the message names the endpoint."""


def is_local_endpoint(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: loopback TCP, ipc:// and inproc://."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or ";" in rest:
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: reachable from outside


def check_endpoint_security(endpoint: str, curve: bool, insecure: bool) -> str | None:
    """Why an endpoint must not be bound as configured, or None when it may."""
    if "://" not in endpoint:
        return f"{endpoint!r} is not a ZeroMQ endpoint (tcp://host:port, ipc://path)"
    if curve or insecure or is_local_endpoint(endpoint):
        return None
    return (
        f"{endpoint} is reachable from other machines but the bus has no CURVE keys; configure "
        "bus.curve (create keys with `adfm-appliance keys`) or set bus.insecure: true"
    )


@dataclass
class BusStats:
    published: int = 0
    requests: int = 0
    bad_requests: int = 0
    verdicts: int = 0
    commands_refused: int = 0
    replies_dropped: int = 0
    requests_throttled: int = 0
    bound: dict[str, list[str]] = field(default_factory=dict)


class ResultBus:
    """Serve one station's results. `start()` binds (raising BusError on failure), `stop()` closes.

    `status_provider` is called from the bus thread for status replies and the periodic status
    publication; it must be thread-safe and cheap.
    """

    def __init__(
        self,
        station: str,
        journal: Journal,
        status_provider: Callable[[], StationStatus],
        *,
        publish: list[str],
        control: list[str],
        curve: ServerCurve | None = None,
        insecure: bool = False,
        status_interval_s: float = 5.0,
        send_hwm: int = 10_000,
        context: zmq.Context | None = None,
        on_recipe: Callable[[str], None] | None = None,
        io_threads: int = 2,
        plain_roles: tuple[str, ...] | list[str] = ("verdict",),
        control_hwm: int = 4,
    ) -> None:
        for ep in [*publish, *control]:
            why = check_endpoint_security(ep, curve is not None, insecure)
            if why:
                raise BusError(why)
        self.station = station
        self.journal = journal
        self.status_provider = status_provider
        self.on_recipe = on_recipe  # product changeover command (stations with recipes)
        #: model commands (appliance/models/control.py): returns what was done, raises ValueError to refuse
        self.on_model: Callable[[ModelRequest], str] | None = None
        self.publish_endpoints = list(publish)
        self.control_endpoints = list(control)
        self.curve = curve
        self.status_interval_s = status_interval_s
        self.send_hwm = send_hwm
        self.plain_roles = frozenset(plain_roles)
        self.control_hwm = control_hwm
        self.io_threads = io_threads
        self.stats = BusStats()
        # Its own context unless given one: ZeroMQ's I/O threads do the CURVE encryption, once per
        # subscriber for every message, so one thread caps a bus with many subscribers (a burst then
        # overflows the send high-water mark and every subscriber replays it; bench/bus_throughput.py);
        # and a stopped bus releases its endpoints (the ZAP handler's inproc one too) with its context.
        self._own_context = context is None
        self._ctx = context or zmq.Context(io_threads=io_threads)
        self._inproc = _INPROC.format(id(self))
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._push: zmq.Socket | None = None
        self._auth = None
        self._buckets: dict[bytes, tuple[float, float]] = {}  # routing id -> (tokens, when)
        self._topics = (result_topic(station), status_topic(station), verdict_topic(station),
                        command_topic(station))

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        if self.curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("adfm.appliance.bus.server.auth"))
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(self.curve.authorized_clients))
        self._thread = threading.Thread(target=self._run, name="adfm-bus", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise BusError(f"the bus thread did not start within {timeout_s} s")
        if self._error is not None:
            self.stop()
            raise BusError(str(self._error)) from self._error
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 1000)
        self._push.connect(self._inproc)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush what was handed over, then close every socket."""
        if self._push is not None:
            self._push.close(linger=1000)
            self._push = None
        self._stop.set()
        stuck = False
        if self._thread is not None:
            self._thread.join(timeout_s)
            stuck = self._thread.is_alive()
            self._thread = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context and not self._ctx.closed:
            if stuck:  # its sockets are still in use: leave the context to the process's exit
                log.warning("the result bus thread did not stop within %g s", timeout_s)
            else:
                self._ctx.destroy(linger=0)  # the bus thread closed its sockets with their own linger

    @property
    def alive(self) -> bool:
        """Whether the bus thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def bound(self) -> dict[str, list[str]]:
        """Endpoints actually bound (wildcard ports resolved), by socket: 'publish', 'control'."""
        return self.stats.bound

    # ---- main-thread API ------------------------------------------------------------------------

    def publish(self, result: InspectionResult) -> None:
        """Hand a journaled result to the bus thread for publication."""
        if self._push is None:
            raise BusError("the bus is not started")
        self._push.send_multipart([self._topics[0], str(result.seq).encode(), result.model_dump_json().encode()])

    def shadow_publisher(self) -> Callable[[int, InspectionResult], None]:
        """A sender of shadow results for ONE other thread: its own PUSH socket into the bus thread,
        made on its first call (ZeroMQ sockets are never shared between threads)."""
        sock: list[zmq.Socket] = []
        topic = shadow_topic(self.station)

        def send(row_id: int, result: InspectionResult) -> None:
            if not sock:
                s = self._ctx.socket(zmq.PUSH)
                s.setsockopt(zmq.LINGER, 1000)
                s.connect(self._inproc)
                sock.append(s)
            sock[0].send_multipart([topic, str(row_id).encode(), result.model_dump_json().encode()])

        return send

    # ---- bus thread -----------------------------------------------------------------------------

    def _server_socket(self, kind: int, endpoints: list[str], name: str) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 500)
        if kind == zmq.PUB:
            sock.setsockopt(zmq.SNDHWM, self.send_hwm)
        if kind == zmq.ROUTER:  # a peer sending a bigger message is disconnected by ZeroMQ
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            # A few replies per client at most; one more to a client that reads none is refused
            # (EAGAIN) instead of queued, so an unread client cannot grow the station's memory.
            sock.setsockopt(zmq.SNDHWM, self.control_hwm)
            sock.setsockopt(zmq.RCVHWM, CONTROL_RCVHWM)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self.curve is not None:
            sock.curve_secretkey = self.curve.keys.secret
            sock.curve_publickey = self.curve.keys.public
            sock.curve_server = True
        bound = []
        for ep in endpoints:
            try:
                sock.bind(ep)
            except zmq.ZMQError as exc:
                sock.close(0)
                raise BusError(f"bus.{name}: cannot bind {ep}: {exc}") from exc
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.stats.bound[name] = bound
        return sock

    def _run(self) -> None:
        sockets: list[zmq.Socket] = []
        try:
            pub = self._server_socket(zmq.PUB, self.publish_endpoints, "publish")
            sockets.append(pub)
            router = self._server_socket(zmq.ROUTER, self.control_endpoints, "control")
            sockets.append(router)
            pull = self._ctx.socket(zmq.PULL)
            sockets.append(pull)
            pull.bind(self._inproc)
        except BaseException as exc:
            self._error = exc
            for s in sockets:
                s.close(0)
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(router, zmq.POLLIN)
        next_status = time.monotonic()
        try:
            while True:
                stopping = self._stop.is_set()
                events = dict(poller.poll(0 if stopping else 100))
                self._forward(pull, pub)  # results first, whatever else is waiting
                if router in events:
                    self._serve_control(router, pub, pull)
                if stopping and not events:
                    break
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.status_interval_s
                    self._publish_status(pub)
        except Exception:
            log.exception("the result bus thread failed")
        finally:
            for s in sockets:
                s.close()

    def _forward(self, pull: zmq.Socket, pub: zmq.Socket) -> None:
        """Publish every result handed over so far."""
        while True:
            try:
                frames = pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            pub.send_multipart(frames)
            self.stats.published += 1

    def _status(self) -> StationStatus:
        """The provider's status, stamped with the journal's epoch."""
        status = self.status_provider()
        if not status.epoch:
            status = status.model_copy(update={"epoch": self.journal.epoch})
        return status

    def _publish_status(self, pub: zmq.Socket) -> None:
        try:
            status = self._status()
        except Exception:
            log.exception("status provider failed")
            return
        pub.send_multipart([self._topics[1], str(status.last_seq).encode(), status.model_dump_json().encode()])

    def _serve_control(self, router: zmq.Socket, pub: zmq.Socket, pull: zmq.Socket) -> None:
        """At most CONTROL_BATCH requests, with the publish queue served before each one."""
        for _ in range(CONTROL_BATCH):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.stats.requests += 1
            envelope, last = [f.bytes for f in frames[:-1]], frames[-1]
            if not self._allowed(envelope[0] if envelope else b""):
                self.stats.requests_throttled += 1
                continue
            client = LOCAL_CLIENT
            if self.curve is not None:
                client = self.curve.client_name(last.get("User-Id")) or ""
            reply = self._answer(last.bytes, pub, client)
            try:
                router.send_multipart([*envelope, reply.model_dump_json().encode()], zmq.NOBLOCK)
            except zmq.Again:  # this client has control_hwm replies unread: it gets no more
                self._dropped(client)
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:  # the client is gone: nothing to answer
                    raise
                self._dropped(client)
            self._forward(pull, pub)

    def _allowed(self, peer: bytes) -> bool:
        """A token bucket per connection: CONTROL_RATE requests/s after a CONTROL_BURST."""
        now = time.monotonic()
        tokens, then = self._buckets.get(peer, (CONTROL_BURST, now))
        tokens = min(CONTROL_BURST, tokens + (now - then) * CONTROL_RATE)
        if len(self._buckets) > 10_000:  # connections come and go: forget the idle ones
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        self._buckets[peer] = (tokens - 1, now) if tokens >= 1 else (tokens, now)
        return tokens >= 1

    def _dropped(self, client: str) -> None:
        self.stats.replies_dropped += 1
        if self.stats.replies_dropped in (1, 10, 100) or self.stats.replies_dropped % 1000 == 0:
            log.warning("control replies dropped: %d so far (last for client %r, which does not read its "
                        "replies)", self.stats.replies_dropped, client)

    def _answer(self, payload: bytes, pub: zmq.Socket, client: str = LOCAL_CLIENT):
        if len(payload) > MAX_REQUEST_BYTES:
            self.stats.bad_requests += 1
            return ErrorReply(error=f"bad request: {len(payload)} bytes, more than {MAX_REQUEST_BYTES}")
        try:
            request = parse_request(payload)
        except ValidationError as exc:
            self.stats.bad_requests += 1
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
            )
            return ErrorReply(error=f"bad request: {problems}")
        try:
            if isinstance(request, ReplayRequest):
                results, last, more = self.journal.replay(request.from_seq, request.to_seq, request.limit)
                return ReplayReply(results=results, last_seq=last, more=more, epoch=self.journal.epoch)
            if isinstance(request, StatusRequest):
                return self._status()
            if isinstance(request, VerdictRequest):
                return self._verdict(request, pub, client)
            if isinstance(request, ImageRequest):
                return self._image(request)
            if isinstance(request, RecipeRequest):
                return self._recipe(request, pub, client)
            if isinstance(request, ModelRequest):
                return self._model(request, pub, client)
            if isinstance(request, ShadowReplayRequest):
                entries, last, more = self.journal.shadow_replay(request.from_id, request.limit)
                return ShadowReplayReply(entries=[ShadowEntry(row_id=i, result=r) for i, r in entries], last_id=last,
                                         more=more, epoch=self.journal.epoch)
        except Exception as exc:  # a request must never take the bus down
            log.warning("control request failed: %s", exc)
            return ErrorReply(error=str(exc))
        return ErrorReply(error=f"unsupported request type {request.type!r}")

    def _may(self, client: str, role: str) -> str | None:
        """Why `client` may not do what `role` covers (None when it may)."""
        if self.curve is not None:
            return self.curve.check_role(client, role) if client else "this client's key is not admitted"
        if role in self.plain_roles:
            return None
        return (f"a client without a CURVE key may not send {role} commands (bus.plain_roles: "
                f"{', '.join(sorted(self.plain_roles)) or 'none'}); use a key with the {role!r} role")

    def _authorize(self, client: str, role: str, operator: str | None) -> str | None:
        """Why a command needing `role` is refused for this key and operator (None: allowed)."""
        why = self._may(client, role)
        if why is None and operator:
            from .keys import operator_problem

            why = operator_problem(operator)
            if why is None and self.curve is not None:
                why = self.curve.check_operator(client, operator)
        return why

    def _recipe(self, request: RecipeRequest, pub: zmq.Socket, client: str) -> Ack | ErrorReply:
        """A changeover: refused without the `recipe` role or a valid operator; journaled either way."""
        why = self._authorize(client, "recipe", request.operator)
        if why is None and self.on_recipe is None:
            why = f"station {self.station!r} has no recipes"
        if why is None:
            try:
                self.on_recipe(request.recipe)  # type: ignore[misc]
            except ValueError as exc:
                why = str(exc)
        accepted = why is None
        detail = f"recipe {request.recipe} selected for the next parts" if accepted else f"refused: {why}"
        record = self.journal.record_command("recipe", request.recipe, client=client, operator=request.operator,
                                             accepted=accepted, detail=detail)
        pub.send_multipart([self._topics[3], str(record["id"]).encode(), json.dumps(record).encode()])
        log.warning("recipe %r %s by key %r (operator %r)%s", request.recipe,
                    "selected" if accepted else "refused", client, request.operator,
                    "" if accepted else f": {why}")
        if not accepted:
            self.stats.commands_refused += 1
            return ErrorReply(error=f"recipe {request.recipe!r} {detail}")
        return Ack(detail=f"{detail} (key {client!r})")

    def _model(self, request: ModelRequest, pub: zmq.Socket, client: str) -> Ack | ErrorReply:
        """A model command: refused without the `model` role or a valid operator; journaled either way."""
        why = self._authorize(client, "model", request.operator)
        if why is None and self.on_model is None:
            why = f"station {self.station!r} takes no model commands"
        detail = ""
        if why is None:
            try:
                detail = self.on_model(request)  # type: ignore[misc]
            except ValueError as exc:
                why = str(exc)
        accepted = why is None
        what = f"{request.action} {request.model_id}".strip()
        detail = detail if accepted else f"refused: {why}"
        record = self.journal.record_command("model", what, client=client, operator=request.operator,
                                             accepted=accepted, detail=detail)
        pub.send_multipart([self._topics[3], str(record["id"]).encode(), json.dumps(record).encode()])
        log.warning("model command %r %s by key %r (operator %r): %s", what, "done" if accepted else "refused",
                    client, request.operator, detail)
        if not accepted:
            self.stats.commands_refused += 1
            return ErrorReply(error=f"model {what}: {detail}")
        return Ack(detail=f"{detail} (key {client!r})")

    def _verdict(self, request: VerdictRequest, pub: zmq.Socket, client: str) -> Ack | ErrorReply:
        from .keys import operator_problem

        # The station's clock, not the client's: `at` is when the verdict reached the journal.
        v = request.verdict.model_copy(update={"at": utcnow()})
        if not client:
            return ErrorReply(error="verdict refused: this client's key is not in the station's registry")
        if not v.part_id:
            return ErrorReply(error=f"bad request: verdict.part_id: required (the part judged as seq {v.seq})")
        why = self._may(client, "verdict") or operator_problem(v.operator)
        if why is None and self.curve is not None:
            why = self.curve.check_operator(client, v.operator)
        if why:
            log.warning("verdict %s refused: %s", v.verdict_id, why)
            return ErrorReply(error=f"verdict refused: {why}")
        outcome = self.journal.add_verdict(v, client=client)
        if outcome.stored:
            self.stats.verdicts += 1
            v = v.model_copy(update={"client": client, "epoch": self.journal.epoch})
            pub.send_multipart([self._topics[2], str(v.seq).encode(), v.model_dump_json().encode()])
            return Ack(detail=f"verdict {v.verdict_id} on seq {v.seq} journaled (key {client!r})")
        return Ack(detail=f"verdict {v.verdict_id} was already journaled")

    def _image(self, request: ImageRequest) -> ImageReply | ErrorReply:
        """One page of a part's image file, base64: only a regular file inside the journal's image
        folder, reached without a symlink, and not larger than MAX_IMAGE_BYTES."""
        epoch = self.journal.epoch
        what = f"{request.kind} of seq {request.seq}"
        if request.epoch and request.epoch != epoch:
            return ErrorReply(error=f"image of seq {request.seq}: journal epoch {request.epoch!r} is gone "
                                    f"(the station now keeps epoch {epoch!r})")
        result = self.journal.get(request.seq)
        if result is None:
            return ErrorReply(error=f"image of seq {request.seq}: no inspected part with that seq")
        rel = result.image_path if request.kind == "image" else result.gate_map_path
        if not rel:
            return ErrorReply(error=f"{what}: not kept (pruned, or none made)")
        try:
            data, size, suffix = read_journal_file(self.journal.root, rel, request.offset, IMAGE_PAGE_BYTES)
        except JournalFileError as exc:
            log.warning("%s refused: %s", what, exc)
            return ErrorReply(error=f"{what}: {exc}")
        media = _MEDIA_TYPES.get(suffix, "application/octet-stream")
        return ImageReply(seq=request.seq, kind=request.kind, epoch=epoch, media_type=media, offset=request.offset,
                          size=size, data_b64=base64.b64encode(data).decode("ascii"))


class JournalFileError(RuntimeError):
    """A journal file the control socket will not serve; the message says why."""


def read_journal_file(root: Path, rel: str, offset: int, length: int) -> tuple[bytes, int, str]:
    """Up to `length` bytes from `offset` of the file `rel` under `root/images`: (bytes, file size,
    suffix). Only a regular file is served, reached without following any symlink below `root`."""
    from ..journal.store import IMAGES_DIR

    parts = Path(rel).parts
    if len(parts) < 2 or parts[0] != IMAGES_DIR or any(p in ("..", ".", "") for p in parts) or Path(rel).is_absolute():
        raise JournalFileError(f"{rel!r} is not a file of the journal's image folder")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    dir_flags = flags | getattr(os, "O_DIRECTORY", 0)
    fds: list[int] = []
    try:
        fds.append(os.open(root, dir_flags))
        for name in parts[:-1]:  # each folder opened relative to the last one, no symlink followed
            fds.append(os.open(name, dir_flags, dir_fd=fds[-1]))
        fd = os.open(parts[-1], flags, dir_fd=fds[-1])
        fds.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JournalFileError("not a regular file")
        if st.st_size > MAX_IMAGE_BYTES:
            raise JournalFileError(f"{st.st_size} bytes, over the {MAX_IMAGE_BYTES}-byte limit of the control socket")
        if offset > st.st_size:
            raise JournalFileError(f"offset {offset} is past the end ({st.st_size} bytes)")
        return os.pread(fd, min(length, st.st_size - offset), offset), st.st_size, Path(rel).suffix.lower()
    except OSError as exc:
        if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
            raise JournalFileError("refused: a symlink in its path (the station serves only its own files)") from exc
        raise JournalFileError(f"cannot read it: {exc.strerror or exc}") from exc
    finally:
        for f in fds:
            os.close(f)
