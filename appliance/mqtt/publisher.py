"""The station on the plant's MQTT broker: every result and revision, its state, status and alarms.

Results are read from the journal by seq (`Journal.replay`, as bus subscribers catch up) and later
verdicts from its revision feed, never taken from the deciding loop: the loop only sets an event
(`wake`), and one background thread (`adfm-mqtt`) does all MQTT work, a bounded batch per turn. A
result leaves the backlog only when the broker acknowledged it (PUBACK, QoS 1); the acknowledged
position is kept in a cursor file, so a broker outage or a station restart resumes where the
broker stopped acknowledging and loses nothing (README "MQTT").

Topics, under `<site>/<area>/<line>/<station>`:
  result    every decision the line acted on (InspectionResult, revision 0), in seq order
  revision  later verdicts on a part (InspectionResult, revision ≥ 1), after their part's result
  state     retained StationState: online / offline (the broker's last will when the station vanishes)
  status    retained StationStatus, renewed every `status_interval_s`
  alarm     retained StationAlarms, whenever the set of standing alarms changes
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from adfm.schema import Alarm, StationAlarms, StationState

from ..config.mqtt import MqttSection, read_password
from ..journal.store import Journal, JournalError
from ..system.health import Health
from ..system.priority import lower_this_thread
from .cursor import CURSOR_NAME, Cursor, load_cursor, save_cursor

log = logging.getLogger(__name__)

QOS = 1
#: Health key of the broker link: not critical (a restart cannot bring the plant's broker back)
PROBLEM_KEY = "mqtt"
#: a connection without CONNACK this long is given up and tried again
CONNACK_TIMEOUT_S = 10.0
#: how often the standing alarms are compared with the last published set
ALARM_CHECK_S = 0.5
#: the idle wait between journal reads when nothing woke the publisher
IDLE_POLL_S = 0.25
#: the longest a stopping station keeps publishing its backlog before it says offline
DRAIN_S = 2.0
#: the wait before reading the journal again after it failed
JOURNAL_RETRY_S = 1.0
#: TCP connect and TLS handshake limit (a stopping station waits at most this for a connection attempt)
CONNECT_TIMEOUT_S = 3.0


class MqttPublisher:
    """Follows one station's journal onto an MQTT broker from its own thread."""

    def __init__(self, section: MqttSection, station: str, journal: Journal, health: Health,
                 cursor_path: Path | None = None) -> None:
        self.section = section
        self.station = station
        self.journal = journal
        self.health = health
        self.prefix = section.topic_prefix(station)
        self.topics = {name: f"{self.prefix}/{name}" for name in ("result", "revision", "state", "status", "alarm")}
        self.cursor_path = cursor_path or journal.root / CURSOR_NAME
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._online = False  # CONNACK accepted on the current client
        self._lost = ""  # why the current client is unusable (set by callbacks)
        self._last_why = ""  # the last reason logged, so a broker that stays down is logged once
        self._connect_started = 0.0
        self._retry_at = 0.0
        self._backoff = 0.5
        # mid → [kind, position, acked]: kind "seq" (a result), "rev" (a revision) or "" (state/status/alarm)
        self._pending: OrderedDict[int, list] = OrderedDict()
        self._cursor = Cursor(journal.epoch, 0, 0)
        self._saved = self._cursor
        self._next_seq = 1
        self._next_rev = 0
        self._alarm_keys: tuple[str, ...] | None = None
        self._next_alarm_check = 0.0
        self._next_status = 0.0
        self.stats = {"published": 0, "revisions": 0, "connects": 0, "connection_losses": 0}

    # ---- control (any thread) -------------------------------------------------------------------

    def start(self) -> None:
        """Load the cursor (first start: begin with the next part) and start the thread."""
        start = Cursor(self.journal.epoch, self.journal.last_seq(), self.journal.revision_feed_end())
        self._cursor = self._saved = load_cursor(self.cursor_path, self.journal.epoch, start)
        if self._cursor is start:
            save_cursor(self.cursor_path, start, self.section.broker, durable=True)
        log.info("mqtt: publishing to %s under %s from seq %d", self.section.broker, self.prefix,
                 self._cursor.acked_seq + 1)
        self._thread = threading.Thread(target=self._run, name="adfm-mqtt", daemon=True)
        self._thread.start()

    def wake(self, _result: object = None) -> None:
        """A result was journaled (the outputs' `recorded`): cheap, never blocks the caller."""
        self._wake.set()

    def stop(self, timeout_s: float = DRAIN_S + CONNECT_TIMEOUT_S + 2.0) -> None:
        """Publish what is left (for up to DRAIN_S), say offline, disconnect; the cursor keeps the rest."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("mqtt: the publisher thread did not stop within %.0f s", timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connected(self) -> bool:
        return self._online

    @property
    def acked_seq(self) -> int:
        return self._cursor.acked_seq

    def metrics(self) -> dict[str, float]:
        """For the Prometheus file: connected, the acknowledged seq, and results waiting for the broker."""
        try:
            backlog = max(0, self.journal.last_seq() - self._cursor.acked_seq)
        except JournalError:
            backlog = 0
        return {"adfm_mqtt_connected": float(self._online), "adfm_mqtt_acked_seq": float(self._cursor.acked_seq),
                "adfm_mqtt_backlog": float(backlog)}

    # ---- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        lower_this_thread()
        while not self._stop.is_set():
            try:
                self._turn()
            except JournalError as exc:  # a locked or full database: the broker link is fine, try again soon
                log.warning("mqtt: cannot read the journal: %s", exc)
                self._stop.wait(JOURNAL_RETRY_S)
            except Exception as exc:  # never let one bad turn end the publisher: drop and reconnect
                log.exception("mqtt: publisher turn failed")
                self._drop(f"{type(exc).__name__}: {exc}")
            self._save()
        try:
            self._finish()
        except Exception:
            log.exception("mqtt: stopping failed")
        finally:
            self._save(durable=True)
            self._close_client()

    def _turn(self) -> None:
        now = time.monotonic()
        if self._client is None:
            if now < self._retry_at:
                self._stop.wait(min(self._retry_at - now, IDLE_POLL_S))
                return
            self._connect()
            return
        rc = self._client.loop(timeout=0.02 if self._pending else 0.0)
        if rc != 0 and not self._lost:
            self._lost = f"connection lost ({getattr(rc, 'name', rc)})"
        if self._lost:
            self._drop(self._lost)
            return
        if not self._online:
            if now - self._connect_started > CONNACK_TIMEOUT_S:
                self._drop(f"no answer (CONNACK) within {CONNACK_TIMEOUT_S:g} s")
            else:
                self._stop.wait(0.02)
            return
        self._wake.clear()
        sent = self._send_results() + self._send_revisions()
        self._send_status_and_alarms(now)
        if not sent and not self._pending:
            self._wake.wait(IDLE_POLL_S)

    # ---- connection -----------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        s = self.section
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id or f"adfm-{self.station}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.max_inflight_messages_set(s.max_inflight + 8)  # + state, status and alarm messages
        client.connect_timeout = CONNECT_TIMEOUT_S
        if s.username is not None:
            password = read_password(s.password_file) if s.password_file is not None else None
            client.username_pw_set(s.username, password)
        if s.tls is not None:
            client.tls_set(ca_certs=str(s.tls.ca), certfile=str(s.tls.cert) if s.tls.cert else None,
                           keyfile=str(s.tls.key) if s.tls.key else None)
        will = self._state("offline", "connection lost: the broker's last will for this station")
        client.will_set(self.topics["state"], will.model_dump_json(), qos=QOS, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _connect(self) -> None:
        self._online, self._lost = False, ""
        self._connect_started = time.monotonic()
        try:
            self._client = self._new_client()
            self._client.connect(self.section.host, self.section.broker_port, keepalive=self.section.keepalive_s)
        except Exception as exc:  # refused, unreachable, TLS, an unreadable password file: wait and try again
            self._drop(f"{type(exc).__name__}: {exc}")

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if reason_code.is_failure:
            self._lost = f"the broker refused the connection: {reason_code}"
            return
        self._online = True
        self._backoff = 0.5
        self._last_why = ""
        self.stats["connects"] += 1
        self.health.clear(PROBLEM_KEY)
        self._pending.clear()
        self._next_seq = self._cursor.acked_seq + 1
        self._next_rev = self._cursor.acked_revision
        self._alarm_keys = None
        self._next_status = 0.0
        self._publish(self.topics["state"], self._state("online").model_dump_json(), retain=True)
        log.info("mqtt: connected to %s; publishing from seq %d", self.section.broker, self._next_seq)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        self._lost = self._lost or f"connection lost ({reason_code})"

    def _drop(self, why: str) -> None:
        """Give up the current client: unacknowledged messages go again from the cursor after reconnecting."""
        if self._online:
            self.stats["connection_losses"] += 1
        if why != self._last_why:
            log.warning("mqtt: %s: %s", self.section.broker, why)
            self._last_why = why
        self._close_client()
        self._online = False
        self._pending.clear()
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.section.reconnect_max_s)
        self.health.problem(PROBLEM_KEY, f"MQTT broker {self.section.broker}: {why}; results wait in the journal "
                                         f"from seq {self._cursor.acked_seq + 1}")

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
                client.loop(timeout=0.0)
            except Exception:
                pass
            try:
                sock = client.socket()
                if sock is not None:
                    sock.close()
            except Exception:
                pass

    # ---- publishing -----------------------------------------------------------------------------

    def _publish(self, topic: str, payload: str, retain: bool = False, kind: str = "", position: int = 0) -> None:
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc != 0:
            raise ConnectionError(f"publish refused by the client library (rc {info.rc})")
        self._pending[info.mid] = [kind, position, False]

    def _room(self) -> int:
        return min(self.section.batch, self.section.max_inflight - len(self._pending))

    def _send_results(self) -> int:
        room = self._room()
        if room <= 0:
            return 0
        results, _last, _more = self.journal.replay(self._next_seq, limit=room)
        sent = 0
        for result in results:
            if result.revision:  # replay adds a part's revisions: those come from the revision feed
                continue
            self._publish(self.topics["result"], result.model_dump_json(), kind="seq", position=result.seq)
            self._next_seq = result.seq + 1
            sent += 1
        self.stats["published"] += sent
        return sent

    def _send_revisions(self) -> int:
        room = self._room()
        if room <= 0:
            return 0
        sent = 0
        for position, revision in self.journal.revision_feed(self._next_rev, limit=room):
            if revision.seq >= self._next_seq:  # its part's result is not out yet: after it
                break
            self._publish(self.topics["revision"], revision.model_dump_json(), kind="rev", position=position)
            self._next_rev = position
            sent += 1
        self.stats["revisions"] += sent
        return sent

    def _send_status_and_alarms(self, now: float) -> None:
        if now >= self._next_status:
            self._next_status = now + self.section.status_interval_s
            status = self.health.snapshot().model_copy(update={"epoch": self.journal.epoch})
            self._publish(self.topics["status"], status.model_dump_json(), retain=True)
        if now >= self._next_alarm_check:
            self._next_alarm_check = now + ALARM_CHECK_S
            alarms = self.health.alarms()
            if tuple(alarms) != self._alarm_keys:
                self._alarm_keys = tuple(alarms)
                message = StationAlarms(station=self.station, active=[Alarm(key=k, text=t) for k, t in alarms.items()],
                                        epoch=self.journal.epoch, last_seq=self._safe_last_seq())
                self._publish(self.topics["alarm"], message.model_dump_json(), retain=True)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        """PUBACK: the broker has the message. The cursor moves over every message acknowledged in order."""
        entry = self._pending.get(mid)
        if entry is None:
            return
        entry[2] = True
        acked_seq, acked_rev = self._cursor.acked_seq, self._cursor.acked_revision
        while self._pending:
            first_mid, (kind, position, acked) = next(iter(self._pending.items()))
            if not acked:
                break
            del self._pending[first_mid]
            if kind == "seq":
                acked_seq = position
            elif kind == "rev":
                acked_rev = position
        self._cursor = Cursor(self._cursor.epoch, acked_seq, acked_rev)

    def _save(self, durable: bool = False) -> None:
        if self._cursor != self._saved or durable:
            try:
                save_cursor(self.cursor_path, self._cursor, self.section.broker, durable=durable)
                self._saved = self._cursor
            except OSError as exc:
                log.warning("mqtt: cannot write %s: %s", self.cursor_path, exc)

    # ---- stopping -------------------------------------------------------------------------------

    def _finish(self) -> None:
        """Drain the backlog for up to DRAIN_S, then publish `offline` and disconnect cleanly."""
        if not self._online or self._client is None:
            return
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and not self._lost:
            sent = self._send_results() + self._send_revisions()
            self._client.loop(timeout=0.02)
            if not sent and not self._pending:
                break
        self._save()
        if self._lost:
            return
        self._publish(self.topics["state"], self._state("offline", "the station stopped").model_dump_json(),
                      retain=True)
        deadline = time.monotonic() + 1.0
        while self._pending and time.monotonic() < deadline and not self._lost:
            self._client.loop(timeout=0.02)

    # ---- messages -------------------------------------------------------------------------------

    def _state(self, state: str, reason: str = "") -> StationState:
        return StationState(station=self.station, state=state, reason=reason, epoch=self.journal.epoch,  # type: ignore[arg-type]
                            last_seq=self._safe_last_seq(), at=datetime.now(UTC))

    def _safe_last_seq(self) -> int:
        try:
            return self.journal.last_seq()
        except JournalError:
            return 0
