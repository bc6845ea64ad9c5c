"""The station's care of its screening gate, on one low-priority thread: drift and learning.

Why a thread of its own: both jobs take CPU the decision path must not wait for (learning from one
verdict runs the gate's feature graph and re-scores the calibration set: seconds), so the deciding
loop only hands results over (`recorded`, a bounded queue) and this thread does the rest.

- Drift: every part the gate scored feeds `DriftMonitor` under its recipe; a raised alarm is the
  health problem `gate.drift.<recipe>` with its figures (status on the bus, metrics, OPC UA), once,
  until it clears.
- Learning (`gate.learn` configured): operator verdicts are read from the journal after the last one
  handled (a cursor kept beside the learner's store, so a restart neither skips nor repeats one); a
  confirmed false alarm the gate still flags teaches the gate its patches, a confirmed defect is kept
  on record (`adfm.runtime.gate_learning`). The live gates reload the new files between two parts,
  and every later result carries the new `gate_bank_sha256`.
- Reload: a version installed by someone else (`adfm-appliance gate undo`) is picked up the same way.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adfm.schema import DECISION_TRAINING_LABEL, GateState, InspectionResult

from ..config.station import GateSection
from ..inspection.live_gate import GateSet, LiveGate
from ..journal.store import Journal, JournalError
from .health import Health
from .priority import lower_this_thread

log = logging.getLogger(__name__)

#: Results waiting for the drift test at most; beyond it the oldest are dropped (and counted).
QUEUE_LIMIT = 10_000
#: How often the thread looks for new verdicts and changed gate files.
POLL_S = 1.0
#: What a decision teaches the gate, read from the schema's one table of training labels.
LEARNS_FROM = {"normal": "false_alarm", "anomalous": "defect"}
CURSOR_FILE = "verdict_cursor.json"


@dataclass
class _Learning:
    learner: Any  # GateLearner
    cursor_path: Path
    changes: int = 0


class GateWatch:
    """Drift and learning for a station's gates; `recipe_gates` maps each recipe ('' = free-run) to
    its gate file."""

    def __init__(self, section: GateSection, journal: Journal, health: Health, gates: GateSet,
                 recipe_gates: dict[str, Path]) -> None:
        from adfm.runtime.gate_drift import DriftMonitor

        self.section = section
        self.journal = journal
        self.health = health
        self.gates = gates
        self.recipe_gates = dict(recipe_gates)
        d = section.drift
        self.drift = DriftMonitor(window=d.window, alpha=d.alpha, clear_alpha=d.clear_alpha,
                                  reference_size=d.reference_size) if d.enabled else None
        self._results: queue.Queue[InspectionResult] = queue.Queue(QUEUE_LIMIT)
        self.dropped = 0
        self.verdicts_handled = 0  # operator verdicts read (learned from or not), this run
        self._few_holdout: set[Path] = set()
        self._learning: dict[Path, _Learning] = {}
        self._changes: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for recipe in self.recipe_gates:
            self._set_reference(recipe)

    # ---- called by the station ------------------------------------------------------------------

    def recorded(self, result: InspectionResult) -> None:
        """An `Outputs` consumer: never blocks the deciding loop (a full queue drops the oldest)."""
        if result.revision or result.gate_score is None or self.drift is None:
            return
        while True:
            try:
                self._results.put_nowait(result)
                return
            except queue.Full:
                try:
                    self._results.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adfm-gate-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def states(self) -> list[GateState]:
        """Each recipe's gate as it runs now, for the status message and the metrics."""
        out = []
        for recipe, path in sorted(self.recipe_gates.items()):
            gate = self.gates.gates.get(path)
            drift = self.drift.state(recipe or "default") if self.drift is not None else {}
            out.append(GateState(
                recipe=recipe or "default",
                bank_sha256=(gate.bank_sha256 or "") if gate else "",
                bank_size=int(gate.metadata.model.get("bank_size", 0)) if gate else 0,
                threshold=gate.threshold if gate else None,
                learned_changes=self._changes.get(path, 0),
                drift_raised=bool(drift.get("raised", False)),
                drift_statistic=drift.get("statistic"),
                drift_critical=drift.get("critical"),
                drift_parts_seen=int(drift.get("parts_seen", 0)),
            ))
        return out

    # ---- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        lower_this_thread()
        if self.section.learn is not None:
            self._open_learners()
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                result = self._results.get(timeout=0.2)
            except queue.Empty:
                result = None
            if result is not None:
                self._observe(result)
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_S
                try:
                    self._learn_from_verdicts()
                    self._reload_changed()
                except Exception:  # one bad turn must not end the watch
                    log.exception("gate watch: a turn failed")
        while True:  # drain what was decided before the stop
            try:
                self._observe(self._results.get_nowait())
            except queue.Empty:
                break

    def _observe(self, result: InspectionResult) -> None:
        assert self.drift is not None and result.gate_score is not None
        recipe = result.recipe or "default"
        alarm = self.drift.observe(recipe, result.gate_score)
        if alarm is None:
            return
        key = f"gate.drift.{recipe}"
        if alarm.state == "raised":
            text = (f"gate scores of recipe {recipe} drift: KS D {alarm.statistic:.3f} above {alarm.critical:.3f} "
                    f"(p {alarm.p_value:.2g}) over the last {alarm.window_size} parts, median score "
                    f"{alarm.window_median:.4f} against {alarm.reference_median:.4f} at commissioning; check the "
                    "lighting, the lens and the material, then retrain or recommission the gate")
            log.warning("%s (part %s, seq %d)", text, result.part_id, result.seq)
            self.health.problem(key, text)
        else:
            log.info("gate scores of recipe %s back in line: KS D %.3f (seq %d)", recipe, alarm.statistic, result.seq)
            self.health.clear(key)

    def _set_reference(self, recipe: str) -> None:
        """The recipe's reference: the trainer's held-out good scores, or the next parts it sees."""
        from adfm.runtime.gate_drift import reference_scores

        if self.drift is None:
            return
        name = recipe or "default"
        self.drift.reset(name)
        gate = self.gates.gates.get(self.recipe_gates[recipe])
        if self.section.drift.reference == "holdout" and gate is not None:
            scores = reference_scores(gate.metadata)
            if len(scores) >= 10:
                self.drift.set_reference(name, scores)
            elif gate.path not in self._few_holdout:
                self._few_holdout.add(gate.path)
                log.warning("gate %s records %d held-out scores; recipe %s takes its first %d parts as the drift "
                            "reference", gate.path, len(scores), name, self.section.drift.reference_size)

    def _reload_changed(self) -> None:
        for path, gate in list(self.gates.gates.items()):
            before = gate.bank_sha256
            if gate.refresh() and gate.bank_sha256 != before:
                for recipe, p in self.recipe_gates.items():
                    if p == path:  # the scores change on purpose: a new reference, not a drift alarm
                        self._set_reference(recipe)

    # ---- learning -------------------------------------------------------------------------------

    def _open_learners(self) -> None:
        from adfm.runtime.gate import GateError

        for path in sorted(set(self.recipe_gates.values())):
            try:
                learner = open_learner(self.section, path)
            except (GateError, OSError) as exc:
                self.health.problem("gate.learning", f"the gate cannot learn on the line: {exc}")
                log.error("gate %s cannot learn on the line: %s", path, exc)
                continue
            self._learning[path] = _Learning(learner, learner.store / CURSOR_FILE)
            self._changes[path] = sum(1 for row in learner.history() if row["action"] != "undo")
            log.info("gate %s learns from operator verdicts (store %s)", path, learner.store)

    def _cursor(self, state: _Learning) -> int:
        try:
            data = json.loads(state.cursor_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        return int(data.get("rowid", 0)) if data.get("epoch") == self.journal.epoch else 0

    def _learn_from_verdicts(self) -> None:
        from adfm.files import write_atomic

        for path, state in self._learning.items():
            cursor = self._cursor(state)
            for rowid, verdict in self.journal.verdicts_after(cursor):
                if self._stop.is_set():
                    return
                self._learn(path, state, verdict)
                self.verdicts_handled += 1
                write_atomic(state.cursor_path, json.dumps({"epoch": self.journal.epoch, "rowid": rowid}).encode())

    def _learn(self, path: Path, state: _Learning, verdict: Any) -> None:
        from adfm.runtime.gate_learning import LearningError

        how = LEARNS_FROM.get(DECISION_TRAINING_LABEL.get(verdict.decision) or "")
        if how is None:
            return
        try:
            result = self.journal.get(verdict.seq)
        except JournalError as exc:
            log.warning("gate learning: seq %d not readable: %s", verdict.seq, exc)
            return
        if result is None or self.recipe_gates.get(result.recipe, self.recipe_gates.get("")) != path:
            return
        if result.gate_score is None:
            return  # the gate did not score this part: nothing of it to learn
        image = self._image(result)
        if image is None:
            return
        live: LiveGate = self.gates.load(path)
        t0 = time.perf_counter()
        try:
            with state.learner.locked() as learner:
                if how == "false_alarm":
                    if not learner.gate.score(image).suspicious:
                        log.info("gate learning: part %s (seq %d) already passes the gate; nothing to learn",
                                 result.part_id, result.seq)
                        return
                    change = learner.confirm_false_alarm(image, part_id=result.part_id, operator=verdict.operator)
                else:
                    change = learner.confirm_defect(image, part_id=result.part_id, operator=verdict.operator)
        except LearningError as exc:
            log.warning("gate learning: verdict %s on part %s not learned: %s", verdict.verdict_id,
                        result.part_id, exc)
            if "limit" in str(exc):
                self.health.problem("gate.learning", str(exc))
            return
        if change is None:
            return
        state.changes += 1
        self._changes[path] = self._changes.get(path, 0) + 1
        log.warning(
            "gate %s learned from %s's %s on part %s: +%d patches (bank %d → %d, %s → %s), threshold %.4f → %.4f, "
            "good parts flagged %.1f %% (%.1f s)", path.name, verdict.operator, verdict.decision, result.part_id,
            change.patches_added, change.bank_size_before, change.bank_size_after, change.bank_sha256_before[:12],
            change.bank_sha256_after[:12], change.threshold_before, change.threshold_after,
            100.0 * (change.normal_flag_rate or 0.0), time.perf_counter() - t0)
        live.refresh()
        for recipe, p in self.recipe_gates.items():
            if p == path:
                self._set_reference(recipe)

    def _image(self, result: InspectionResult) -> np.ndarray | None:
        from PIL import Image, UnidentifiedImageError

        if not result.image_path:
            log.warning("gate learning: part %s (seq %d) has no stored image", result.part_id, result.seq)
            return None
        path = self.journal.root / result.image_path
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            log.warning("gate learning: part %s (seq %d): image %s not readable (%s); pruned by retention?",
                        result.part_id, result.seq, path, exc)
            return None


def open_learner(section: GateSection, path: Path) -> Any:
    """The `GateLearner` of the gate at `path` as `gate.learn` configures it (raises LearningError)."""
    from adfm.runtime.gate import metadata_path, read_metadata
    from adfm.runtime.gate_learning import GateLearner, LearningError

    learn = section.learn
    if learn is None:
        raise LearningError("gate.learn: not configured (the station does not learn on the line)")

    known = set(read_metadata(metadata_path(path)).training.get("calibration_images", []))
    normal = _calibration_files(learn.calibration_normal, known)
    anomalous = _calibration_files(learn.calibration_anomalous, known)
    if not normal and not anomalous:
        raise LearningError(
            f"gate.learn.calibration_normal: no image under {learn.calibration_normal} is one the gate {path} was "
            "calibrated on (training.calibration_images in its metadata); point it at the folders the gate was "
            "trained from")
    store = learn.store / path.stem if learn.store is not None else None
    return GateLearner(path, normal, anomalous, store=store, threads=1, max_added_patches=learn.max_added_patches)


def _calibration_files(folder: Path | None, known: set[str]) -> list[Path]:
    """The images under `folder` that calibrated the gate (by sha256, as its metadata lists them)."""
    from adfm.manifest import sha256_file

    if folder is None:
        return []
    images = (".png", ".jpg", ".jpeg", ".bmp")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in images)
    return [p for p in files if sha256_file(p) in known]
