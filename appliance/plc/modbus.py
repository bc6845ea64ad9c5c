"""The PLC link over Modbus/TCP (pymodbus client, the `plc` extra): trigger in, results and the
reject out, in one of two modes (README "The line: a decision for every part in time, and the
PLC" and its "The Modbus handshake").

One thread owns the connection (pymodbus's sync client is not thread-safe). Every `poll_ms`:
- read the PLC's inputs in as few requests as the map allows (handshake: one request for part id,
  trigger counter, recipe, ack and recipe request; simple: part id, counter and recipe together
  when they are adjacent) and hand a LineTrigger per new part to the line;
- simple mode: write each decision, in order, as one block: seq (low, high word), decision code,
  source code (a PLC that scans slower than parts are decided sees the newest);
  handshake mode: keep decided results in a FIFO in trigger (= seq) order and show the oldest
  `slots` of them to the PLC with a status word, in one write; a result leaves the FIFO only when
  the PLC acknowledges its seq — never overwritten unseen, each delivered once;
- every `heartbeat_ms`, increment the heartbeat register — only while the line's deciding loop is
  alive (`alive()`), so a PLC watching the heartbeat sees the station that decides, not the link;
- `reject: pulse`: fire the reject coil for each rejected part when it reaches the ejector
  (`delay_ms` after its trigger, or `distance_counts` encoder counts after it), high for
  `pulse_ms`. Parts in flight between camera and ejector are kept in order (a shift register); a
  part due while the coil is still high gets its own pulse right after. Never late: a part whose
  ejector window (`window_ms` / `window_counts` past its due point) has passed is not pulsed — the
  pulse would hit whatever part is there now. It is a missed ejection: counted, alarmed, and
  reported to the line (`on_missed`), which journals and publishes it. `reject: bit`: the station
  drives no output; each result carries a reject bit and the trigger count, the PLC times its
  ejector itself.
A failed request drops the connection; the link raises a `plc` problem in health (so the status
on the bus carries the alarm) and reconnects with exponential backoff. Decisions made meanwhile
are still journaled. On reconnect the reject coil is driven low before anything else, then a
trigger counter's advance over the outage is handed to the line as missed parts (`missed_link`,
decided with the fail-safe and journaled like any part) before the count moves on — from zero
when the PLC restarted (its copy of the station's heartbeat is gone). A counter that advances
faster than `trigger.max_parts_per_s` allows is refused whole: journaled as refused
(`on_refused`) and alarmed (`plc.trigger`), never decided as phantom parts. Simple mode writes
the unwritten results when the link is back (the newest 64); pulses that fell due while it was
down are reported as missed ejections (their parts went by).
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


#: How long the "implausible trigger counter" alarm stays up after the last refused advance.
TRIGGER_ALARM_S = 300.0
#: Handshake: decided results held for the PLC beyond this are not queued for it (journaled all the
#: same, counted, alarmed) — a PLC that never acknowledges must not grow the station's memory forever.
MAX_HELD_RESULTS = 100_000
#: Handshake: a triggered part whose decision has not come after this no longer holds back the FIFO.
HEAD_WAIT_S = 120.0

#: Status word bits (handshake mode, `handshake.outputs` + 0).
STATUS_ONLINE, STATUS_READY, STATUS_BUSY, STATUS_ALARM, STATUS_TOGGLE, STATUS_BEHIND = (1 << i for i in range(6))
STATUS_BITS = ("online", "ready", "busy", "alarm", "new_result_toggle", "fifo_behind")


def decode_status(word: int) -> dict[str, bool]:
    """The handshake's status word as names (plc-probe)."""
    return {name: bool(word >> i & 1) for i, name in enumerate(STATUS_BITS)}


#: Result slot flags.
FLAG_REJECT, FLAG_MISSED = 1, 2
#: Recipe request answers.
RECIPE_DONE, RECIPE_FAILED = 1, 2


def new_parts(table: str, last: int, now: int) -> int:
    """Parts presented between two reads of the trigger: a rising edge of a coil or discrete input
    is one; a counter register's advance (modulo 2**16) is that many — a counter loses no part
    when a poll comes late, an edge shorter than the polling gap can be missed. Whether a counter's
    advance is plausible is `TriggerInput.plausible`'s to say."""
    if table != "counter":
        return int(bool(now) and not last)
    return (now - last) % 65536


