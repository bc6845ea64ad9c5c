"""Decisions in time: every triggered part gets exactly one decision before its deadline.

A trigger (from the PLC link or a control command) opens the part's journal row at once, so no
trigger can vanish, and asks the line camera for the first frame captured at or after it. Then,
for each part, the first of these decides it:
- the gate (recipe gate mode `screen`) finds it confidently good → `pass` (source `gate`);
- the VLM answers before the deadline → its verdict (source `vlm`; an unreadable answer gets the
  fail-safe action);
- `margin_ms` before the deadline → the recipe's fail-safe action, source `failsafe_missed_frame`
  (no frame yet), `failsafe_model_down` (the model cannot be loaded) or `failsafe_timeout`;
- its image cannot be stored (disk full) → the fail-safe at once, `failsafe_disk_full`, the row
  kept as a minimal record without image.
The decision is journaled, handed to the outputs (the PLC link) and published. When the VLM's
verdict comes after a fail-safe decision, it is journaled and published as revision 1 of the same
part (same seq and part id) for review; the line's action is not changed by it.

One thread (the service's loop) owns every part; triggers, frames and VLM answers reach it
through one queue. The bus gets results in seq order (a decided part waits for earlier parts,
at most their deadline), as its subscribers fill gaps by seq.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from adfm.camera.frame import Frame
from adfm.schema import Box, DecisionSource, InspectionResult, LineAction

from ..inspection.runner import VlmJob, VlmRunner
from ..journal.store import AcceptedPart, Journal, JournalError
from ..system.health import Health
from .freerun import Inference, verdict_for

log = logging.getLogger(__name__)

#: Health key of the line's journal alarms (a full disk). Not a critical key: the line keeps deciding
#: with minimal records, so the watchdog must not restart the service over it.
JOURNAL_ALARM = "line.journal"
#: What a journal write can raise on a full or failing disk (SQLite's own errors included).
JOURNAL_FAILURES = (JournalError, sqlite3.Error, OSError)


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


class DecisionOutput(Protocol):
    """Where a decision goes besides journal and bus (the PLC link)."""

    def decided(self, seq: int, action: LineAction, source: DecisionSource, trigger: LineTrigger) -> None: ...


@dataclass
class _Part:
    key: str
    part_id: str
    trigger: LineTrigger
    recipe: Recipe
    deadline_mono: float
    failsafe_mono: float
    row: AcceptedPart | None = None
    frame: Frame | None = None
    gate_score: float | None = None
    result: InspectionResult | None = None
    vlm_pending: bool = False
    disk_full: str = ""
    attaching: bool = False  # its image is being written (journal thread)
    waiting: tuple | None = None  # a gate/VLM decision waiting for the image to be journaled
    unrecorded: bool = False  # decided (and sent to the PLC) while its image was still being written
    late_verdict: tuple | None = None  # a revision that came before the decision was journaled
    latency: dict[str, float] = field(default_factory=dict)


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000.0, 3)


def _utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


class LineController:
    """Drives triggered parts to their decisions. Call `trigger()` from any thread; `step()` from one."""

    def __init__(
        self,
        station: str,
        journal: Journal,
        publish: Callable[[InspectionResult], None],
        health: Health,
        camera: Any,
        camera_id: str,
        runner: VlmRunner | None,
        recipes: dict[str, Recipe],
        default_recipe: str,
        model_ids: dict[str, tuple[str, str]],
        *,
        margin_ms: float = 50.0,
        outputs: list[DecisionOutput] | None = None,
        on_result: Callable[[InspectionResult], None] | None = None,
    ) -> None:
        self.station = station
        self.journal = journal
        self.publish = publish
        self.health = health
        self.camera = camera
        self.camera_id = camera_id
        self.runner = runner
        self.recipes = recipes
        self.by_code = {r.code: r for r in recipes.values() if r.code is not None}
        self.active_recipe = default_recipe
        self.model_ids = model_ids  # model key → (model_id, prompt_version)
        self.margin_s = margin_ms / 1000.0
        self.outputs = outputs or []
        self.on_result = on_result
        self.events: queue.Queue = queue.Queue()
        self.parts: dict[str, _Part] = {}
        self._unjournaled: list[_Part] = []  # decided, but not even a row fits on the disk
        self._to_publish: list[tuple[int, int, InspectionResult]] = []
        self._pub_order = itertools.count()
        self._next_pub = journal.last_seq() + 1
        self._keys = itertools.count(1)
        self.decided = 0
        self.revised = 0
        self.skipped = 0  # late parts the VLM never inspected (backlog full): their fail-safe stands alone
        self.counts: dict[str, int] = {}
        self._pump_stop = threading.Event()
        self._pump: threading.Thread | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adfm-line-journal")

    # ---- inputs (any thread) ------------------------------------------------------------------

    def trigger(self, trigger: LineTrigger) -> None:
        self.events.put(("trigger", trigger))

    def select_recipe(self, name: str) -> None:
        """Changeover by command: the recipe for triggers that name none (ValueError if unknown)."""
        if name not in self.recipes:
            raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(self.recipes))}")
        self.events.put(("recipe", name))

    def vlm_done(self, key: str, inference: Inference) -> None:
        self.events.put(("vlm", key, inference))

    def vlm_skipped(self, key: str) -> None:
        self.events.put(("skipped", key))

    def start(self) -> None:
        """Start pumping the line camera's frames into the event queue."""
        self._pump = threading.Thread(target=self._pump_frames, name="adfm-line-frames", daemon=True)
        self._pump.start()

    def close(self) -> None:
        self._pump_stop.set()
        if self._pump is not None:
            self._pump.join(2.0)
        self._writer.shutdown(wait=True)
        while True:  # images written meanwhile: record the decisions that waited for them
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if event[0] == "attached":
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
            self._due(now)
            due = min((p.failsafe_mono for p in self.parts.values() if p.result is None), default=end)
            wait = min(end, due) - now
            try:
                event = self.events.get(timeout=max(0.0, wait)) if wait > 0 else self.events.get_nowait()
            except queue.Empty:
                if time.monotonic() >= end:
                    self._due(time.monotonic())
                    self._retry_unjournaled()
                    return
                continue
            self._handle(event)

    def _handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "trigger":
            self._on_trigger(event[1])
        elif kind == "frame":
            self._on_frame(event[1])
        elif kind == "vlm":
            self._on_vlm(event[1], event[2])
        elif kind == "skipped":
            self.skipped += 1
            part = self.parts.get(event[1])
            if part is not None:
                part.vlm_pending = False
                self._forget_if_done(part)
        elif kind == "attached":
            self._on_attached(event[1], event[2], event[3])
        elif kind == "recipe":
            self.active_recipe = event[1]
            log.info("recipe changed to %s", event[1])

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
        part_id = trigger.part_id or f"{self.camera_id}-{_utc(trigger.at_wall).strftime('%Y%m%dT%H%M%S.%f')[:-3]}Z"
        deadline = trigger.at_mono + recipe.deadline_ms / 1000.0
        part = _Part(key, part_id, trigger, recipe, deadline, max(trigger.at_mono, deadline - self.margin_s))
        self.parts[key] = part
        try:
            part.row = self.journal.open_part(part_id=part_id, camera=self.camera_id, triggered_wall=trigger.at_wall,
                                              product=recipe.product or "")
            self.health.clear(JOURNAL_ALARM)
        except JOURNAL_FAILURES as exc:
            self.health.problem(JOURNAL_ALARM, str(exc))
            part.disk_full = str(exc)
            self._decide_failsafe(part, "failsafe_disk_full", f"part not journaled: {exc}")
            return
        try:
            self.camera.fire(key, trigger.at_mono, deadline)
        except Exception as exc:  # a camera that cannot take triggers: the deadline records it missed
            log.error("camera %s: cannot fire trigger: %s", self.camera_id, exc)

    def _on_frame(self, frame: Frame) -> None:
        part = self.parts.get(frame.part_id)
        if part is None or part.frame is not None or part.row is None:
            log.warning("camera %s: frame %d for no waiting part (%s)", frame.camera_id, frame.frame_number,
                        frame.part_id)
            return
        part.frame = frame
        part.latency["trigger_to_frame"] = _ms(part.trigger.at_mono, frame.captured_mono)
        # The image is written (encoded unless the camera's own file is kept; fsync) in the journal
        # thread: the loop keeps serving deadlines.
        part.attaching = True
        row, t0 = part.row, time.monotonic()
        future = self._writer.submit(self.journal.attach_image, row, frame.image, frame_number=frame.frame_number,
                                     captured_wall=frame.captured_wall, encoded=frame.encoded)
        key = part.key

        def attached(f: Future) -> None:
            self.events.put(("attached", key, f, t0))

        future.add_done_callback(attached)
        if part.result is not None:  # the frame came after the deadline: inspect it for the revision
            self._submit_vlm(part)
            return
        recipe = part.recipe
        if recipe.gate is not None and recipe.gate_mode != "off":
            t0 = time.monotonic()
            try:
                scored = recipe.gate.score(frame.image)
                part.gate_score = float(scored.score)
                suspicious = bool(scored.suspicious)
                self.health.clear("gate")
            except Exception as exc:  # a failing gate never passes a part unseen
                self.health.problem("gate", f"screening gate failed: {exc}")
                suspicious = True
            part.latency["gate"] = _ms(t0, time.monotonic())
            if recipe.gate_mode == "screen" and not suspicious:
                reason = f"screening gate: score {part.gate_score:.4f} below its threshold"
                self._decide_when_journaled(part, ("pass", "pass", "gate", reason, None))
                return
        self._submit_vlm(part)

    def _decide_when_journaled(self, part: _Part, decision: tuple) -> None:
        """A gate or VLM decision counts once the part's image is journaled (a full disk turns it into
        the fail-safe); until then it waits — the deadline's fail-safe still comes first if due."""
        if part.attaching:
            part.waiting = decision
        elif part.disk_full:
            self._decide_failsafe(part, "failsafe_disk_full", f"image not journaled: {part.disk_full}")
        else:
            self._decide(part, *decision)

    def _on_attached(self, key: str, future: Future, t0: float) -> None:
        part = self.parts.get(key)
        if part is None:
            return
        part.attaching = False
        part.latency["journal"] = _ms(t0, time.monotonic())
        try:
            part.row = future.result()
            self.health.clear(JOURNAL_ALARM)
        except Exception as exc:  # JournalFullError above all: the row stays, as a minimal record
            part.disk_full = str(exc)
            self.health.problem(JOURNAL_ALARM, str(exc))
        if part.result is None:
            if part.disk_full:
                self._decide_failsafe(part, "failsafe_disk_full", f"image not journaled: {part.disk_full}")
            elif part.waiting is not None:
                self._decide(part, *part.waiting)
        elif part.unrecorded:
            part.unrecorded = False
            self._record(part, self._with_image(part, part.result))
            if part.late_verdict is not None:
                self._revise(part, *part.late_verdict)
                part.late_verdict = None
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
        now = time.monotonic()
        if part.result is None and now < part.deadline_mono:
            action: LineAction = {"pass": "pass", "fail": "reject"}.get(verdict, part.recipe.failsafe)  # type: ignore[assignment]
            if verdict == "review":
                reason += f"; fail-safe action {part.recipe.failsafe}"
            self._decide_when_journaled(part, (verdict, action, "vlm", reason, inference))
        elif part.result is not None:
            self._revise(part, verdict, reason, inference)
        self._forget_if_done(part)

    def _due(self, now: float) -> None:
        for part in list(self.parts.values()):
            if part.result is None and now >= part.failsafe_mono:
                if part.frame is None:
                    self._decide_failsafe(part, "failsafe_missed_frame",
                                          "no frame from the camera by the deadline (dropped, late or camera down)")
                elif self.runner is not None and self.runner.down:
                    self._decide_failsafe(part, "failsafe_model_down", f"model down: {self.runner.down_reason}")
                else:
                    self._decide_failsafe(part, "failsafe_timeout",
                                          f"the VLM did not answer within {part.recipe.deadline_ms:g} ms")
                self._forget_if_done(part)

    # ---- decisions ----------------------------------------------------------------------------

    def _decide_failsafe(self, part: _Part, source: DecisionSource, reason: str) -> None:
        action = part.recipe.failsafe
        self._decide(part, "review", action, source, f"{reason}; fail-safe action {action}")

    def _decide(self, part: _Part, verdict: str, action: LineAction, source: DecisionSource, reason: str,
                inference: Inference | None = None) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        part.latency["trigger_to_decision"] = _ms(part.trigger.at_mono, now_mono)
        result = self._result(part, verdict, reason, inference, revision=0, source=source, action=action,
                              decided_wall=now_wall)
        part.result = result
        self.decided += 1
        self.counts[source] = self.counts.get(source, 0) + 1
        for out in self.outputs:  # the PLC first: its write is what the deadline is for
            try:
                out.decided(part.row.seq if part.row is not None else 0, action, source, part.trigger)
            except Exception:
                log.exception("decision output failed")
        if part.attaching:
            part.unrecorded = True  # journaled and published once its image is written
        else:
            self._record(part, result)
        self._forget_if_done(part)

    def _with_image(self, part: _Part, result: InspectionResult) -> InspectionResult:
        row = part.row
        update: dict[str, Any] = {}
        if row is not None:
            update = {"image_path": row.image_path, "image_width": row.image_width, "image_height": row.image_height,
                      "latency_ms": dict(part.latency)}
        if part.disk_full and not any(p.startswith("minimal record") for p in result.problems):
            update["problems"] = [*result.problems, f"minimal record: {part.disk_full}"]
        return result.model_copy(update=update) if update else result

    def _record(self, part: _Part, result: InspectionResult) -> None:
        """Journal a decision, then count and publish it (after the PLC already has it)."""
        part.result = result
        if part.row is None:
            self._unjournaled.append(part)
        else:
            try:
                result = self.journal.complete(result)
                part.result = result
            except JOURNAL_FAILURES as exc:
                self.health.problem(JOURNAL_ALARM, f"decision of seq {part.row.seq} not journaled yet: {exc}")
                self._unjournaled.append(part)
                return
            self.health.record_part(result, {"trigger_to_decision": part.latency["trigger_to_decision"]})
            self._queue_publish(result)
        if self.on_result is not None:
            self.on_result(result)

    def _revise(self, part: _Part, verdict: str, reason: str, inference: Inference) -> None:
        first = part.result
        assert first is not None
        if part.unrecorded:
            part.late_verdict = (verdict, reason, inference)
            return
        revision = self._result(part, verdict, reason + " (after the line's decision)", inference,
                                revision=first.revision + 1, source="vlm", action=first.action,
                                decided_wall=time.time())
        if part.row is None:
            return
        try:
            stored = self.journal.revise(revision)
        except JOURNAL_FAILURES as exc:
            self.health.problem(JOURNAL_ALARM, f"revision of seq {part.row.seq} not journaled: {exc}")
            return
        self.revised += 1
        self._queue_publish(stored)
        if self.on_result is not None:
            self.on_result(stored)

    def _result(self, part: _Part, verdict: str, reason: str, inference: Inference | None, *, revision: int,
                source: DecisionSource, action: LineAction | None, decided_wall: float) -> InspectionResult:
        parsed = inference.parsed if inference is not None else None
        row = part.row
        model_id, prompt_version = self.model_ids.get(part.recipe.model, ("", ""))
        boxes = [Box.from_xyxy(b, lab) for b, lab in zip(parsed.boxes, parsed.labels, strict=True)] if parsed else []
        problems = [*(parsed.problems if parsed else []), *(inference.failures if inference else [])]
        if part.disk_full:
            problems.append(f"minimal record: {part.disk_full}")
        captured_wall = part.frame.captured_wall if part.frame is not None else part.trigger.at_wall
        return InspectionResult(
            station=self.station,
            seq=row.seq if row is not None else 1,
            part_id=part.part_id,
            camera=self.camera_id,
            frame_number=part.frame.frame_number if part.frame is not None else 0,
            captured_at=_utc(captured_wall),
            verdict=verdict,  # type: ignore[arg-type]
            reason=reason,
            decision=parsed.decision if parsed else None,
            boxes=boxes,
            think=parsed.think if parsed else "",
            rethink=parsed.rethink if parsed else "",
            answer=parsed.answer if parsed else "",
            raw_response=inference.raw if inference else "",
            format_ok=parsed.format_ok if parsed else False,
            problems=problems,
            prompt_version=prompt_version,
            model_id=model_id,
            image_path=row.image_path if row is not None else "",
            image_width=row.image_width if row is not None else 0,
            image_height=row.image_height if row is not None else 0,
            gate_score=part.gate_score,
            latency_ms=dict(part.latency),
            attempts=inference.attempts if inference else 0,
            revision=revision,
            decision_source=source,
            action=action,
            decided_at=_utc(decided_wall),
            triggered_at=_utc(part.trigger.at_wall),
            deadline_ms=part.recipe.deadline_ms,
            recipe=part.recipe.name,
        )

    def _forget_if_done(self, part: _Part) -> None:
        if part.attaching or part.unrecorded:
            return
        if part.result is not None and not part.vlm_pending and (part.frame is not None or part.row is None
                                                                  or time.monotonic() > part.deadline_mono):
            self.parts.pop(part.key, None)

    def _retry_unjournaled(self) -> None:
        """Parts decided while not even their row fitted: journal them once there is room."""
        for part in list(self._unjournaled):
            assert part.result is not None
            try:
                if part.row is None:
                    part.row = self.journal.open_part(part_id=part.part_id, camera=self.camera_id,
                                                      triggered_wall=part.trigger.at_wall,
                                                      product=part.recipe.product or "")
                stored = self.journal.complete(part.result.model_copy(update={"seq": part.row.seq}))
            except JOURNAL_FAILURES:
                return
            self._unjournaled.remove(part)
            self.health.clear(JOURNAL_ALARM)
            self.health.record_part(stored)
            self._queue_publish(stored)
            if self.on_result is not None:
                self.on_result(stored)

    @property
    def unjournaled(self) -> int:
        return len(self._unjournaled)

    # ---- the bus, in seq order ----------------------------------------------------------------

    def _queue_publish(self, result: InspectionResult) -> None:
        heapq.heappush(self._to_publish, (result.seq, next(self._pub_order), result))
        while self._to_publish and self._to_publish[0][0] <= self._next_pub:
            seq, _, r = heapq.heappop(self._to_publish)
            self.publish(r)
            if seq == self._next_pub:
                self._next_pub += 1
