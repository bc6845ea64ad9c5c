"""What the dashboard knows: the station's recent parts, operator verdicts, filters, the queue.

Plain Python, no Textual: the app feeds it events from its source and asks it for the rows of
each view. A part's decision is the journal's (`InspectionResult.operator`, which the station
fills in) unless this dashboard holds a newer local verdict still on its way to the station —
so a part leaves the queue the moment the operator decides it, whether or not the station is
reachable, and the row says whether the station has journaled it yet.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, tzinfo
from datetime import time as dt_time
from typing import Literal

import numpy as np

from adfm.schema import InspectionResult, OperatorVerdict, StationStatus

LocalState = Literal["queued", "sent", "rejected"]

#: Shown to operators; the schema's decisions by name (every `OperatorDecision`, tests check).
DECISION_LABELS = {"confirmed_defect": "defect", "defect_wrong_box": "defect, box redrawn",
                   "false_alarm": "false alarm", "unsure": "unsure", "skip": "skipped"}
VERDICT_CYCLE: tuple[str | None, ...] = (None, "fail", "review", "pass")
WINDOW_CYCLE: tuple[float | None, ...] = (None, 3600.0, 8 * 3600.0, 24 * 3600.0)


@dataclass(frozen=True)
class LocalVerdict:
    """A verdict made here: queued in the outbox, acknowledged by the station, or refused by it."""

    verdict: OperatorVerdict
    state: LocalState
    detail: str = ""


@dataclass(frozen=True)
class Part:
    result: InspectionResult
    product: str = ""
    local: LocalVerdict | None = None

    @property
    def seq(self) -> int:
        return self.result.seq

    @property
    def flagged(self) -> bool:
        return self.result.verdict in ("fail", "review")

    @property
    def decision(self) -> OperatorVerdict | None:
        """The verdict in force: the journal's, or a newer one of ours not yet refused."""
        journaled = self.result.operator
        mine = self.local
        if mine is None or mine.state == "rejected":
            return journaled
        if journaled is None or journaled.verdict_id == mine.verdict.verdict_id or mine.verdict.at >= journaled.at:
            return mine.verdict
        return journaled

    @property
    def decision_pending(self) -> bool:
        """True while the verdict in force is ours and the station has not acknowledged it."""
        d = self.decision
        return d is not None and self.local is not None and self.local.state == "queued" and (
            d.verdict_id == self.local.verdict.verdict_id)

    @property
    def awaiting_review(self) -> bool:
        """Flagged by the line and not decided by a person (here or anywhere)."""
        return self.flagged and self.decision is None


@dataclass(frozen=True)
class Filters:
    """What the feed and the queue show: a verdict, a camera, a time window (seconds back)."""

    verdict: str | None = None
    camera: str | None = None
    window_s: float | None = None

    def matches(self, part: Part, now: float) -> bool:
        r = part.result
        if self.verdict is not None and r.verdict != self.verdict:
            return False
        if self.camera is not None and r.camera != self.camera:
            return False
        return self.window_s is None or r.captured_at.timestamp() >= now - self.window_s

    def next_verdict(self) -> Filters:
        return replace(self, verdict=_cycle(VERDICT_CYCLE, self.verdict))

    def next_camera(self, cameras: list[str]) -> Filters:
        return replace(self, camera=_cycle((None, *cameras), self.camera))

    def next_window(self) -> Filters:
        return replace(self, window_s=_cycle(WINDOW_CYCLE, self.window_s))

    def describe(self) -> dict[str, str]:
        return {
            "verdict": self.verdict or "all",
            "camera": self.camera or "all",
            "time": "all" if self.window_s is None else f"last {self.window_s / 3600:g} h",
        }


def _cycle(options: tuple, current):
    try:
        return options[(options.index(current) + 1) % len(options)]
    except ValueError:
        return options[0]