@dataclass(frozen=True)
class Inputs:
    """What the PLC presents, as read in one poll."""

    level: int  # the trigger: 0/1 for a coil or discrete input, the count for a counter register
    part_id: str | None = None
    recipe: int | None = None
    ack: int | None = None  # handshake: the seq of the newest result the PLC has taken
    request_code: int = 0  # handshake: the recipe the PLC asks for …
    request_id: int = 0  # … when it changes this


@dataclass
class Slot:
    """A decided result as the handshake shows it to the PLC."""

    seq: int
    count: int
    part_id: int
    decision: int
    source: int
    flags: int
    at_mono: float  # its trigger

    def words(self) -> list[int]:
        return [*u32_to_words(self.seq), self.count & 0xFFFF, *u32_to_words(self.part_id), self.decision,
                self.source, self.flags]


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
    #: parts the PLC counted while the link was down, recorded `missed_link`
    missed_link_parts: int = 0
    #: counter advances refused as implausible, and the counts in them
    refused_advances: int = 0
    refused_counts: int = 0
    #: handshake: results the PLC acknowledged; results waiting for it now; the most that waited
    results_acked: int = 0
    fifo: int = 0
    fifo_max: int = 0
    results_not_held: int = 0
    recipe_requests: int = 0


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

    def _span(self) -> tuple[int, int] | None:
        """Simple mode, counter trigger: the first address and length of one read that covers the
        counter and, when close by, the part id and recipe registers — read together, so a count is
        never paired with the next part's id or recipe."""
        cfg = self.cfg
        if cfg.trigger.table != "counter":
            return None
        regs = [cfg.trigger.address]
        if cfg.part_id_register is not None:
            regs += [cfg.part_id_register, cfg.part_id_register + 1]
        if cfg.recipe_register is not None:
            regs.append(cfg.recipe_register)
        lo, hi = min(regs), max(regs)
        return (lo, hi - lo + 1) if hi - lo < 8 else None

    def read_inputs(self) -> Inputs:
        """The PLC's inputs for one poll (see Inputs); fields not read together are None."""
        cfg = self.cfg
        if cfg.mode == "handshake":
            r = self.read_registers(cfg.handshake.inputs, 8)
            pid = words_to_u32(r[0], r[1])  # 0: the PLC gives no ids
            return Inputs(int(r[2]), str(pid) if pid else None, int(r[3]), words_to_u32(r[4], r[5]), int(r[6]),
                          int(r[7]))
        span = self._span()
        if span is None:
            return Inputs(self.read_trigger())
        start, n = span
        r = self.read_registers(start, n)
        pid, rec = cfg.part_id_register, cfg.recipe_register
        return Inputs(int(r[cfg.trigger.address - start]),
                      str(words_to_u32(r[pid - start], r[pid + 1 - start])) if pid is not None else None,
                      int(r[rec - start]) if rec is not None else None)

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
                 on_missed: Callable[[int, str], None] | None = None,
                 on_refused: Callable[[int, str], None] | None = None,
                 on_recipe: Callable[[int], tuple[bool, str]] | None = None,
                 recipe_code: Callable[[], int] | None = None,
                 ready: Callable[[], bool] | None = None) -> None:
        self.cfg = cfg
        self.on_trigger = on_trigger
        self.health = health
        self.alive = alive or (lambda: True)  # the deciding loop is turning
        self.ready = ready or self.alive  # … and can decide (the model loads)
        self.on_missed = on_missed or (lambda seq, why: None)
        self.on_refused = on_refused or (lambda n, why: None)  # journals a refused counter advance
        self.on_recipe = on_recipe or (lambda code: (False, "this station has no recipes"))
        self.recipe_code = recipe_code or (lambda: 0)
        self.handshake = cfg.mode == "handshake"
        self.pulses = cfg.reject == "pulse" and cfg.ejector is not None
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
        self._last_input: int | None = None  # an edge trigger's level (a new baseline on each connect)
        self._count: int | None = None  # a counter trigger's value, kept across outages
        self._count_mono = 0.0  # when it was read
        self._last_read: float | None = None
        self._in_flight: list[_InFlight] = []
        self._pending_results: list[tuple[int, int, int, float]] = []
        self._next_heartbeat = 0.0
        self._pulse_until: float | None = None
        self._ejector_alarm_until: float | None = None
        self._trigger_alarm_until: float | None = None
        # handshake
        self._order: deque[list] = deque()  # [trigger, Slot | None] in trigger order, until decided
        self._by_trigger: dict[int, list] = {}
        self._fifo: deque[Slot] = deque()  # decided, in seq order, until the PLC acknowledges
        self._block: list[int] | None = None  # the output block as last written
        self._shown: set[int] = set()  # seqs the PLC has been shown
        self._toggle = 0
        self._answered: int | None = None  # the recipe request id last answered
        self._answer = 0
        self._busy = 0  # triggers handed to the line and not yet decided

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
        if self.connected:
            with contextlib.suppress(PlcError):
                self._safe_outputs()
                if self.handshake:  # offline: the PLC sees the station gone at once, not by the heartbeat
                    self.client.write_registers(self.cfg.handshake.outputs, [0])

    def _safe_outputs(self) -> None:
        """The reject coil low (a pulse an outage or a stop cut short must not stay high)."""
        if self.pulses:
            self.client.write_coil(self.cfg.ejector.coil, False)  # type: ignore[union-attr]
        self._pulse_until = None

    def _connect(self) -> None:
        try:
            self.client.close()
            self.client.connect()
            self._safe_outputs()  # before anything else
            restarted = self._plc_restarted()
            inputs = self.client.read_inputs()
            if self.handshake and self._answered is None:  # a request answered before this station started
                self._answered = self.client.read_registers(self.cfg.handshake.outputs + 5, 1)[0]
        except PlcError as exc:
            self._lost(str(exc), connecting=True)
            return
        now = time.monotonic()
        self.connected = True
        self._backoff.reset()
        self._block = None  # the whole output block again: a restarted PLC has lost it
        self._last_read = now
        if self.health is not None:
            self.health.clear("plc")
        log.info("PLC link up: %s:%d%s", self.cfg.host, self.cfg.port, " (the PLC restarted)" if restarted else "")
        if restarted:
            self._answered = 0  # its recipe request id begins again at 0 too
        if self.cfg.trigger.table != "counter":
            self._last_input = inputs.level  # an input already high is no new part
        elif self._count is None:
            self._count, self._count_mono = inputs.level, now  # the first count this service sees
        else:
            first = 0 if restarted else self._count
            step = inputs.level if restarted else new_parts("counter", self._count, inputs.level)
            why = ("counted by the PLC while the link was down" +
                   (" (the PLC restarted; its counter began again at 0)" if restarted else ""))
            self._advance(step, first, inputs, now, None, missed=why)

    def _plc_restarted(self) -> bool:
        """Whether the PLC lost its memory since the last connection: the heartbeat register holds
        neither of the last two values the station wrote (a restarted PLC's registers read 0)."""
        written = self.stats.heartbeat
        if not written or self._count is None:
            return False
        now = self.client.read_registers(self.cfg.heartbeat_register, 1)[0]
        return now not in (written, written - 1 if written > 1 else 0xFFFF)  # the last write may not have landed

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
        inputs = self.client.read_inputs()
        now = time.monotonic()
        if before is not None:
            self.stats.poll_gap_ms_max = max(self.stats.poll_gap_ms_max, round((now - before) * 1000.0, 1))
        self._last_read = now
        if self.cfg.trigger.table == "counter":
            if self._count is None:
                self._count, self._count_mono = inputs.level, now
            else:
                self._advance(new_parts("counter", self._count, inputs.level), self._count, inputs, now, before)
        else:
            if self._last_input is not None:
                n = new_parts(self.cfg.trigger.table, self._last_input, inputs.level)
                if n:
                    self._triggered(now, n, inputs, before)
            self._last_input = inputs.level
        self._take_decisions()
        if self.handshake:
            self._eject()  # a pulse is due at an instant; the block is read at the PLC's next scan
            self._handshake(inputs)
        else:
            while self._pending_results:
                seq, code, source, at_mono = self._pending_results[0]
                self.client.write_registers(self.cfg.result.base, [*u32_to_words(seq), code, source])
                self._pending_results.pop(0)
                self.stats.results_written += 1
                self.write_latency_ms.append((seq, round((time.monotonic() - at_mono) * 1000.0, 3)))
            if self._beat(time.monotonic()):
                self.client.write_registers(self.cfg.result.base + 4, [self.stats.heartbeat])
            self._eject()
        now = time.monotonic()
        if self._ejector_alarm_until is not None and now >= self._ejector_alarm_until and self.health is not None:
            self.health.clear("plc.ejector")
            self._ejector_alarm_until = None
        if self._trigger_alarm_until is not None and now >= self._trigger_alarm_until and self.health is not None:
            self.health.clear("plc.trigger")
            self._trigger_alarm_until = None

    def _beat(self, now: float) -> bool:
        """Advance the heartbeat when it is due and the deciding loop is alive."""
        if now < self._next_heartbeat or not self.alive():
            return False
        self._next_heartbeat = now + self.cfg.result.heartbeat_ms / 1000.0
        self.stats.heartbeat = (self.stats.heartbeat + 1) & 0xFFFF or 1  # 0 is a restarted PLC's
        return True

    # ---- triggers -----------------------------------------------------------------------------

    def _advance(self, step: int, first: int, inputs: Inputs, now: float, before: float | None,
                 missed: str = "") -> None:
        """The counter moved by `step` from `first` since it was read at `_count_mono`: that many
        parts, when plausible — handed to the line (missed ones recorded as such) before the count
        moves on; otherwise refused whole, journaled and alarmed."""
        if step:
            elapsed = now - self._count_mono
            bound = self.cfg.trigger.plausible(step, elapsed)
            if step > bound:
                self._refuse(step, first, inputs.level, elapsed, bound, missed)
            else:
                self._triggered(now, step, inputs, before, first=first, missed=missed)
        self._count, self._count_mono = inputs.level, now

    def _refuse(self, step: int, first: int, level: int, elapsed: float, bound: int, missed: str) -> None:
        self.stats.refused_advances += 1
        self.stats.refused_counts += step
        when = "over the outage" if missed else "between two reads"
        why = (f"the PLC's trigger counter went from {first} to {level} (+{step}) {when} of {elapsed:.2f} s; "
               f"at most {bound} parts are plausible (trigger.max_parts_per_s {self.cfg.trigger.max_parts_per_s:g}, "
               f"max_burst {self.cfg.trigger.max_burst}): refused, not decided as parts")
        log.error("%s", why)
        self.on_refused(step, why)
        if self.health is not None:
            self.health.problem("plc.trigger", f"implausible trigger counter: {self.stats.refused_counts} counts in "
                                               f"{self.stats.refused_advances} advances refused (last: {why})")
        self._trigger_alarm_until = time.monotonic() + TRIGGER_ALARM_S

    def _triggered(self, seen_mono: float, n: int, inputs: Inputs, earliest_mono: float | None, *,
                   first: int | None = None, missed: str = "") -> None:
        """`n` parts seen at once (a counter that advanced by n): the registers hold the newest
        part's id, so the earlier ones get station-made ids. `earliest_mono`: the read before, after
        which the trigger came (bounds the ejector window from the safe side). Missed parts carry
        why, and neither id nor recipe (those registers belong to the part presented last)."""
        cfg = self.cfg
        part_id, recipe, encoder = inputs.part_id, inputs.recipe, None
        if not missed:
            if cfg.part_id_register is not None and part_id is None:
                part_id = str(words_to_u32(*self.client.read_registers(cfg.part_id_register, 2)))
            if cfg.recipe_register is not None and recipe is None:
                recipe = self.client.read_registers(cfg.recipe_register, 1)[0]
            if cfg.ejector is not None and cfg.ejector.encoder_register is not None:
                encoder = words_to_u32(*self.client.read_registers(cfg.ejector.encoder_register, 2))
        at_wall = time.time() - (time.monotonic() - seen_mono)
        for i in range(n):
            self.stats.triggers += 1
            last = i == n - 1 and not missed
            trigger = LineTrigger(at_mono=seen_mono, at_wall=at_wall, part_id=part_id if last else None,
                                  recipe_code=recipe if last else None, encoder=encoder, earliest_mono=earliest_mono,
                                  count=(first + i + 1) % 65536 if first is not None else None, missed=missed)
            if missed:
                self.stats.missed_link_parts += 1
            if self.handshake:
                entry = [trigger, None, seen_mono]
                self._order.append(entry)
                self._by_trigger[id(trigger)] = entry
            self._busy += 1
            self.on_trigger(trigger)
        if missed:
            log.error("%d parts %s: recorded missed_link", n, missed)

    # ---- decisions ----------------------------------------------------------------------------

    def _take_decisions(self) -> None:
        ej = self.cfg.ejector if self.pulses else None
        while True:
            try:
                seq, action, source, trigger = self._decisions.get_nowait()
            except queue.Empty:
                break
            self._busy = max(0, self._busy - 1)
            code, src = DECISION_CODES[action], SOURCE_CODES[source]
            if self.handshake:
                self._hold(Slot(seq, trigger.count or 0, _numeric(trigger.part_id), code, src,
                                (FLAG_REJECT if action == "reject" and source != "missed_link" else 0)
                                | (FLAG_MISSED if source == "missed_link" else 0), trigger.at_mono), trigger)
            else:
                self._pending_results.append((seq, code, src, trigger.at_mono))
                del self._pending_results[:-MAX_UNWRITTEN_RESULTS]
            if ej is None or action != "reject" or source == "missed_link":  # a missed part has long gone by
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
        if self.handshake:
            self._release_decided()

    def _hold(self, slot: Slot, trigger: LineTrigger) -> None:
        """A decided result waits for the ones triggered before it (the FIFO is in seq order)."""
        entry = self._by_trigger.pop(id(trigger), None)
        if entry is not None:
            entry[1] = slot
        else:  # a part this link did not trigger (software): after those decided so far
            self._release_decided()
            self._queue_slot(slot)

    def _release_decided(self) -> None:
        now = time.monotonic()
        while self._order and (self._order[0][1] is not None or now - self._order[0][2] > HEAD_WAIT_S):
            trigger, slot, _ = self._order.popleft()
            if slot is None:
                self._by_trigger.pop(id(trigger), None)
                log.error("a part triggered %.0f s ago has no decision; later results no longer wait for it",
                          now - trigger.at_mono)
                continue
            self._queue_slot(slot)

    def _queue_slot(self, slot: Slot) -> None:
        if len(self._fifo) >= MAX_HELD_RESULTS:
            self.stats.results_not_held += 1
            log.error("seq %d not queued for the PLC: %d results wait for its acknowledge", slot.seq, len(self._fifo))
            return
        self._fifo.append(slot)

    # ---- the handshake ------------------------------------------------------------------------

    def _handshake(self, inputs: Inputs) -> None:
        """Release what the PLC acknowledged, answer a recipe request, write the block if it changed."""
        hs = self.cfg.handshake
        shown = list(self._fifo)[:hs.slots]
        if inputs.ack is not None:
            k = next((i for i, s in enumerate(shown) if s.seq == inputs.ack), None)
            if k is not None and shown[k].seq in self._shown:  # only what the PLC has been shown
                for _ in range(k + 1):
                    self._shown.discard(self._fifo.popleft().seq)
                self.stats.results_acked += k + 1
        if self._answered is not None and inputs.request_id not in (0, self._answered):
            self.stats.recipe_requests += 1
            try:
                ok, detail = self.on_recipe(inputs.request_code)
            except Exception as exc:  # an answer, never a dead link
                ok, detail = False, str(exc)
            log.warning("PLC recipe request %d (code %d): %s", inputs.request_id, inputs.request_code,
                        "done" if ok else f"failed: {detail}")
            self._answered, self._answer = inputs.request_id, RECIPE_DONE if ok else RECIPE_FAILED
        n = len(self._fifo)
        self.stats.fifo, self.stats.fifo_max = n, max(self.stats.fifo_max, n)
        if self.health is not None:
            if n > hs.fifo_alarm:
                self.health.problem("plc.fifo", f"{n} results wait for the PLC's acknowledge (more than "
                                                f"handshake.fifo_alarm {hs.fifo_alarm}): held, in seq order")
            else:
                self.health.clear("plc.fifo")
        shown = list(self._fifo)[:hs.slots]
        new = [s for s in shown if s.seq not in self._shown]
        if new:
            self._toggle ^= 1
        self._beat(time.monotonic())
        status = (STATUS_ONLINE | (STATUS_READY if self.ready() else 0) | (STATUS_BUSY if self._busy else 0)
                  | (STATUS_ALARM if self.health is not None and self.health.has_problems() else 0)
                  | (STATUS_TOGGLE if self._toggle else 0) | (STATUS_BEHIND if n > hs.fifo_alarm else 0))
        block = [status, min(n - len(shown), 0xFFFF), len(shown), self.recipe_code() & 0xFFFF, self.stats.heartbeat,
                 (self._answered or 0) & 0xFFFF, self._answer, 0]
        for s in shown:
            block += s.words()
        block += [0] * (hs.output_count - len(block))
        if block != self._block:
            self.client.write_registers(hs.outputs, block)
            self._block = block
            done = time.monotonic()
            for s in new:
                self._shown.add(s.seq)
                self.stats.results_written += 1
                self.write_latency_ms.append((s.seq, round((done - s.at_mono) * 1000.0, 3)))

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
        return {"connected": self.connected, "last_error": self.last_error, "mode": self.cfg.mode,
                **self.stats.__dict__, "pulse_late_ms_p99": p99, "in_flight": len(self._in_flight)}


def _numeric(part_id: str | None) -> int:
    """A part id as the handshake echoes it (u32): the PLC's own ids are numbers; others are 0."""
    return int(part_id) % U32 if part_id is not None and part_id.isdigit() else 0
