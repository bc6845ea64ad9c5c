"""Free-run mode: every frame a camera delivers is a part; no trigger, no deadline.

One part through the station: frame → journal → inspection core (gate, model, verdict, result;
adfm.appliance.inspection.core, shared with line mode) → journal → outputs (bus, …).

Order matters for the guarantees: a frame is journaled (row + image file) before the camera is
acknowledged, and its result is journaled before it is published. Parts are processed one at a
time in seq order, so done rows always form a prefix and subscribers can fill any gap by replay.

Verdict policy: `fail` when the model answers yes, `pass` when it answers no, `review` when the
answer cannot be read or the inference worker failed on both attempts (the reason says which).
With a screening gate in `screen` mode, parts the gate finds unsuspicious `pass` on its word.

When the journal cannot write (a full disk), nothing is lost and the service stays up: a frame
that cannot be journaled goes back to its camera (a folder delivers the file again), a result
that cannot be recorded is kept and recorded before any new part is taken, and intake pauses
(JOURNAL_RETRY_S) between attempts while the `journal` problem is reported. A damaged database
(JournalCorrupt) is not retried: it leaves the pipeline for the service to stop on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from adfm.camera.frame import Frame
from adfm.schema import CameraStatus, DecisionSource, InspectionResult, Verdict

from ..inspection.core import (
    GenerationOptions,
    Inference,
    ModelInfo,
    build_result,
    gate_pass_reason,
    infer,
    ms_since,
    score_gate,
    verdict_for,
)
from ..inspection.worker import InferenceWorker, WorkerStartError
from ..journal.store import AcceptedPart, Journal, JournalCorrupt, JournalError, JournalFullError
from ..system.health import Health
from .outputs import Outputs

log = logging.getLogger(__name__)

MAX_RECOVERIES = 2  # start-ups that may find a part pending before it is recorded `review`
JOURNAL_RETRY_S = (0.5, 5.0)  # pause before the next journal attempt after a failure: first, most


class PipelineFatal(RuntimeError):
    """The pipeline cannot go on (the model does not load); the part in hand stays pending."""


class Camera(Protocol):
    """What the pipeline needs of a capture worker (adfm.camera.CameraWorker)."""

    def get(self, timeout: float) -> Frame | None: ...
    def ack(self, frame: Frame) -> None: ...
    # optional: def release(self, frame: Frame) -> None — deliver a frame again that was not journaled
    def status(self) -> CameraStatus: ...
    @property
    def finished(self) -> bool: ...


@dataclass
class Analysis:
    """What the gate and the model made of a part's image, before its result is recorded."""

    gate: Any = None  # the gate's result (None: no gate, or it failed)
    gate_score: float | None = None
    gate_bank: str = ""
    gate_threshold: float | None = None
    suspicious: bool = True
    inference: Inference | None = None  # None: screened out by the gate
    ms: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Drives parts through the station. Not thread-safe: the service's main loop owns it."""

    def __init__(
        self,
        station: str,
        journal: Journal,
        outputs: Outputs,
        worker: InferenceWorker,
        health: Health,
        model: ModelInfo,
        cameras: dict[str, Camera],
        *,
        products: dict[str, str | None] | None = None,
        references: dict[str, np.ndarray] | None = None,
        gate: Any = None,
        gate_mode: str = "off",
        save_heatmap: Callable[[Any, Path], None] | None = None,
        dedupe_cameras: set[str] | None = None,
        generation: GenerationOptions | None = None,
    ) -> None:
        self.station = station
        self.journal = journal
        self.outputs = outputs
        self.worker = worker
        self.health = health
        self.model = model
        self.cameras = cameras
        self.products = products or {}
        self.references = references or {}
        self.gate = gate
        self.gate_mode = gate_mode
        self._save_heatmap = save_heatmap
        self.dedupe_cameras = dedupe_cameras or set()
        self.generation = generation or GenerationOptions()
        self.processed = 0
        #: milliseconds the last part spent being journaled as done and handed to the bus (these
        #: come after its result is built, so they are not in its latency_ms; health and the
        #: overhead benchmark read them here)
        self.last_record_ms: dict[str, float] = {}
        self._rr = 0
        self._journal_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adfm-journal")
        self._unrecorded: list[InspectionResult] = []  # results the journal refused, oldest first
        self._journal_failures = 0
        self._hold_until = 0.0  # no intake before this (monotonic) after a journal failure

    # ---- frames ---------------------------------------------------------------------------------

    def next_frame(self, timeout_s: float) -> Frame | None:
        """The next frame from any camera (round robin), waiting at most `timeout_s`."""
        ids = list(self.cameras)
        if len(ids) == 1:
            return self.cameras[ids[0]].get(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            for k in range(len(ids)):
                i = (self._rr + k) % len(ids)
                frame = self.cameras[ids[i]].get(timeout=0.0 if k else 0.01)
                if frame is not None:
                    self._rr = (i + 1) % len(ids)
                    return frame
            if time.monotonic() >= deadline:
                return None

    def poll(self, timeout_s: float) -> InspectionResult | None:
        """Record any result the journal refused earlier, then take the next part — unless the
        journal is failing, in which case wait (at most `timeout_s`) before trying again."""
        wait = self._hold_until - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout_s))
            return None
        if self._unrecorded and not self._record_unrecorded():
            return None
        frame = self.next_frame(timeout_s)
        return None if frame is None else self.process(frame)

    @property
    def unrecorded(self) -> int:
        """Results waiting for the journal to accept them."""
        return len(self._unrecorded)

    def _journal_failed(self, exc: JournalError) -> None:
        """A journal write failed: report it and pause intake, longer while it keeps failing."""
        if isinstance(exc, JournalCorrupt):
            raise exc
        self._journal_failures += 1
        first, most = JOURNAL_RETRY_S
        self._hold_until = time.monotonic() + min(most, first * 2 ** min(self._journal_failures - 1, 8))
        what = "disk full" if isinstance(exc, JournalFullError) else "journal failing"
        self.health.problem("journal", f"{what}: parts are held back until it can write again: {exc}")
        if self._journal_failures == 1 or self._journal_failures % 20 == 0:
            log.error("%s (failure %d)", exc, self._journal_failures)

    def _journal_ok(self) -> None:
        if self._journal_failures:
            log.warning("the journal writes again after %d failures", self._journal_failures)
        self._journal_failures = 0
        self._hold_until = 0.0
        self.health.clear("journal")

    def _record_unrecorded(self) -> bool:
        """Record the held results in order; True when none is left."""
        while self._unrecorded:
            if self._record(self._unrecorded[0], retry=True) is None:
                return False
            self._unrecorded.pop(0)
        return True

    def process(self, frame: Frame) -> InspectionResult | None:
        """Journal, inspect, record and publish one frame. None when it could not be accepted
        (disk full): the camera is then not acknowledged, so a folder source keeps the file.

        Journaling (PNG encoding, fsync, commit) runs in a helper thread while the part is screened
        and inspected; the result waits for it, so a part is journaled before it is acknowledged,
        completed or published, and the encoding is off the part's critical path.
        """
        t_pick = time.perf_counter()
        capture_ms = round(max(0.0, time.monotonic() - frame.captured_mono) * 1000.0, 3)
        product = self.products.get(frame.camera_id)
        accepting = self._journal_thread.submit(self._accept, frame, product)
        try:
            analysis = self._analyse(frame.image, product)
        except BaseException:
            self._settle(accepting)  # journaled or not, cleanly: a pending part is finished at next start
            raise
        t0 = time.perf_counter()
        part, journal_ms = self._settle(accepting)
        wait_ms = ms_since(t0)
        cam = self.cameras.get(frame.camera_id)
        if part is None:
            release = getattr(cam, "release", None)
            if release is not None:
                release(frame)  # a folder delivers the file again once the journal can write
            return None
        if cam is not None:
            cam.ack(frame)
        if part.duplicate:
            log.warning("part %s from %s was journaled before (seq %d); not inspected again",
                        frame.part_id, frame.camera_id, part.seq)
            return self.journal.get(part.seq)
        latency = {"capture": capture_ms, "journal": journal_ms, "journal_wait": wait_ms, **analysis.ms}
        return self._finish(part, analysis, latency, t_pick)

    def _accept(self, frame: Frame, product: str | None) -> tuple[AcceptedPart, float]:
        t0 = time.perf_counter()
        part = self.journal.accept(
            frame.image,
            part_id=frame.part_id,
            camera=frame.camera_id,
            frame_number=frame.frame_number,
            captured_wall=frame.captured_wall,
            product=product or "",
            dedupe_key=self._dedupe_key(frame),
            encoded=frame.encoded,
        )
        return part, ms_since(t0)

    def _settle(self, accepting: Future) -> tuple[AcceptedPart | None, float]:
        """The journaling's outcome; a journal failure becomes a standing problem, not a crash."""
        try:
            part, ms = accepting.result()
        except JournalError as exc:  # JournalFullError included; JournalCorrupt is raised on
            self._journal_failed(exc)
            return None, 0.0
        if not self._unrecorded:
            self._journal_ok()
        return part, ms

    def close(self) -> None:
        self._journal_thread.shutdown(wait=True)

    def _dedupe_key(self, frame: Frame) -> str | None:
        """Folder sources re-deliver a file whose acknowledgement a crash prevented: the same camera,
        name and pixels is the same part."""
        if frame.camera_id not in self.dedupe_cameras:
            return None
        digest = hashlib.blake2b(np.ascontiguousarray(frame.image).tobytes(), digest_size=12).hexdigest()
        return f"{frame.camera_id}/{frame.part_id}/{digest}"

    # ---- recovery -------------------------------------------------------------------------------

    def recover(self) -> list[InspectionResult | None]:
        """Finish the parts a previous run accepted but did not complete (oldest first); None for
        a result the journal could not record yet (it is recorded before the next part)."""
        out: list[InspectionResult | None] = []
        for part in self.journal.pending():
            times = self.journal.note_recovery(part.seq)
            t_pick = time.perf_counter()
            if times > MAX_RECOVERIES:
                out.append(self._finish_review(
                    part, f"the service stopped {times - 1} times while inspecting this part", t_pick))
                continue
            try:
                image = self.journal.load_image(part)
            except JournalError as exc:
                out.append(self._finish_review(part, f"journaled image unreadable: {exc}", t_pick))
                continue
            log.info("recovering part %s (seq %d) left pending by the previous run", part.part_id, part.seq)
            out.append(self.inspect(part, image, {}, t_pick))
        return out

    def _finish_review(self, part: AcceptedPart, reason: str, t_pick: float) -> InspectionResult | None:
        result = self._result(part, "review", reason, None, {"total": ms_since(t_pick)})
        return self._record(result)

    # ---- inspection -----------------------------------------------------------------------------

    def inspect(
        self, part: AcceptedPart, image: np.ndarray, latency: dict[str, float], t_pick: float
    ) -> InspectionResult | None:
        """Inspect a journaled part (used for parts recovered at start-up)."""
        analysis = self._analyse(image, self.products.get(part.camera) or part.product or None)
        return self._finish(part, analysis, {**latency, **analysis.ms}, t_pick)

    def _analyse(self, image: np.ndarray, product: str | None) -> Analysis:
        """Gate (when configured), then the model unless the gate screened the part out."""
        out = Analysis()
        if self.gate is not None and self.gate_mode != "off":
            scored = score_gate(self.gate, image)
            out.gate, out.gate_score, out.suspicious = scored.result, scored.score, scored.suspicious
            out.gate_bank = scored.bank_sha256
            out.gate_threshold = scored.threshold
            if scored.error:
                self.health.problem("gate", scored.error)
            else:
                self.health.clear("gate")
            out.ms["gate"] = scored.ms
            if self.gate_mode == "screen" and not out.suspicious:
                return out
        out.inference = self._infer(image, product)
        out.ms.update(out.inference.ms)
        return out

    def _finish(
        self, part: AcceptedPart, analysis: Analysis, latency: dict[str, float], t_pick: float
    ) -> InspectionResult | None:
        gate_map = self._store_map(part, analysis.gate) if analysis.gate is not None else ""
        inference = analysis.inference
        latency["total"] = ms_since(t_pick)
        if inference is None:
            reason = gate_pass_reason(analysis.gate_score)
            result = self._result(part, "pass", reason, None, latency, analysis.gate_score, gate_map, source="gate",
                                  gate_bank=analysis.gate_bank, gate_threshold=analysis.gate_threshold)
        else:
            verdict, reason = verdict_for(inference.parsed, inference.failures)
            result = self._result(part, verdict, reason, inference, latency, analysis.gate_score, gate_map,
                                  source="vlm", gate_bank=analysis.gate_bank, gate_threshold=analysis.gate_threshold)
        return self._record(result)

    def _store_map(self, part: AcceptedPart, gate_result: Any) -> str:
        """Journal the gate's heat map next to the part's image; '' when it could not be stored."""
        save = self._save_heatmap
        if save is None:
            from adfm.runtime.gate import save_heatmap as save
        try:
            return self.journal.attach_map_file(part.seq, lambda path: save(gate_result, path))
        except (JournalError, OSError, ValueError) as exc:
            log.warning("gate heat map of seq %d not stored: %s", part.seq, exc)
            return ""

    def _infer(self, image: np.ndarray, product: str | None) -> Inference:
        reference = self.references.get(product) if product else None
        g = self.generation

        def generate(images: list[np.ndarray]):
            reply = self.worker.generate(images, prompt_version=self.model.prompt_version, product=product,
                                         max_tokens=g.max_tokens, temperature=g.temperature, seed=g.seed)
            self.health.clear("worker")
            return reply

        def failed(attempt: int, exc: Exception) -> None:
            if isinstance(exc, WorkerStartError):
                self.health.problem("worker", str(exc))
                log.error("inference worker could not start: %s", exc)
            else:
                log.warning("inference attempt %d failed: %s", attempt, exc)

        out = infer(generate, self.model, image, reference, on_failure=failed)
        if out.parsed is None and out.start_errors == out.attempts:
            raise PipelineFatal(f"the inference worker cannot start: {out.failures[-1]}")
        return out

    def _result(
        self,
        part: AcceptedPart,
        verdict: Verdict,
        reason: str,
        inference: Inference | None,
        latency: dict[str, float],
        gate_score: float | None = None,
        gate_map: str = "",
        source: DecisionSource | None = None,
        gate_bank: str = "",
        gate_threshold: float | None = None,
    ) -> InspectionResult:
        return build_result(
            station=self.station, seq=part.seq, part_id=part.part_id, camera=part.camera,
            frame_number=part.frame_number, captured_at=part.captured_at, verdict=verdict, reason=reason,
            model=self.model, inference=inference, image=(part.image_path, part.image_width, part.image_height),
            gate_score=gate_score, gate_threshold=gate_threshold, gate_map=gate_map, gate_bank=gate_bank,
            latency=latency, source=source,
        )

    def _record(self, result: InspectionResult, retry: bool = False) -> InspectionResult | None:
        """Journal the result, count it, then publish it (so a status never lags a published seq).
        When the journal refuses it, keep it for `poll` to record first and return None."""
        t0 = time.perf_counter()
        try:
            stored = self.journal.complete(result)
        except JournalError as exc:
            if not retry:
                self._unrecorded.append(result)
            self._journal_failed(exc)
            return None
        if retry or not self._unrecorded:
            self._journal_ok()
        complete_ms = ms_since(t0)
        self.health.record_part(stored, {"complete": complete_ms})
        t0 = time.perf_counter()
        self.outputs.recorded(stored)
        publish_ms = ms_since(t0)
        self.health.record_stage("publish", publish_ms)
        self.last_record_ms = {"complete": complete_ms, "publish": publish_ms}
        self.processed += 1
        return stored