@dataclass
class PartStore:
    """Parts by seq, bounded: beyond `max_parts` the oldest parts that need nobody are dropped."""

    max_parts: int = 20_000
    station: str | None = None
    status: StationStatus | None = None
    _parts: dict[int, Part] = field(default_factory=dict)
    _order: list[int] = field(default_factory=list)
    _early_locals: dict[int, LocalVerdict] = field(default_factory=dict)  # for parts not yet loaded
    _awaiting: set[int] = field(default_factory=set)  # seqs awaiting review, kept as parts change
    #: the shift's counts, kept as parts change: its start (epoch s), each counted part's share, totals
    _shift_since: float | None = None
    _shift: dict[int, tuple[Outcome, bool, bool]] = field(default_factory=dict)
    _shift_totals: Counter = field(default_factory=Counter)

    def _put(self, part: Part) -> None:
        self._parts[part.seq] = part
        if part.awaiting_review:
            self._awaiting.add(part.seq)
        else:
            self._awaiting.discard(part.seq)
        self._count_in_shift(part.seq, part)

    def _count_in_shift(self, seq: int, part: Part | None) -> None:
        """Take `seq`'s old share out of the shift's totals and put `part`'s in (None: it left)."""
        old = self._shift.pop(seq, None)
        if old is not None:
            self._shift_totals.subtract({"parts": 1, old[0]: 1, "false_alarms": old[1], "awaiting": old[2]})
        if part is None or self._shift_since is None or part.result.captured_at.timestamp() < self._shift_since:
            return
        d = part.decision
        new = (line_outcome(part.result), d is not None and d.decision == "false_alarm" and part.flagged,
               part.awaiting_review)
        self._shift[seq] = new
        self._shift_totals.update({"parts": 1, new[0]: 1, "false_alarms": new[1], "awaiting": new[2]})

    def shift_summary(self, since: datetime) -> ShiftSummary:
        """Counts of the parts captured since `since`: counted once per shift, then kept as parts
        arrive and are decided (a new part or verdict costs the same with 50 or 50,000 loaded)."""
        ts = since.timestamp()
        if ts != self._shift_since:
            self._shift_since = ts
            self._shift.clear()
            self._shift_totals.clear()
            for seq, part in self._parts.items():
                self._count_in_shift(seq, part)
        t = self._shift_totals
        oldest = self.first()
        partial = oldest is not None and oldest.seq > 1 and oldest.result.captured_at.timestamp() > ts
        return ShiftSummary(since, t["parts"], t["ok"], t["ng"], t["review"], t["false_alarms"], t["awaiting"],
                            partial)

    def __len__(self) -> int:
        return len(self._parts)

    def get(self, seq: int) -> Part | None:
        return self._parts.get(seq)

    @property
    def last_seq(self) -> int:
        return self._order[-1] if self._order else 0

    # ---- updates --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every part (the station's journal was replaced: its seqs now name other parts)."""
        self._parts.clear()
        self._awaiting.clear()
        self._shift_since = None
        self._shift.clear()
        self._shift_totals.clear()
        self._order.clear()
        self._early_locals.clear()

    def add_results(self, results: Iterable[InspectionResult], products: dict[int, str] | None = None) -> None:
        products = products or {}
        for r in results:
            if self.station is None:
                self.station = r.station
            old = self._parts.get(r.seq)
            local = old.local if old else self._early_locals.pop(r.seq, None)
            product = products.get(r.seq, old.product if old else "")
            self._put(Part(r, product, local))
            if old is None:
                if not self._order or r.seq > self._order[-1]:
                    self._order.append(r.seq)
                else:
                    bisect.insort(self._order, r.seq)
        self._trim()

    def apply_journaled(self, verdict: OperatorVerdict) -> None:
        """A verdict the station journaled (announced on the bus, or read from the journal)."""
        part = self._parts.get(verdict.seq)
        if part is None:
            return  # not loaded: its result will carry the verdict when it is
        current = part.result.operator
        if current is not None and current.at > verdict.at and current.verdict_id != verdict.verdict_id:
            return
        local = part.local
        if local is not None and local.verdict.verdict_id == verdict.verdict_id:
            local = replace(local, state="sent")
        self._put(replace(part, result=part.result.model_copy(update={"operator": verdict}), local=local))

    def set_local(self, verdict: OperatorVerdict, state: LocalState, detail: str = "") -> None:
        """Record a verdict made here (queued), acknowledged (sent) or refused (rejected)."""
        local = LocalVerdict(verdict, state, detail)
        part = self._parts.get(verdict.seq)
        if part is None:
            self._early_locals[verdict.seq] = local
            return
        if part.local is not None and part.local.verdict.verdict_id != verdict.verdict_id and (
                part.local.verdict.at > verdict.at):
            return  # an older verdict's outcome arriving after a newer decision
        self._put(replace(part, local=local))
        if state == "sent":
            self.apply_journaled(verdict)

    def _trim(self) -> None:
        excess = len(self._order) - self.max_parts
        if excess <= 0:
            return
        keep: list[int] = []
        for seq in self._order:
            part = self._parts[seq]
            if excess > 0 and not part.awaiting_review and not part.decision_pending:
                del self._parts[seq]
                self._awaiting.discard(seq)
                self._count_in_shift(seq, None)
                excess -= 1
            else:
                keep.append(seq)
        self._order = keep

    # ---- views ----------------------------------------------------------------------------------

    def parts(self) -> list[Part]:
        """Every part, oldest first."""
        return [self._parts[s] for s in self._order]

    def feed(self, filters: Filters, now: float) -> list[Part]:
        """The live feed: newest first."""
        return [p for p in reversed(self.parts()) if filters.matches(p, now)]

    def queue(self, filters: Filters, now: float) -> list[Part]:
        """Flagged parts nobody has decided: oldest first, the order they are worked off in."""
        return [p for p in self.parts() if p.awaiting_review and filters.matches(p, now)]

    def newest_first(self) -> Iterator[Part]:
        for seq in reversed(self._order):
            yield self._parts[seq]

    def first(self) -> Part | None:
        """The oldest part loaded."""
        return self._parts[self._order[0]] if self._order else None

    def last(self) -> Part | None:
        """The newest part (the run view's tile)."""
        return self._parts[self._order[-1]] if self._order else None

    def recent_flagged(self, limit: int) -> list[Part]:
        """The newest flagged parts, newest first (the run view's filmstrip)."""
        out: list[Part] = []
        for seq in reversed(self._order):
            if len(out) >= limit:
                break
            part = self._parts[seq]
            if part.flagged:
                out.append(part)
        return out

    def awaiting_count(self) -> int:
        return len(self._awaiting)

    def queued_verdicts(self) -> int:
        """Verdicts made here that the station has not acknowledged yet."""
        pending = sum(1 for p in self._parts.values() if p.local is not None and p.local.state == "queued")
        return pending + sum(1 for v in self._early_locals.values() if v.state == "queued")

    def cameras(self) -> list[str]:
        return sorted({p.result.camera for p in self._parts.values()})

    def verdict_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self._parts.values():
            counts[p.result.verdict] = counts.get(p.result.verdict, 0) + 1
        return counts

    def decision_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self._parts.values():
            d = p.decision
            if d is not None:
                counts[d.decision] = counts.get(d.decision, 0) + 1
        return counts

    def latency_percentiles(self, q: float) -> dict[str, float]:
        """Per-stage latency percentile over the loaded parts (for an offline journal)."""
        by_stage: dict[str, list[float]] = {}
        for p in self._parts.values():
            for stage, ms in p.result.latency_ms.items():
                by_stage.setdefault(stage, []).append(ms)
        return {s: float(np.percentile(v, q)) for s, v in by_stage.items() if v}

    def parts_per_min(self, end: float, window_s: float = 300.0) -> float:
        """Parts captured in the `window_s` seconds up to `end` (epoch seconds), per minute."""
        n = sum(1 for p in self._parts.values() if end - window_s < p.result.captured_at.timestamp() <= end)
        return n * 60.0 / window_s

    def time_span(self) -> tuple[datetime, datetime] | None:
        if not self._order:
            return None
        return self._parts[self._order[0]].result.captured_at, self._parts[self._order[-1]].result.captured_at


