"""Line mode: every triggered part gets exactly one decision before its deadline, from a loop that
never blocks (docs/architecture.md, "The decision core").

On a trigger the camera is fired first; then the part gets its seq (the loop numbers parts
itself) and its journal row is handed to the journal's row writer. For each part, the first of
these decides it:
- the gate (recipe gate mode `screen`) finds it confidently good → `pass` (source `gate`);
- the VLM answers before the deadline → its verdict (source `vlm`; an unreadable answer gets the
  fail-safe action);
- `margin_ms` before the deadline → the recipe's fail-safe action, source `failsafe_missed_frame`
  (no frame yet), `failsafe_model_down` (the model cannot be loaded) or `failsafe_timeout`;
- its image or row cannot be stored (disk full) → the fail-safe at once, `failsafe_disk_full`,
  the row kept as a minimal record.
A gate or VLM decision counts once the part's image file is written (the evidence exists before
the line acts on it); the database row may come later. The decision goes to the outputs at once
(the PLC first), then is journaled and published in seq order. The main row is what the line
did: a later VLM verdict, a gate pass that lost the race against the fail-safe, or a reject that
missed its ejector window are revisions beside it, never over it.

The loop (`step`, driven by the service) only moves parts between states and fires timers. Gate
scoring runs in its own thread, image files and database rows in the journal's writer threads,
the VLM in the runner's; each reports back through one event queue. The loop measures its own
stalls (time spent on one event, lateness of a timer) and beats a heartbeat that the PLC link's
heartbeat register follows, so the PLC sees the deciding loop alive, not merely the link.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adfm.camera.frame import Frame
from adfm.schema import DecisionSource, InspectionResult, LineAction, Verdict

from ..inspection.core import (
    GateScore,
    Inference,
    ModelInfo,
    build_result,
    gate_pass_reason,
    line_action,
    score_gate,
    utc,
    verdict_for,
)
from ..inspection.runner import VlmJob, VlmRunner
from ..journal.store import AcceptedPart, Journal, JournalFullError, StoredImage
from ..journal.writer import JournalWriter
from ..system.health import Health
from ..system.priority import BACKGROUND_NICE, favour_waking_threads
from .outputs import Outputs

log = logging.getLogger(__name__)

#: Health key of the line's journal alarms (a full disk, a locked database). Not a critical key:
#: the line keeps deciding with minimal records, so the watchdog must not restart the service.
JOURNAL_ALARM = "line.journal"
#: The deciding loop counts as alive while it has turned within this long (the PLC heartbeat).
LOOP_ALIVE_S = 1.0
#: Decided parts remembered for revisions that come later (a late VLM verdict, a missed ejection).
RECENT_DECISIONS = 4096


@dataclass(frozen=True)
class Recipe:
    """What the line applies to a part: resolved from the station config's recipe (or defaults)."""

    name: str
    deadline_ms: float
    failsafe: LineAction
    model: str  # key of the runner's model
    product: str | None = None
    gate: Any = None  # a loaded gate (score(image) → .score, .suspicious), or None
    gate_mode: str = "off"
    reference: np.ndarray | None = None
    code: int | None = None


@dataclass(frozen=True)
class LineTrigger:
    """One trigger: when (monotonic and wall clock), which part and recipe, the encoder count."""

    at_mono: float
    at_wall: float
    part_id: str | None = None
    recipe_code: int | None = None
    encoder: int | None = None
    earliest_mono: float | None = None  # the trigger came after this (the PLC link's previous read)


@dataclass
class _Part:
    key: str
    seq: int
    part_id: str
    trigger: LineTrigger
    recipe: Recipe
    deadline_mono: float
    failsafe_mono: float
    row: AcceptedPart | None = None  # its journal row, once written
    frame: Frame | None = None
    image: StoredImage | None = None  # its image file, once written
    storing: bool = False  # the image file is being written
    gate_score: float | None = None
    gate_threshold: float | None = None
    gate_map: Any = None
    gate_bank: str = ""
    result: InspectionResult | None = None  # the line's decision
    recorded: bool = False  # the decision is handed to the row writer
    waiting: tuple | None = None  # a gate/VLM decision waiting for the image file
    later: list[tuple] = field(default_factory=list)  # revisions waiting for the decision's record
    vlm_pending: bool = False
    gate_pending: bool = False
    disk_full: str = ""
    latency: dict[str, float] = field(default_factory=dict)


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000.0, 3)