class FreeRunStation:
    """Free-run mode assembled from the station config: the inference worker and the pipeline.

    The service drives it like the line (`start`, `recover`, `step`, `decided`, `close`); a frame's
    arrival is its trigger, and there is no deadline to keep."""

    def __init__(
        self,
        station: str,
        *,
        journal: Journal,
        health: Health,
        outputs: Outputs,
        cameras: dict[str, Camera],
        worker: InferenceWorker,
        model: ModelInfo,
        generation: GenerationOptions,
        products: dict[str, str | None],
        references: dict[str, np.ndarray],
        gate: Any = None,
        gate_mode: str = "off",
        dedupe_cameras: set[str] | None = None,
    ) -> None:
        self.worker = worker
        self.pipeline = Pipeline(station, journal, outputs, worker, health, model, cameras, products=products,
                                 references=references, gate=gate, gate_mode=gate_mode,
                                 dedupe_cameras=dedupe_cameras, generation=generation)

    def start(self) -> None:
        self.worker.start()

    def recover(self) -> None:
        self.pipeline.recover()

    def step(self, timeout_s: float) -> None:
        self.pipeline.poll(timeout_s)

    @property
    def decided(self) -> int:
        return self.pipeline.processed

    def counters(self) -> dict[str, float]:
        return {"decided": self.pipeline.processed, "unrecorded": self.pipeline.unrecorded}

    def worker_state(self) -> tuple[bool, int]:
        return self.worker.alive, self.worker.restarts

    def close(self) -> None:
        self.pipeline.close()
        self.worker.stop()