# ---- the shift ---------------------------------------------------------------------------------

Outcome = Literal["ok", "ng", "review"]


def line_outcome(result: InspectionResult) -> Outcome:
    """What the line did with a part: on a line station its action (a fail-safe reject is NG), in
    free-run its verdict (pass OK, fail NG, review undecided)."""
    if result.action is not None:
        return {"pass": "ok", "reject": "ng"}.get(result.action, "review")  # type: ignore[return-value]
    return {"pass": "ok", "fail": "ng"}.get(result.verdict, "review")  # type: ignore[return-value]


#: Shift changes (local time of day) when none are given: three eight-hour shifts.
DEFAULT_SHIFTS = (dt_time(6), dt_time(14), dt_time(22))


def shift_start(now: float, tz: tzinfo | None, starts: Sequence[dt_time]) -> datetime:
    """When the shift running at `now` began: the latest of `starts` (local times of day) at or
    before `now`, today or yesterday."""
    if not starts:
        raise ValueError("a shift needs at least one start time")
    local = datetime.fromtimestamp(now, tz).astimezone(tz)
    candidates = [datetime.combine(local.date() - timedelta(days=back), s, local.tzinfo)
                  for back in (0, 1) for s in starts]
    return max(c for c in candidates if c <= local)


@dataclass(frozen=True)
class ShiftSummary:
    """Counts of the parts captured since the shift began (of the parts loaded here)."""

    since: datetime
    parts: int = 0
    ok: int = 0
    ng: int = 0
    review: int = 0
    false_alarms: int = 0
    awaiting: int = 0
    #: True when parts of the shift may be missing: the oldest loaded part is inside the shift
    partial: bool = False

    @property
    def first_pass_yield(self) -> float | None:
        """Parts the line passed, of all parts."""
        return self.ok / self.parts if self.parts else None

    @property
    def reviewed_yield(self) -> float | None:
        """Parts the line passed or an operator called a false alarm, of all parts."""
        return (self.ok + self.false_alarms) / self.parts if self.parts else None


def summarize_shift(store: PartStore, since: datetime) -> ShiftSummary:
    """The shift's counts (`PartStore.shift_summary`)."""
    return store.shift_summary(since)
