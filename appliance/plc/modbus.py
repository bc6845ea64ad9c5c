"""The PLC link over Modbus/TCP (pymodbus client, the `plc` extra): trigger in, results and the
reject pulse out.

One thread owns the connection (pymodbus's sync client is not thread-safe). Every `poll_ms`:
- read the trigger input; a rising edge is one part: read the part id, recipe and encoder
  registers that are configured and hand a LineTrigger to the line;
- write each decision, in order, as one block: seq (low, high word), decision code, source code
  (a PLC that scans slower than parts are decided sees the newest; the seq tells it what it missed);
- every `heartbeat_ms`, increment the heartbeat register — only while the line's deciding loop is
  alive (`alive()`), so a PLC watching the heartbeat sees the station that decides, not the link;
- fire the reject coil for each rejected part when it reaches the ejector (`delay_ms` after its
  trigger, or `distance_counts` encoder counts after it), high for `pulse_ms`. Parts in flight
  between camera and ejector are kept in order (a shift register); a part due while the coil is
  still high gets its own pulse right after. Never late: a part whose ejector window
  (`window_ms` / `window_counts` past its due point) has passed is not pulsed — the pulse would hit
  whatever part is there now. It is a missed ejection: counted, alarmed, and reported to the line
  (`on_missed`), which journals and publishes it.
A failed request drops the connection; the link raises a `plc` problem in health (so the status
on the bus carries the alarm) and reconnects with exponential backoff. Decisions made meanwhile
are still journaled; when the link is back the unwritten results are written (the newest 64), and pulses that fell due
while it was down are reported as missed ejections (their parts went by).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from adfm.camera.backoff import Backoff

from ..config.line import DECISION_CODES, SOURCE_CODES, ModbusSection
from ..modes.line import LineTrigger
from ..system.health import Health

log = logging.getLogger(__name__)

U32 = 1 << 32
#: Decisions kept for writing while the link is down; beyond this only the newest are written.
MAX_UNWRITTEN_RESULTS = 64
#: How long the "rejected parts passed the ejector" alarm stays up after the last such part.
EJECTOR_ALARM_S = 300.0


#: A trigger counter that jumps further than this between two polls was reset, not advanced.
MAX_COUNTER_STEP = 64


def new_parts(table: str, last: int, now: int) -> int:
    """Parts presented between two reads of the trigger: a rising edge of a coil or discrete input
    is one; a counter register's advance (modulo 2**16) is that many — a counter loses no part
    when a poll comes late, an edge shorter than the polling gap can be missed."""
    if table != "counter":
        return int(bool(now) and not last)
    step = (now - last) % 65536
    if step > MAX_COUNTER_STEP:
        log.warning("trigger counter went from %d to %d: taken as a reset, no parts", last, now)
        return 0
    return step


class PlcError(RuntimeError):
    """A Modbus request failed (connection lost, timeout, exception response)."""


@dataclass
class _InFlight:
    seq: int
    due_mono: float | None  # delay mode
    due_count: int | None  # encoder mode
    start_count: int | None
    #: delay mode: after this the part may have passed the ejector by more than its window — from
    #: the earliest moment its trigger can have come (the poll before the one that saw it)
    window_end_mono: float | None = None


@dataclass
class LinkStats:
    triggers: int = 0
    results_written: int = 0
    pulses: int = 0
    missed_ejections: int = 0
    disconnects: int = 0
    heartbeat: int = 0
    #: how late pulses started after their part reached the ejector (ms): the worst one
    pulse_late_ms_max: float = 0.0
    #: the longest gap between two reads of the trigger (a starved machine shows here first)
    poll_gap_ms_max: float = 0.0


def words_to_u32(low: int, high: int) -> int:
    return (int(high) & 0xFFFF) << 16 | (int(low) & 0xFFFF)


def u32_to_words(value: int) -> list[int]:
    value %= U32
    return [value & 0xFFFF, value >> 16]


class ModbusClient:
    """The few reads and writes the station makes, with errors turned into PlcError."""

    def __init__(self, cfg: ModbusSection) -> None:
        from pymodbus.client import ModbusTcpClient

        self.cfg = cfg
        self._client = ModbusTcpClient(cfg.host, port=cfg.port, timeout=cfg.timeout_s, retries=0,
                                       reconnect_delay=0.0)

    def connect(self) -> None:
        if not self._client.connect():
            raise PlcError(f"cannot connect to the PLC at {self.cfg.host}:{self.cfg.port}")

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn, *args, **kwargs):
        from pymodbus.exceptions import ModbusException

        try:
            rr = fn(*args, device_id=self.cfg.unit, **kwargs)
        except (ModbusException, OSError) as exc:
            raise PlcError(f"{what}: {exc}") from exc
        if rr.isError():
            raise PlcError(f"{what}: the PLC answered {rr}")
        return rr

    @property
    def counter_with_id(self) -> bool:
        """A trigger counter right after the part id registers: both come in one read, so a count is
        never paired with the next part's id."""
        t, pid = self.cfg.trigger, self.cfg.part_id_register
        return t.table == "counter" and pid is not None and t.address == pid + 2

    def read_trigger_and_id(self) -> tuple[int, str | None]:
        """The trigger state and, when it comes in the same read, the part id."""
        if self.counter_with_id:
            lo, hi, count = self.read_registers(self.cfg.part_id_register, 3)  # type: ignore[arg-type]
            return int(count), str(words_to_u32(lo, hi))
        return self.read_trigger(), None

    def read_trigger(self) -> int:
        """The trigger input: 0/1 for a coil or discrete input, the part count for a counter register."""
        t = self.cfg.trigger
        if t.table == "coil":
            return int(self._call(f"read coil {t.address}", self._client.read_coils, t.address, count=1).bits[0])
        if t.table == "counter":
            return int(self.read_registers(t.address, 1)[0])
        return int(self._call(f"read discrete input {t.address}", self._client.read_discrete_inputs, t.address,
                              count=1).bits[0])

    def read_registers(self, address: int, count: int) -> list[int]:
        return list(self._call(f"read holding registers {address}..{address + count - 1}",
                               self._client.read_holding_registers, address, count=count).registers)

    def write_registers(self, address: int, values: list[int]) -> None:
        self._call(f"write holding registers {address}..{address + len(values) - 1}", self._client.write_registers,
                   address, values)

    def write_coil(self, address: int, value: bool) -> None:
        self._call(f"write coil {address}", self._client.write_coil, address, value)