class LoopStats:
    """The deciding loop's own timing: how long one event held it, how late a timer fired."""

    def __init__(self, window: int = 20_000) -> None:
        self._stalls: deque[float] = deque(maxlen=window)
        self.max_ms = 0.0
        self.beat = time.monotonic()

    def add(self, ms: float) -> None:
        self._stalls.append(ms)
        self.max_ms = max(self.max_ms, ms)

    def p99(self) -> float:
        data = list(self._stalls)
        return round(float(np.percentile(data, 99)), 3) if data else 0.0


class LineController:
    """Drives triggered parts to their decisions. `trigger()` from any thread; `step()` from one."""

    def __init__(
        self,
        station: str,
        journal: Journal,
        health: Health,
        camera: Any,
        camera_id: str,
        runner: VlmRunner | None,
        recipes: dict[str, Recipe],
        default_recipe: str,
        models: dict[str, ModelInfo],
        outputs: Outputs,
        *,
        margin_ms: float = 50.0,
    ) -> None:
        self.station = station
        self.journal = journal
        self.health = health
        self.camera = camera
        self.camera_id = camera_id
        self.runner = runner
        self.recipes = recipes
        self.by_code = {r.code: r for r in recipes.values() if r.code is not None}
        self.active_recipe = default_recipe
        self.models = models
        self.outputs = outputs
        self.margin_s = margin_ms / 1000.0
        self.events: queue.Queue = queue.Queue()
        self.parts: dict[str, _Part] = {}
        self._timers: list[tuple[float, str]] = []
        #: seq → (the line's decision, its newest revision number), for revisions that come later
        self._recent: OrderedDict[int, tuple[InspectionResult, int]] = OrderedDict()
        self._unpublishable: set[int] = set()  # seqs whose decision the journal refused for good
        self._to_publish: list[tuple[int, int, InspectionResult]] = []
        self._pub_order = itertools.count()
        self._next_seq = journal.max_seq() + 1
        self._next_pub = journal.last_seq() + 1
        self._keys = itertools.count(1)
        self.decided = 0
        self.revised = 0
        self.skipped = 0  # late parts the VLM never inspected (queue bounded): their fail-safe stands alone
        self.deadline_misses = 0
        self.missed_ejections = 0
        self.counts: dict[str, int] = {}
        self.loop = LoopStats()
        self._unrecorded = 0  # decisions handed to the row writer and not yet journaled
        self._pump_stop = threading.Event()
        self._pump: threading.Thread | None = None
        # the gate and the image writer are on the decision path (a gate pass, the evidence before
        # any decision): they keep the service's priority; the row writer may wait
        self._gate = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adfm-gate")
        self._rows = JournalWriter("line-rows", on_retry=self._journal_retry, nice=BACKGROUND_NICE)
        self._images = JournalWriter("line-images")
        #: called by the loop right after each decision with a frame: (seq, part id, camera, frame,
        #: result, recipe); the shadow run's offer (appliance/models), which must not block
        self.on_decided: Any = None

    # ---- inputs (any thread) ------------------------------------------------------------------

    def trigger(self, trigger: LineTrigger) -> None:
        self.events.put(("trigger", trigger))

    def select_recipe(self, name: str) -> None:
        """Changeover by command: the recipe for triggers that name none (ValueError if unknown)."""
        if name not in self.recipes:
            raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(self.recipes))}")
        self.events.put(("recipe", name))

    def call_in_loop(self, fn: Any) -> None:
        """Run `fn()` in the deciding loop between two events (a model switch lands on a part boundary)."""
        self.events.put(("call", fn))

    @property
    def next_seq(self) -> int:
        """The seq the next trigger gets (read in the loop)."""
        return self._next_seq

    def vlm_done(self, key: str, inference: Inference) -> None:
        self.events.put(("vlm", key, inference))

    def vlm_skipped(self, key: str) -> None:
        self.events.put(("skipped", key))

    def missed_ejection(self, seq: int, why: str) -> None:
        """The PLC link did not pulse a reject because its part had passed the ejector."""
        self.events.put(("missed", seq, why))

    def alive(self) -> bool:
        """The deciding loop has turned recently (the PLC heartbeat follows this)."""
        return time.monotonic() - self.loop.beat <= LOOP_ALIVE_S

    def start(self) -> None:
        """Start pumping the line camera's frames into the event queue."""
        favour_waking_threads()
        self._pump = threading.Thread(target=self._pump_frames, name="adfm-line-frames", daemon=True)
        self._pump.start()

    def close(self) -> None:
        """Stop taking frames; finish the journal writes queued so far and record what they allow."""
        self._pump_stop.set()
        if self._pump is not None:
            self._pump.join(2.0)
        self._gate.shutdown(wait=True)
        self._images.close()
        self._drain()  # images written meanwhile: their decisions go to the row writer
        self._rows.close()
        self._drain()  # rows written meanwhile: publish them

    #: what the loop still handles while closing: journal outcomes, never new work
    CLOSING_EVENTS = ("stored", "opened", "row", "recorded", "revised")

    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            if event[0] in self.CLOSING_EVENTS:
                self._handle(event)

    def _pump_frames(self) -> None:
        while not self._pump_stop.is_set():
            frame = self.camera.get(timeout=0.05)
            if frame is not None:
                self.events.put(("frame", frame))

    # ---- the loop -----------------------------------------------------------------------------

    def step(self, timeout_s: float) -> None:
        """Handle events for up to `timeout_s`, waking for every fail-safe that falls due."""
        end = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            self.loop.beat = now
            self._fire_timers(now)
            due = self._timers[0][0] if self._timers else end
            wait = min(end, due) - time.monotonic()
            try:
                event = self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait()
            except queue.Empty:
                if time.monotonic() >= end:
                    self._fire_timers(time.monotonic())
                    return
                continue
            t0 = time.monotonic()
            self._handle(event)
            self.loop.add(_ms(t0, time.monotonic()))

    def _fire_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            due, key = heapq.heappop(self._timers)
            part = self.parts.get(key)
            if part is None or part.result is not None:
                continue
            t0 = time.monotonic()
            if part.frame is None:
                self._decide_failsafe(part, "failsafe_missed_frame",
                                      "no frame from the camera by the deadline (dropped, late or camera down)")
            elif self.runner is not None and self.runner.down:
                self._decide_failsafe(part, "failsafe_model_down", f"model down: {self.runner.down_reason}")
            else:
                self._decide_failsafe(part, "failsafe_timeout",
                                      f"the VLM did not answer within {part.recipe.deadline_ms:g} ms")
            done = time.monotonic()
            self.loop.add(max(_ms(due, t0), 0.0) + _ms(t0, done))  # lateness + handling

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "trigger":
            self._on_trigger(event[1])
        elif kind == "frame":
            self._on_frame(event[1])
        elif kind == "gated":
            self._on_gated(event[1], event[2])
        elif kind == "vlm":
            self._on_vlm(event[1], event[2])
        elif kind == "stored":
            self._on_stored(event[1], event[2], event[3], event[4])
        elif kind == "opened":
            self._on_opened(event[1], event[2], event[3])
        elif kind == "row":
            self._on_row_failing(event[1], event[2])
        elif kind in ("recorded", "revised"):
            self._on_recorded(kind, event[1], event[2], event[3])
        elif kind == "skipped":
            self.skipped += 1
            part = self.parts.get(event[1])
            if part is not None:
                part.vlm_pending = False
                self._forget_if_done(part)
        elif kind == "missed":
            self._on_missed(event[1], event[2])
        elif kind == "recipe":
            self.active_recipe = event[1]
            log.info("recipe changed to %s", event[1])
        elif kind == "call":
            try:
                event[1]()
            except Exception:
                log.exception("a call in the deciding loop failed")

    def _recipe_for(self, trigger: LineTrigger) -> Recipe:
        if trigger.recipe_code:  # 0: the PLC selects none
            recipe = self.by_code.get(trigger.recipe_code)
            if recipe is not None:
                return recipe
            self.health.problem("recipe", f"the PLC selects recipe code {trigger.recipe_code}, which no recipe has; "
                                          f"using {self.active_recipe!r}")
        return self.recipes[self.active_recipe]

    def _on_trigger(self, trigger: LineTrigger) -> None:
        recipe = self._recipe_for(trigger)
        key = f"t{next(self._keys)}"
        deadline = trigger.at_mono + recipe.deadline_ms / 1000.0
        try:  # the camera first: the part's frame is the first one captured after this
            self.camera.fire(key, trigger.at_mono, deadline)
        except Exception as exc:  # a camera that cannot take triggers: the deadline records it missed
            log.error("camera %s: cannot fire trigger: %s", self.camera_id, exc)
        part_id = trigger.part_id or f"{self.camera_id}-{utc(trigger.at_wall).strftime('%Y%m%dT%H%M%S.%f')[:-3]}Z"
        seq = self._next_seq
        self._next_seq += 1
        part = _Part(key, seq, part_id, trigger, recipe, deadline, max(trigger.at_mono, deadline - self.margin_s))
        self.parts[key] = part
        heapq.heappush(self._timers, (part.failsafe_mono, key))
        product = recipe.product or ""

        def opened(row: Any, error: BaseException | None) -> None:
            self.events.put(("opened", key, row, error))

        def failing(exc: BaseException, attempt: int) -> None:
            if attempt == 1:
                self.events.put(("row", key, exc))

        self._rows.submit(f"seq {seq}: row", lambda: self.journal.open_part(
            part_id=part_id, camera=self.camera_id, triggered_wall=trigger.at_wall, product=product, seq=seq),
            opened, on_retry=failing)

    def _on_opened(self, key: str, row: AcceptedPart | None, error: BaseException | None) -> None:
        part = self.parts.get(key)
        if part is None:
            return
        if error is not None:  # a damaged journal (JournalCorrupt): the decision stands unrecorded
            part.disk_full = part.disk_full or str(error)
            self.health.problem(JOURNAL_ALARM, f"seq {part.seq} not journaled: {error}")
        part.row = row
        self._forget_if_done(part)

    def _on_row_failing(self, key: str, exc: BaseException) -> None:
        """The part's row cannot be written yet (retried in order until it can): with a full disk
        the line does not wait for it — the fail-safe now, a minimal record once there is room."""
        part = self.parts.get(key)
        if part is None or part.result is not None or not isinstance(exc, JournalFullError):
            return
        part.disk_full = str(exc)
        self._decide_failsafe(part, "failsafe_disk_full", f"part not journaled: {exc}")

    def _journal_retry(self, what: str, exc: BaseException, attempt: int) -> None:
        if attempt == 1 or attempt % 20 == 0:
            log.error("%s: journal write failed (attempt %d), retrying: %s", what, attempt, exc)
        self.health.problem(JOURNAL_ALARM, f"{what}: journal write failing, retried in order: {exc}")

    def _on_frame(self, frame: Frame) -> None:
        part = self.parts.get(frame.part_id)
        if part is None or part.frame is not None:
            log.warning("camera %s: frame %d for no waiting part (%s)", frame.camera_id, frame.frame_number,
                        frame.part_id)
            return
        part.frame = frame
        part.latency["trigger_to_frame"] = _ms(part.trigger.at_mono, frame.captured_mono)
        part.storing = True
        key, t0, row = part.key, time.monotonic(), self._row_of(part)

        def stored(value: Any, error: BaseException | None) -> None:
            self.events.put(("stored", key, value, error, t0))

        self._images.submit(f"seq {part.seq}: image", lambda: self.journal.store_image(
            row, frame.image, captured_wall=frame.captured_wall, encoded=frame.encoded), stored, retry=False)
        recipe = part.recipe
        if recipe.gate is not None and recipe.gate_mode != "off":
            part.gate_pending = True
            self._gate.submit(self._score, key, recipe.gate, frame.image)
        else:
            self._submit_vlm(part)

    def _score(self, key: str, gate: Any, image: np.ndarray) -> None:
        """Gate thread: score, and hand the score to the loop."""
        self.events.put(("gated", key, score_gate(gate, image)))

    def _on_gated(self, key: str, scored: GateScore) -> None:
        part = self.parts.get(key)
        if part is None:
            return
        part.gate_pending = False
        part.gate_score = scored.score
        part.gate_bank = scored.bank_sha256
        part.gate_threshold = scored.threshold
        part.latency["gate"] = scored.ms
        if scored.error:
            self.health.problem("gate", scored.error)
        else:
            self.health.clear("gate")
        if part.recipe.gate_mode == "screen" and not scored.suspicious:
            decision = ("pass", "pass", "gate", gate_pass_reason(scored.score), None)
            if part.result is None:
                self._decide_when_stored(part, decision)
            else:  # the fail-safe came first: the gate's word is kept as a revision
                self._revise(part, "pass", decision[3], None, "gate")
        else:
            self._submit_vlm(part)
        self._forget_if_done(part)

    def _submit_vlm(self, part: _Part) -> None:
        if self.runner is None or part.frame is None:
            return
        part.vlm_pending = True
        self.runner.submit(VlmJob(part.key, part.frame.image, part.deadline_mono - self.margin_s, part.recipe.model,
                                  part.recipe.product, part.recipe.reference))

    def _on_vlm(self, key: str, inference: Inference) -> None:
        part = self.parts.get(key)
        if part is None:
            return
        part.vlm_pending = False
        verdict, reason = verdict_for(inference.parsed, inference.failures)
        part.latency.update({f"vlm_{k}": v for k, v in inference.ms.items()})
        if part.result is None and time.monotonic() < part.deadline_mono:
            action = line_action(verdict, part.recipe.failsafe)
            if verdict == "review":
                reason += f"; fail-safe action {part.recipe.failsafe}"
            self._decide_when_stored(part, (verdict, action, "vlm", reason, inference))
        elif part.result is not None:
            self._revise(part, verdict, reason, inference, "vlm")
        self._forget_if_done(part)

    def _decide_when_stored(self, part: _Part, decision: tuple) -> None:
        """A gate or VLM decision counts once the part's image file is written (a full disk turns it
        into the fail-safe); until then it waits — the deadline's fail-safe still comes first if due."""
        if part.storing:
            part.waiting = decision
        elif part.disk_full:
            self._decide_failsafe(part, "failsafe_disk_full", f"image not journaled: {part.disk_full}")
        else:
            self._decide(part, *decision)

    def _on_stored(self, key: str, image: StoredImage | None, error: BaseException | None, t0: float) -> None:
        part = self.parts.get(key)
        if part is None:
            return
        part.storing = False
        part.latency["journal"] = _ms(t0, time.monotonic())
        if error is not None:  # JournalFullError above all: the row stays, as a minimal record
            part.disk_full = str(error)
            self.health.problem(JOURNAL_ALARM, str(error))
        else:
            part.image = image
            frame = part.frame
            assert frame is not None and image is not None
            row = self._row_of(part)
            self._rows.submit(f"seq {part.seq}: image entry", lambda: self.journal.record_image(
                row, image, frame_number=frame.frame_number, captured_wall=frame.captured_wall))
        waiting, part.waiting = part.waiting, None
        if part.result is None:
            if part.disk_full:
                self._decide_failsafe(part, "failsafe_disk_full", f"image not journaled: {part.disk_full}")
            elif waiting is not None:
                self._decide(part, *waiting)
        elif waiting is not None:  # decided by the fail-safe while this waited: keep it as a revision
            verdict, _action, source, reason, inference = waiting
            self._revise(part, verdict, reason, inference, source)
        if part.result is not None and not part.recorded:
            self._record(part)
        self._forget_if_done(part)

    # ---- decisions ----------------------------------------------------------------------------

    def _decide_failsafe(self, part: _Part, source: DecisionSource, reason: str) -> None:
        action = part.recipe.failsafe
        self._decide(part, "review", action, source, f"{reason}; fail-safe action {action}")

    def _decide(self, part: _Part, verdict: Verdict, action: LineAction, source: DecisionSource, reason: str,
                inference: Inference | None = None) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        part.latency["trigger_to_decision"] = _ms(part.trigger.at_mono, now_mono)
        part.result = self._result(part, verdict, reason, inference, revision=0, source=source, action=action,
                                   decided_wall=now_wall)
        self.decided += 1
        self.counts[source] = self.counts.get(source, 0) + 1
        if now_mono > part.deadline_mono:
            self.deadline_misses += 1
            log.error("seq %d decided %.0f ms after its deadline", part.seq, (now_mono - part.deadline_mono) * 1e3)
        self.outputs.decided(part.seq, action, source, part.trigger)  # the PLC first: its write is the deadline's
        if self.on_decided is not None and part.frame is not None:
            try:
                self.on_decided(part.seq, part.part_id, self.camera_id, part.frame, part.result, part.recipe)
            except Exception:
                log.exception("seq %d: the decision hook failed", part.seq)
        if not part.storing:  # with its image being written, it is recorded once the file is there
            self._record(part)
        self._forget_if_done(part)

    def _row_of(self, part: _Part) -> AcceptedPart:
        """The part's row as the writers address it (the loop knows its seq before the row exists)."""
        return part.row or AcceptedPart(part.seq, part.part_id, self.camera_id, part.recipe.product or "", 0,
                                        part.trigger.at_wall, "", 0, 0)

    def _record(self, part: _Part) -> None:
        """Hand the decision to the row writer (after its row, in order); published once journaled."""
        assert part.result is not None
        part.recorded = True
        result = self._with_image(part, part.result)
        part.result = result
        self._unrecorded += 1
        self._recent[part.seq] = (result, 0)
        while len(self._recent) > RECENT_DECISIONS:
            self._recent.popitem(last=False)
        self._rows.submit(f"seq {part.seq}: decision", lambda: self.journal.complete(result),
                          lambda stored, error: self.events.put(("recorded", part.seq, stored or result, error)))
        for later in part.later:
            self._submit_revision(*later)
        part.later.clear()

    def _with_image(self, part: _Part, result: InspectionResult) -> InspectionResult:
        update: dict[str, Any] = {"latency_ms": dict(part.latency)}
        if part.image is not None:
            update.update(image_path=part.image.path, image_width=part.image.width, image_height=part.image.height)
        if part.disk_full and not any(p.startswith("minimal record") for p in result.problems):
            update["problems"] = [*result.problems, f"minimal record: {part.disk_full}"]
        return result.model_copy(update=update)

    def _revise(self, part: _Part, verdict: Verdict, reason: str, inference: Inference | None,
                source: DecisionSource) -> None:
        first = part.result
        assert first is not None
        revision = self._result(part, verdict, reason + " (after the line's decision)", inference, revision=0,
                                source=source, action=first.action, decided_wall=time.time())
        if part.recorded:
            self._submit_revision(revision)
        else:
            part.later.append((revision,))

    def _submit_revision(self, revision: InspectionResult) -> None:
        """Number a revision after the part's newest record and hand it to the row writer."""
        decision, last = self._recent.get(revision.seq, (revision, 0))
        number = last + 1
        revision = revision.model_copy(update={"revision": number})
        self._recent[revision.seq] = (decision, number)
        self._rows.submit(f"seq {revision.seq}: revision {number}", lambda: self.journal.revise(revision),
                          lambda stored, error: self.events.put(("revised", revision.seq, stored or revision, error)))

    def _on_missed(self, seq: int, why: str) -> None:
        """A reject the line did not carry out (its part passed the ejector): counted, and journaled
        and published as a revision of the part. The alarm is the PLC link's (`plc.ejector`), which
        clears itself once no part has been missed for a while."""
        self.missed_ejections += 1
        known = self._recent.get(seq)
        if known is None:
            log.error("missed ejection of seq %d, which is no longer in memory: %s", seq, why)
            return
        decision = known[0]
        revision = decision.model_copy(update={
            "reason": f"missed ejection: {why}", "problems": [*decision.problems, f"missed ejection: {why}"],
            "decided_at": utc(time.time()),
        })
        self._submit_revision(revision)

    def _on_recorded(self, kind: str, seq: int, result: InspectionResult, error: BaseException | None) -> None:
        if kind == "recorded":
            self._unrecorded -= 1
        if error is not None:
            self.health.problem(JOURNAL_ALARM, f"seq {seq} not journaled: {error}")
            if kind == "recorded":  # later seqs are not held back behind it
                self._unpublishable.add(seq)
                self._queue_publish(None)
            return
        if self._rows.backlog == 0:
            self.health.clear(JOURNAL_ALARM)
        if kind == "recorded":
            self.health.record_part(result, {"trigger_to_decision": result.latency_ms.get("trigger_to_decision", 0.0)})
        else:
            self.revised += 1
        self._queue_publish(result)

    def _result(self, part: _Part, verdict: Verdict, reason: str, inference: Inference | None, *, revision: int,
                source: DecisionSource, action: LineAction | None, decided_wall: float) -> InspectionResult:
        frame = part.frame
        return build_result(
            station=self.station, seq=part.seq, part_id=part.part_id, camera=self.camera_id,
            frame_number=frame.frame_number if frame is not None else 0,
            captured_at=utc(frame.captured_wall if frame is not None else part.trigger.at_wall),
            verdict=verdict, reason=reason, model=self.models.get(part.recipe.model), inference=inference,
            image=(part.image.path, part.image.width, part.image.height) if part.image is not None else ("", 0, 0),
            gate_score=part.gate_score, gate_threshold=part.gate_threshold, gate_bank=part.gate_bank,
            latency=part.latency,
            problems=[f"minimal record: {part.disk_full}"] if part.disk_full else [],
            source=source, action=action, revision=revision, decided_at=utc(decided_wall),
            triggered_at=utc(part.trigger.at_wall), deadline_ms=part.recipe.deadline_ms, recipe=part.recipe.name,
        )

    def _forget_if_done(self, part: _Part) -> None:
        """A part leaves memory once decided and recorded with nothing more to come for it; a part
        without a frame leaves at its decision (a frame after that belongs to no part)."""
        if part.result is None or not part.recorded or part.storing or part.gate_pending or part.vlm_pending:
            return
        self.parts.pop(part.key, None)

    def resume_publishing(self, next_seq: int) -> None:
        """Publishing goes on from `next_seq` (the parts before it were recorded at start-up)."""
        self._next_pub = next_seq

    @property
    def unjournaled(self) -> int:
        """Decisions made and not yet in the journal (a locked or full disk)."""
        return self._unrecorded

    def counters(self) -> dict[str, float]:
        """The loop's running counters (status, metrics, OPC UA)."""
        return {
            "decided": self.decided,
            "revisions": self.revised,
            "deadline_misses": self.deadline_misses,
            "missed_ejections": self.missed_ejections,
            "vlm_dropped": self.runner.dropped if self.runner is not None else 0,
            "loop_stall_ms_max": round(self.loop.max_ms, 3),
            "loop_stall_ms_p99": self.loop.p99(),
            "parts_in_flight": len(self.parts),
            "unjournaled": self._unrecorded,
            **{f"decided_{k}": v for k, v in sorted(self.counts.items())},
        }

    # ---- the bus, in seq order ----------------------------------------------------------------

    def _queue_publish(self, result: InspectionResult | None) -> None:
        if result is not None:
            heapq.heappush(self._to_publish, (result.seq, next(self._pub_order), result))
        while True:
            while self._next_pub in self._unpublishable:
                self._unpublishable.discard(self._next_pub)
                self._next_pub += 1
            if not self._to_publish or self._to_publish[0][0] > self._next_pub:
                return
            seq, _, r = heapq.heappop(self._to_publish)
            self.outputs.recorded(r)
            if seq == self._next_pub and r.revision == 0:
                self._next_pub += 1
