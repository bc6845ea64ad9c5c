"""The result bus: a PUB socket for results and status, a ROUTER socket for control requests.

One thread (the bus thread) owns every external socket, so control requests (replay, status,
operator verdicts) are answered while the main loop waits on the model. The main loop hands
results to it through an in-process PUSH/PULL pair.

Wire format (see BUS.md): PUB multipart `[topic, seq, json]` with topics `result.<station>`,
`status.<station>` and `verdict.<station>`; control requests and replies are single JSON frames
after the DEALER/REQ envelope. CURVE encryption and authentication cover both sockets whenever
keys are configured; an open (non-CURVE) endpoint off loopback is refused unless `insecure`.

Nothing a client sends can make the bus thread work without bound: request frames over
MAX_REQUEST_BYTES are dropped by ZeroMQ itself (MAXMSGSIZE), every field has a length limit, and
replies are bounded (replays are paged by bytes, images capped at MAX_IMAGE_BYTES). With CURVE, a
verdict is attributed to the key that sent it, never to the name the client claims alone.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
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
    RecipeRequest,
    ReplayReply,
    ReplayRequest,
    StationStatus,
    StatusRequest,
    VerdictRequest,
    parse_request,
    result_topic,
    status_topic,
    verdict_topic,
)

if TYPE_CHECKING:
    from ..journal.store import Journal
    from .keys import ServerCurve

log = logging.getLogger(__name__)

_INPROC = "inproc://adfm-bus-publish-{}"
#: the largest image file sent over the control socket (journal PNGs of line cameras are far smaller)
MAX_IMAGE_BYTES = 16 * 1024 * 1024
_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
#: the identity recorded for verdicts that came without CURVE (only possible on local endpoints)
LOCAL_CLIENT = "local"


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
    ) -> None:
        for ep in [*publish, *control]:
            why = check_endpoint_security(ep, curve is not None, insecure)
            if why:
                raise BusError(why)
        self.station = station
        self.journal = journal
        self.status_provider = status_provider
        self.on_recipe = on_recipe  # product changeover command (stations with recipes)
        self.publish_endpoints = list(publish)
        self.control_endpoints = list(control)
        self.curve = curve
        self.status_interval_s = status_interval_s
        self.send_hwm = send_hwm
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
        self._topics = (result_topic(station), status_topic(station), verdict_topic(station))

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

    # ---- bus thread -----------------------------------------------------------------------------

    def _server_socket(self, kind: int, endpoints: list[str], name: str) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 500)
        if kind == zmq.PUB:
            sock.setsockopt(zmq.SNDHWM, self.send_hwm)
        if kind == zmq.ROUTER:  # a peer sending a bigger message is disconnected by ZeroMQ
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
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
                if pull in events:
                    while True:
                        try:
                            frames = pull.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        pub.send_multipart(frames)
                        self.stats.published += 1
                if router in events:
                    self._serve_control(router, pub)
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

    def _serve_control(self, router: zmq.Socket, pub: zmq.Socket) -> None:
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.stats.requests += 1
            envelope, last = [f.bytes for f in frames[:-1]], frames[-1]
            client = LOCAL_CLIENT
            if self.curve is not None:
                client = self.curve.client_name(last.get("User-Id")) or ""
            reply = self._answer(last.bytes, pub, client)
            router.send_multipart([*envelope, reply.model_dump_json().encode()])

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
                if self.on_recipe is None:
                    return ErrorReply(error=f"station {self.station!r} has no recipes")
                self.on_recipe(request.recipe)
                return Ack(detail=f"recipe {request.recipe} selected for the next parts")
        except Exception as exc:  # a request must never take the bus down
            log.warning("control request failed: %s", exc)
            return ErrorReply(error=str(exc))
        return ErrorReply(error=f"unsupported request type {request.type!r}")

    def _verdict(self, request: VerdictRequest, pub: zmq.Socket, client: str) -> Ack | ErrorReply:
        v = request.verdict
        if not client:
            return ErrorReply(error="verdict refused: this client's key is not in the station's registry")
        if not v.part_id:
            return ErrorReply(error=f"bad request: verdict.part_id: required (the part judged as seq {v.seq})")
        if self.curve is not None:
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
        """A part's image file, base64, when it is still kept and not larger than MAX_IMAGE_BYTES."""
        epoch = self.journal.epoch
        if request.epoch and request.epoch != epoch:
            return ErrorReply(error=f"image of seq {request.seq}: journal epoch {request.epoch!r} is gone "
                                    f"(the station now keeps epoch {epoch!r})")
        result = self.journal.get(request.seq)
        if result is None:
            return ErrorReply(error=f"image of seq {request.seq}: no inspected part with that seq")
        rel = result.image_path if request.kind == "image" else result.gate_map_path
        if not rel:
            return ErrorReply(error=f"{request.kind} of seq {request.seq}: not kept (pruned, or none made)")
        path = self.journal.image_file(rel)
        try:
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                return ErrorReply(error=f"{request.kind} of seq {request.seq}: {size} bytes, over the "
                                        f"{MAX_IMAGE_BYTES}-byte limit of the control socket")
            data = path.read_bytes()
        except OSError as exc:
            return ErrorReply(error=f"{request.kind} of seq {request.seq}: cannot read it: {exc.strerror or exc}")
        media = _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return ImageReply(seq=request.seq, kind=request.kind, epoch=epoch, media_type=media,
                          data_b64=base64.b64encode(data).decode("ascii"))