class ModbusLink:
    """Runs the PLC side of the line in its own thread (see the module docstring)."""

    def __init__(self, cfg: ModbusSection, on_trigger: Callable[[LineTrigger], None], health: Health | None = None,
                 *, client: ModbusClient | None = None, alive: Callable[[], bool] | None = None,
                 on_missed: Callable[[int, str], None] | None = None) -> None:
        self.cfg = cfg
        self.on_trigger = on_trigger
        self.health = health
        self.alive = alive or (lambda: True)  # the deciding loop is turning
        self.on_missed = on_missed or (lambda seq, why: None)
        self._pulse_late: deque[float] = deque(maxlen=10_000)
        self.client = client or ModbusClient(cfg)
        self.stats = LinkStats()
        self.connected = False
        self.last_error = ""
        #: (seq, trigger→result-write-done ms) of the latest decisions written
        self.write_latency_ms: deque[tuple[int, float]] = deque(maxlen=10_000)
        self._decisions: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self._retry_at = 0.0
        self._last_input: int | None = None
        self._last_read: float | None = None
        self._in_flight: list[_InFlight] = []
        self._pending_results: list[tuple[int, int, int, float]] = []
        self._next_heartbeat = 0.0
        self._pulse_until: float | None = None
        self._ejector_alarm_until: float | None = None

    # ---- line side ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adfm-plc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.client.close()

    def decided(self, seq: int, action: str, source: str, trigger: LineTrigger) -> None:
        """A part's decision (called by the line controller, any thread)."""
        self._decisions.put((seq, action, source, trigger))
        self._wake.set()  # written now, not at the next poll

    # ---- thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        period = self.cfg.poll_ms / 1000.0
        while not self._stop.is_set():
            t0 = time.monotonic()
            if not self.connected:
                if t0 >= self._retry_at:
                    self._connect()
                if not self.connected:
                    self._take_decisions()
                    self._drop_overdue(time.monotonic())
                    self._stop.wait(min(period, max(0.0, self._retry_at - time.monotonic())) or period)
                    continue
            try:
                self._cycle()
            except PlcError as exc:
                self._lost(str(exc))
            self._wake.wait(max(0.0, period - (time.monotonic() - t0)))
            self._wake.clear()
        if self.connected and self._pulse_until is not None:
            with contextlib.suppress(PlcError):
                self.client.write_coil(self.cfg.ejector.coil, False)  # type: ignore[union-attr]

    def _connect(self) -> None:
        try:
            self.client.close()
            self.client.connect()
            self._last_input = self.client.read_trigger()  # an input already high is no new part
        except PlcError as exc:
            self._lost(str(exc), connecting=True)
            return
        self.connected = True
        self._backoff.reset()
        if self.health is not None:
            self.health.clear("plc")
        log.info("PLC link up: %s:%d", self.cfg.host, self.cfg.port)
        if self._pulse_until is not None:
            self._pulse_until = time.monotonic()  # end a pulse cut short by the loss now

    def _lost(self, why: str, connecting: bool = False) -> None:
        if self.connected:
            self.stats.disconnects += 1
            log.error("PLC link lost: %s", why)
        self.connected = False
        self._last_read = None
        self.last_error = why
        delay = self._backoff.next()
        self._retry_at = time.monotonic() + delay
        if self.health is not None:
            self.health.problem("plc", f"PLC link down ({self.cfg.host}:{self.cfg.port}): {why}; "
                                       f"retrying in {delay:.1f} s")
        self.client.close()

    def _cycle(self) -> None:
        before = self._last_read  # the trigger seen now came after this read
        level, part_id = self.client.read_trigger_and_id()
        now = time.monotonic()
        if before is not None:
            self.stats.poll_gap_ms_max = max(self.stats.poll_gap_ms_max, round((now - before) * 1000.0, 1))
        self._last_read = now
        if self._last_input is not None:
            n = new_parts(self.cfg.trigger.table, self._last_input, level)
            if n:
                self._triggered(now, n, part_id, before)
        self._last_input = level
        self._take_decisions()
        while self._pending_results:
            seq, code, source, at_mono = self._pending_results[0]
            self.client.write_registers(self.cfg.result.base, [*u32_to_words(seq), code, source])
            self._pending_results.pop(0)
            self.stats.results_written += 1
            self.write_latency_ms.append((seq, round((time.monotonic() - at_mono) * 1000.0, 3)))
        now = time.monotonic()
        if now >= self._next_heartbeat and self.alive():
            self._next_heartbeat = now + self.cfg.result.heartbeat_ms / 1000.0
            self.stats.heartbeat = (self.stats.heartbeat + 1) & 0xFFFF
            self.client.write_registers(self.cfg.result.base + 4, [self.stats.heartbeat])
        self._eject()
        if self._ejector_alarm_until is not None and now >= self._ejector_alarm_until and self.health is not None:
            self.health.clear("plc.ejector")
            self._ejector_alarm_until = None

    def _triggered(self, seen_mono: float, n: int = 1, part_id: str | None = None,
                   earliest_mono: float | None = None) -> None:
        """`n` parts seen at once (a counter that advanced by n between polls): the registers hold the
        newest part's id, so the earlier ones get station-made ids. `earliest_mono`: the read
        before, after which the trigger came (bounds the ejector window from the safe side)."""
        cfg = self.cfg
        recipe = encoder = None
        if cfg.part_id_register is not None and part_id is None:
            part_id = str(words_to_u32(*self.client.read_registers(cfg.part_id_register, 2)))
        if cfg.recipe_register is not None:
            recipe = self.client.read_registers(cfg.recipe_register, 1)[0]
        if cfg.ejector is not None and cfg.ejector.encoder_register is not None:
            encoder = words_to_u32(*self.client.read_registers(cfg.ejector.encoder_register, 2))
        at_wall = time.time() - (time.monotonic() - seen_mono)
        for i in range(n):
            self.stats.triggers += 1
            self.on_trigger(LineTrigger(at_mono=seen_mono, at_wall=at_wall, part_id=part_id if i == n - 1 else None,
                                        recipe_code=recipe, encoder=encoder, earliest_mono=earliest_mono))

    def _take_decisions(self) -> None:
        ej = self.cfg.ejector
        while True:
            try:
                seq, action, source, trigger = self._decisions.get_nowait()
            except queue.Empty:
                return
            self._pending_results.append((seq, DECISION_CODES[action], SOURCE_CODES[source], trigger.at_mono))
            del self._pending_results[:-MAX_UNWRITTEN_RESULTS]
            if ej is None or action != "reject":
                continue
            if ej.delay_ms is not None:
                earliest = trigger.earliest_mono if trigger.earliest_mono is not None else trigger.at_mono
                self._in_flight.append(_InFlight(seq, trigger.at_mono + ej.delay_ms / 1000.0, None, None,
                                                 earliest + (ej.delay_ms + ej.window_ms) / 1000.0))
            elif trigger.encoder is not None:
                self._in_flight.append(_InFlight(seq, None, (trigger.encoder + int(ej.distance_counts or 0)) % U32,
                                                 trigger.encoder))
            else:
                log.error("part seq %d is rejected but its trigger carried no encoder count", seq)
                self.stats.missed_ejections += 1

    def _encoder(self) -> int | None:
        ej = self.cfg.ejector
        if ej is None or ej.encoder_register is None or not any(p.due_count is not None for p in self._in_flight):
            return None
        return words_to_u32(*self.client.read_registers(ej.encoder_register, 2))

    @staticmethod
    def _reached(part: _InFlight, now: float, count: int | None) -> bool:
        if part.due_mono is not None:
            return now >= part.due_mono
        if count is None or part.start_count is None or part.due_count is None:
            return False
        travelled = (count - part.start_count) % U32
        return travelled >= (part.due_count - part.start_count) % U32

    def _eject(self) -> None:
        """End a pulse that has lasted its width; then fire for the parts that reached the ejector.

        Pulses do not merge: a part that comes due while the coil is high gets its own pulse right
        after (one poll of low time between), so a pulse fired late never swallows the next
        part's. Parts due in the same poll share one pulse — they are at the ejector together."""
        ej = self.cfg.ejector
        if ej is None:
            return
        if self._pulse_until is not None:
            if time.monotonic() < self._pulse_until:
                return
            self.client.write_coil(ej.coil, False)
            self._pulse_until = None
            return  # low for at least one poll before the next pulse
        now = time.monotonic()
        count = self._encoder()
        due = [p for p in self._in_flight if self._reached(p, now, count)]
        if not due:
            return
        self._in_flight = [p for p in self._in_flight if p not in due]
        late = [p for p in due if self._past_window(p, now, count)]
        if late:
            self._missed(late, "reached the ejector, but its window had passed before the pulse could start")
        due = [p for p in due if p not in late]
        if due:
            self.client.write_coil(ej.coil, True)
            fired = time.monotonic()
            self._pulse_until = fired + ej.pulse_ms / 1000.0
            self.stats.pulses += len(due)
            for p in due:
                if p.due_mono is not None:
                    late_ms = max(0.0, (fired - p.due_mono) * 1000.0)
                    self._pulse_late.append(late_ms)
                    self.stats.pulse_late_ms_max = max(self.stats.pulse_late_ms_max, round(late_ms, 1))

    def _past_window(self, part: _InFlight, now: float, count: int | None) -> bool:
        """Whether the part has gone past the ejector by more than its window."""
        ej = self.cfg.ejector
        assert ej is not None
        if part.due_mono is not None:
            end = part.window_end_mono if part.window_end_mono is not None else part.due_mono + ej.window_ms / 1e3
            return now > end
        if count is None or part.start_count is None or part.due_count is None:
            return False
        travelled = (count - part.start_count) % U32
        return travelled > (part.due_count - part.start_count) % U32 + ej.late_counts

    def _missed(self, parts: list[_InFlight], why: str) -> None:
        now = time.monotonic()
        for p in parts:
            self.stats.missed_ejections += 1
            log.error("part seq %d not rejected: it %s", p.seq, why)
            self.on_missed(p.seq, why)
        if self.health is not None:
            self.health.problem("plc.ejector", f"{self.stats.missed_ejections} rejected parts passed the ejector "
                                               f"unrejected (last: seq {parts[-1].seq}: {why})")
        self._ejector_alarm_until = now + EJECTOR_ALARM_S

    def _drop_overdue(self, now: float) -> None:
        """While the link is down, parts that reach the ejector cannot be rejected: count and report."""
        late = [p for p in self._in_flight if p.due_mono is not None and now > p.due_mono]
        if late:
            self._in_flight = [p for p in self._in_flight if p not in late]
            self._missed(late, "passed the ejector while the PLC link was down")

    # ---- probe --------------------------------------------------------------------------------

    def status(self) -> dict:
        late = list(self._pulse_late)
        p99 = round(float(sorted(late)[min(len(late) - 1, int(0.99 * len(late)))]), 1) if late else 0.0
        return {"connected": self.connected, "last_error": self.last_error, **self.stats.__dict__,
                "pulse_late_ms_p99": p99, "in_flight": len(self._in_flight)}
