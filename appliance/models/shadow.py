"""Shadow runs: a candidate model answers beside the active one, on a share of the parts, never acted on.

A part is offered only once the line has decided it (so the candidate cannot delay a decision), and
only when the share selects it: `all`, every Nth part (`seq % N == 0`), or the flagged ones (the
line's verdict fail or review). The candidate runs in its own inference worker process, `shadow_nice`
nicer than the service, fed by its own runner thread from a bounded queue without deadlines: when
`shadow_queue` parts wait, the oldest is dropped (counted) — shadow work is what goes first under
load. Each answer is journaled as a shadow result (its own table, beside the part, never the
part's decision or a revision of it), then published on `shadow.<station>`; it never reaches the
PLC, OPC UA or the part's record.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adfm.schema import InspectionResult

from ..config.models import ModelsSection
from ..inspection.core import Inference, build_result, utc, verdict_for
from ..inspection.runner import VlmJob, VlmModel, VlmRunner
from ..journal.store import Journal, JournalError

log = logging.getLogger(__name__)

SHADOW_KEY = "shadow"
#: Publishes one shadow result: (journal row id, result); called from the shadow runner's thread only.
Publish = Callable[[int, InspectionResult], None]


def selects(settings: ModelsSection, seq: int, verdict: str) -> bool:
    """Whether the configured share takes this decided part."""
    if settings.shadow_share == "all":
        return True
    if settings.shadow_share == "flagged":
        return verdict in ("fail", "review")
    return seq % settings.shadow_every_n == 0


@dataclass(frozen=True)
class _Offered:
    seq: int
    part_id: str
    camera: str
    frame_number: int
    captured_wall: float
    recipe: str


class ShadowRun:
    """One candidate in shadow. `offer` from the deciding loop; everything else in its own thread."""

    def __init__(self, station: str, journal: Journal, candidate: VlmModel, settings: ModelsSection, *,
                 publish: Publish | None, hang_s: float, load_timeout_s: float) -> None:
        self.station = station
        self.journal = journal
        self.candidate = candidate
        self.settings = settings
        self.publish = publish
        self._offered: dict[str, _Offered] = {}
        self._lock = threading.Lock()
        self.offered = 0
        self.answered = 0
        self.dropped = 0
        self.unjournaled = 0
        self.runner = VlmRunner({SHADOW_KEY: candidate}, self._done, self._skipped, backlog=0,
                                limit=settings.shadow_queue, hang_s=hang_s, load_timeout_s=load_timeout_s,
                                nice=settings.shadow_nice)

    @property
    def model_id(self) -> str:
        return self.candidate.info.model_id

    def start(self) -> None:
        self.runner.start(preload=None)  # loaded in its own thread on the first part, never in the caller's

    def stop(self) -> None:
        self.runner.stop()

    def offer(self, seq: int, part_id: str, camera: str, frame: Any, result: InspectionResult, recipe: Any) -> bool:
        """A decided part with its frame: queued for the candidate when the share selects it."""
        if not selects(self.settings, seq, result.verdict):
            return False
        key = f"s{seq}"
        with self._lock:
            self._offered[key] = _Offered(seq, part_id, camera, frame.frame_number, frame.captured_wall,
                                          getattr(recipe, "name", ""))
            self.offered += 1
        self.runner.submit(VlmJob(key, frame.image, math.inf, SHADOW_KEY, getattr(recipe, "product", None),
                                  getattr(recipe, "reference", None)))
        return True

    def counters(self) -> dict[str, float]:
        return {"shadow_offered": self.offered, "shadow_answered": self.answered, "shadow_dropped": self.dropped,
                "shadow_queued": self.runner.queued()}

    # ---- the shadow runner's thread ------------------------------------------------------------

    def _skipped(self, key: str) -> None:
        with self._lock:
            self._offered.pop(key, None)
            self.dropped += 1

    def _done(self, key: str, inference: Inference) -> None:
        with self._lock:
            part = self._offered.pop(key, None)
        if part is None:
            return
        verdict, reason = verdict_for(inference.parsed, inference.failures)
        result = build_result(
            station=self.station, seq=part.seq, part_id=part.part_id, camera=part.camera,
            frame_number=part.frame_number, captured_at=utc(part.captured_wall), verdict=verdict,
            reason=f"shadow: {reason}", model=self.candidate.info, inference=inference,
            latency={f"vlm_{k}": v for k, v in inference.ms.items()}, recipe=part.recipe,
        )
        try:
            row_id = self.journal.record_shadow(result)
        except JournalError as exc:  # a shadow answer is not worth a retry queue: counted and logged
            self.unjournaled += 1
            log.warning("shadow result of seq %d not journaled: %s", part.seq, exc)
            return
        self.answered += 1
        if self.publish is not None:
            try:
                self.publish(row_id, result.model_copy(update={"epoch": self.journal.epoch}))
            except Exception:
                log.exception("shadow result of seq %d not published", part.seq)
