"""How a candidate model in shadow compares with the active model and with the operators, from the
station's journal alone (`adfm-appliance models compare`, and the promotion guard).

For every part the candidate answered in shadow (its newest answer on that part):
- the active model's answer is its own verdict when it gave one (the line's decision from the VLM, or
  its later revision), else what the line decided with it (a gate pass, a fail-safe);
- the operators' verdict is the newest one given on the part: a decision whose training label is
  anomalous (`confirmed_defect`, `defect_wrong_box`) counts as `fail`, a normal one (`false_alarm`) as
  `pass`; `unsure`, `skip` and parts without a verdict are not counted against either model.
Agreement is a share with its 95 % Wilson score interval. The guard compares the two models on the
same parts: those with an operator verdict.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from adfm.schema import DECISION_TRAINING_LABEL, InspectionResult

#: an operator's decision as the verdict it says the part deserved (from the schema's one label table)
TRUTH = {d: {"anomalous": "fail", "normal": "pass"}[label] for d, label in DECISION_TRAINING_LABEL.items() if label}
Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials ((0, 1) when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Agreement:
    agree: int
    parts: int

    @property
    def share(self) -> float | None:
        return self.agree / self.parts if self.parts else None

    def to_json(self) -> dict:
        lo, hi = wilson(self.agree, self.parts)
        return {"agree": self.agree, "parts": self.parts,
                "share": None if self.share is None else round(self.share, 4),
                "interval95": [round(lo, 4), round(hi, 4)]}

    def describe(self) -> str:
        if not self.parts:
            return "no parts"
        lo, hi = wilson(self.agree, self.parts)
        return f"{self.agree}/{self.parts} = {self.share:.1%} (95 % CI {lo:.1%}–{hi:.1%})"


@dataclass(frozen=True)
class ComparedPart:
    seq: int
    part_id: str
    image_path: str
    candidate: InspectionResult
    active: InspectionResult  # the active model's own answer, else the line's decision
    active_answered: bool  # the active model gave a verdict on this part (not a gate pass or fail-safe)
    operator: str | None  # the newest operator decision, None without one

    @property
    def truth(self) -> str | None:
        return TRUTH.get(self.operator or "")

    def to_json(self) -> dict:
        def side(r: InspectionResult) -> dict:
            return {"model_id": r.model_id, "verdict": r.verdict, "answer": r.answer, "reason": r.reason,
                    "source": r.decision_source, "boxes": [b.model_dump() for b in r.boxes]}

        return {"seq": self.seq, "part_id": self.part_id, "image_path": self.image_path,
                "candidate": side(self.candidate), "active": side(self.active),
                "active_answered": self.active_answered, "operator": self.operator}


@dataclass
class Comparison:
    candidate: str
    active_models: list[str]
    parts: list[ComparedPart] = field(default_factory=list)

    @property
    def with_active(self) -> Agreement:
        return Agreement(sum(p.candidate.verdict == p.active.verdict for p in self.parts), len(self.parts))

    @property
    def judged(self) -> list[ComparedPart]:
        return [p for p in self.parts if p.truth is not None]

    @property
    def candidate_vs_operator(self) -> Agreement:
        j = self.judged
        return Agreement(sum(p.candidate.verdict == p.truth for p in j), len(j))

    @property
    def active_vs_operator(self) -> Agreement:
        j = self.judged
        return Agreement(sum(p.active.verdict == p.truth for p in j), len(j))

    @property
    def disagreements(self) -> list[ComparedPart]:
        return [p for p in self.parts if p.candidate.verdict != p.active.verdict]

    def to_json(self, max_disagreements: int = 200) -> dict:
        d = self.disagreements
        return {"candidate": self.candidate, "active_models": self.active_models, "shadowed_parts": len(self.parts),
                "active_answered": sum(p.active_answered for p in self.parts),
                "with_active": self.with_active.to_json(),
                "candidate_vs_operator": self.candidate_vs_operator.to_json(),
                "active_vs_operator": self.active_vs_operator.to_json(),
                "disagreements": len(d), "disagreement_parts": [p.to_json() for p in d[-max_disagreements:]]}


def _connect(db_path: Path) -> sqlite3.Connection:
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"{db_path}: no journal database")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def shadow_models(db_path: Path) -> list[str]:
    """Models with shadow results in the journal, the most recently shadowed last."""
    with _connect(db_path) as conn:
        rows = conn.execute("SELECT model_id, MAX(id) AS last FROM shadow_results GROUP BY model_id "
                            "ORDER BY last").fetchall()
    return [r[0] for r in rows]


def compare(db_path: Path, candidate: str, *, active: str | None = None) -> Comparison:
    """The candidate's shadow answers against the active model's and the operators' (`active`: only
    parts decided with that model)."""
    conn = _connect(db_path)
    try:
        rows = conn.execute(
            "SELECT s.seq, s.result_json, p.part_id, p.image_path, p.result_json FROM shadow_results s "
            "JOIN parts p ON p.seq = s.seq "
            "WHERE s.model_id = ? AND p.state = 'done' AND s.id = (SELECT MAX(id) FROM shadow_results t "
            "WHERE t.seq = s.seq AND t.model_id = s.model_id) ORDER BY s.seq", (candidate,)).fetchall()
        revisions: dict[int, list[InspectionResult]] = {}
        operators: dict[int, str] = {}
        seqs = [r[0] for r in rows]
        for chunk in range(0, len(seqs), 500):
            part = seqs[chunk:chunk + 500]
            marks = ",".join("?" * len(part))
            for seq, js in conn.execute(f"SELECT seq, result_json FROM revisions WHERE seq IN ({marks}) AND "
                                        f"revision >= 1 ORDER BY seq, revision", part):
                revisions.setdefault(seq, []).append(InspectionResult.model_validate_json(js))
            for seq, decision in conn.execute(f"SELECT seq, decision FROM operator_verdicts WHERE seq IN ({marks}) "
                                              f"ORDER BY at, received_wall", part):
                operators[seq] = decision  # the newest wins
    finally:
        conn.close()
    out = Comparison(candidate, [])
    models: list[str] = []
    for seq, shadow_json, part_id, image_path, line_json in rows:
        if line_json is None:
            continue
        line = InspectionResult.model_validate_json(line_json)
        if active is not None and line.model_id != active:
            continue
        own = [r for r in [line, *revisions.get(seq, [])] if r.decision_source == "vlm"]
        answer = own[-1] if own else line
        if line.model_id not in models:
            models.append(line.model_id)
        out.parts.append(ComparedPart(seq, part_id, image_path or line.image_path,
                                      InspectionResult.model_validate_json(shadow_json), answer, bool(own),
                                      operators.get(seq)))
    out.active_models = models
    return out


@dataclass(frozen=True)
class GuardOutcome:
    allowed: bool
    detail: str


def promotion_guard(db_path: Path, candidate: str, active: str | None, min_parts: int) -> GuardOutcome:
    """Whether `candidate` may replace `active`: at least `min_parts` shadowed parts (decided with the
    active model) carry an operator verdict, and on them the candidate agrees with the operators at
    least as often as the active model."""
    c = compare(db_path, candidate, active=active)
    cand, act = c.candidate_vs_operator, c.active_vs_operator
    if cand.parts < min_parts:
        return GuardOutcome(False, f"guard: {cand.parts} shadowed part(s) of {candidate} with an operator verdict "
                                   f"(decided with {active}), {min_parts} needed")
    if cand.agree < act.agree:
        return GuardOutcome(False, f"guard: {candidate} agrees with operators on {cand.describe()}, the active "
                                   f"model {active} on {act.describe()}")
    return GuardOutcome(True, f"guard met: {candidate} {cand.describe()} vs active {act.describe()} with operators")


def format_comparison(c: Comparison) -> str:
    lines = [f"candidate {c.candidate}: {len(c.parts)} shadowed part(s); active model(s): "
             f"{', '.join(c.active_models) or 'none'}",
             f"  agreement with the active model:  {c.with_active.describe()} "
             f"({sum(p.active_answered for p in c.parts)} answered by the model itself, the rest by the line)",
             f"  candidate vs operator verdicts:   {c.candidate_vs_operator.describe()}",
             f"  active vs operator verdicts:      {c.active_vs_operator.describe()}"]
    d = c.disagreements
    if d:
        lines.append(f"  where they disagree ({len(d)} part(s), newest 20):")
        lines.append(f"    {'seq':>6}  {'part':<24} {'candidate':<9} {'active':<9} {'operator':<16} "
                     "boxes (candidate | active)")
        for p in d[-20:]:
            def boxes(r: InspectionResult) -> str:
                return " ".join(f"[{b.x1:.0f},{b.y1:.0f},{b.x2:.0f},{b.y2:.0f}]" for b in r.boxes) or "-"

            lines.append(f"    {p.seq:>6}  {p.part_id[:24]:<24} {p.candidate.verdict:<9} {p.active.verdict:<9} "
                         f"{p.operator or '-':<16} {boxes(p.candidate)} | {boxes(p.active)}")
    return "\n".join(lines)


def comparison_json(c: Comparison) -> str:
    return json.dumps(c.to_json(), indent=2)
