"""Station results as OPC UA for Machine Vision results (OPC 40100-1 `ResultDataType`), and the
journal queries behind `GetResultById` and `GetResultListFiltered`.

A result here is one journaled decision or revision. Its `ResultId` is
`<station>/<journal epoch>/<seq>/<revision>`, unique across journals; revision 0 is what the line
did, 1+ are later verdicts on the same part. `ResultState` is the processing state, never the
verdict: `Completed` (1) when the gate or the VLM decided, `Aborted` (3) when the fail-safe did
(the inspection was stopped at the deadline, the model was down, …). The verdict, the line's action,
the decision source, the boxes and the model id travel in `ResultContent`, one `KeyValuePair` each.

The queries run on a read-only SQLite connection of the OPC UA thread's own, so a client's
request never takes a lock the journal writers wait on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua

from adfm.schema import InspectionResult

from ...journal.store import Journal


class _MachineVisionTypes:
    """The Machine Vision structures (ResultDataType, ResultIdDataType, …), which asyncua makes and
    registers in `asyncua.ua` when it loads the nodeset: looked up there when used."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ua, name)


MV = _MachineVisionTypes()

#: ResultStateDataType (OPC 40100-1 12.19)
COMPLETED = 1
ABORTED = 3
#: decisions that completed the inspection; the rest (fail-safes, recovered parts) were aborted
COMPLETED_SOURCES = ("gate", "vlm")


def result_state(r: InspectionResult) -> int:
    return COMPLETED if r.decision_source in COMPLETED_SOURCES else ABORTED


def result_id(r: InspectionResult, station: str, epoch: str) -> str:
    return f"{station}/{epoch}/{r.seq}/{r.revision}"


class ResultIdError(ValueError):
    """A ResultId this station did not make (the message says why)."""


def parse_result_id(text: str, station: str, epoch: str) -> tuple[int, int]:
    """(seq, revision) of a ResultId made by `result_id` for this station and journal."""
    parts = text.split("/")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        raise ResultIdError(f"ResultId {text!r}: not <station>/<epoch>/<seq>/<revision>")
    if parts[0] != station:
        raise ResultIdError(f"ResultId {text!r}: made by station {parts[0]!r}, this is {station!r}")
    if parts[1] != epoch:
        raise ResultIdError(f"ResultId {text!r}: journal epoch {parts[1]!r} is gone (now {epoch!r})")
    return int(parts[2]), int(parts[3])


def _kv(key: str, value: Any, vtype: ua.VariantType) -> ua.Variant:
    return ua.Variant(ua.KeyValuePair(Key=ua.QualifiedName(key, 0), Value=ua.Variant(value, vtype)),
                      ua.VariantType.ExtensionObject)


def result_content(r: InspectionResult) -> list[ua.Variant]:
    """What the station concluded, typed: one KeyValuePair per fact. Boxes are flat
    [x1, y1, x2, y2, …] in original-image pixels, their labels beside them in the same order."""
    V = ua.VariantType
    out = [
        _kv("Verdict", r.verdict, V.String),
        _kv("Action", r.action or "", V.String),
        _kv("DecisionSource", r.decision_source or "", V.String),
        _kv("ModelId", r.model_id, V.String),
        _kv("PromptVersion", r.prompt_version, V.String),
        _kv("Recipe", r.recipe, V.String),
        _kv("Seq", r.seq, V.Int64),
        _kv("Revision", r.revision, V.UInt32),
        _kv("Boxes", [float(v) for b in r.boxes for v in (b.x1, b.y1, b.x2, b.y2)], V.Double),
        _kv("BoxLabels", [b.label for b in r.boxes], V.String),
        _kv("Reason", r.reason, V.String),
    ]
    if r.score is not None:
        out.append(_kv("Score", float(r.score), V.Double))
    if r.gate_score is not None:
        out.append(_kv("GateScore", float(r.gate_score), V.Double))
    return out


@dataclass(frozen=True)
class Ids:
    """The identifiers every result of this station carries."""

    station: str
    epoch: str
    products: dict[str, str]  # recipe → product
    model_ids: dict[str, str]  # recipe → model id (the recipe's internal id version)

    def recipe_internal(self, recipe: str, model_id: str = "") -> Any:
        return MV.RecipeIdInternalDataType(Id=recipe, Version=model_id or self.model_ids.get(recipe, "") or None)

    def job(self) -> Any:
        # The line runs one continuous job per journal: parts come as the PLC triggers them.
        return MV.JobIdDataType(Id=f"{self.station}/{self.epoch}")

    def configuration(self) -> Any:
        return MV.ConfigurationIdDataType(Id=self.station)


def _utc(t: datetime | None) -> datetime:
    if t is None:
        return datetime.now(UTC)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def to_result(r: InspectionResult, ids: Ids) -> Any:
    """The ResultDataType of a journaled result."""
    product = ids.products.get(r.recipe, "")
    start = _utc(r.triggered_at or r.captured_at)
    end = _utc(r.decided_at or r.captured_at)
    return MV.ResultDataType(
        ResultId=MV.ResultIdDataType(Id=result_id(r, ids.station, ids.epoch)),
        HasTransferableDataOnFile=False,
        IsPartial=False,
        IsSimulated=False,
        ResultState=result_state(r),
        PartId=MV.PartIdDataType(Id=r.part_id),
        ExternalRecipeId=MV.RecipeIdExternalDataType(Id=r.recipe) if r.recipe else None,
        InternalRecipeId=ids.recipe_internal(r.recipe, r.model_id),
        ProductId=MV.ProductIdDataType(Id=product) if product else None,
        InternalConfigurationId=ids.configuration(),
        JobId=ids.job(),
        CreationTime=end,
        ProcessingTimes=MV.ProcessingTimesDataType(StartTime=start, EndTime=end,
                                                   ProcessingDuration=max(0.0, (end - start).total_seconds() * 1000)),
        ResultContent=result_content(r),
    )


@dataclass(frozen=True)
class ResultFilter:
    """GetResultListFiltered's filters; an empty field filters nothing."""

    result_state: int = 0
    part_id: str = ""
    recipe: str = ""  # external or internal recipe id (the recipe's name)
    product: str = ""
    job: str = ""
    configuration: str = ""

    def sql(self, ids: Ids) -> tuple[str, list[Any]] | None:
        """The WHERE clause over `parts` (None: nothing can match)."""
        if (self.job and self.job != ids.job().Id) or (self.configuration and self.configuration != ids.station):
            return None
        where: list[str] = ["state = 'done'"]
        args: list[Any] = []
        if self.result_state:
            if self.result_state not in (COMPLETED, ABORTED):
                return None
            marks = ", ".join("?" * len(COMPLETED_SOURCES))
            where.append(f"COALESCE(json_extract(result_json, '$.decision_source'), '') "
                         f"{'' if self.result_state == COMPLETED else 'NOT '}IN ({marks})")
            args += COMPLETED_SOURCES
        if self.part_id:
            where.append("part_id = ?")
            args.append(self.part_id)
        recipes = [self.recipe] if self.recipe else None
        if self.product:
            have = [name for name, product in ids.products.items() if product == self.product]
            recipes = [r for r in (recipes or have) if r in have]
        if recipes is not None:
            if not recipes:
                return None
            where.append(f"json_extract(result_json, '$.recipe') IN ({', '.join('?' * len(recipes))})")
            args += recipes
        return " AND ".join(where), args


class ResultStore:
    """Reads journaled results for OPC UA clients, read-only, from the thread that owns it."""

    def __init__(self, db_path: Path, epoch: str) -> None:
        self.db_path = db_path
        self.epoch = epoch
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
            self._db.execute("PRAGMA busy_timeout = 2000")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, seq: int, revision: int) -> InspectionResult | None:
        conn = self._conn()
        row = conn.execute("SELECT result_json FROM revisions WHERE seq = ? AND revision = ?",
                           (seq, revision)).fetchone()
        if row is not None:
            return Journal.result_from_row(row[0], None, 0, epoch=self.epoch)
        row = conn.execute("SELECT result_json, operator_json, image_pruned FROM parts "
                           "WHERE seq = ? AND state = 'done'", (seq,)).fetchone()
        if row is None:
            return None
        r = Journal.result_from_row(row[0], row[1], row[2], epoch=self.epoch)
        return r if r.revision == revision else None

    def find(self, flt: ResultFilter, ids: Ids, start: int, limit: int) -> tuple[list[InspectionResult], int]:
        """The line's decisions (revision 0) matching `flt`, oldest first: the page [start, start +
        limit) and how many match in all."""
        clause = flt.sql(ids)
        if clause is None:
            return [], 0
        where, args = clause
        conn = self._conn()
        total = conn.execute(f"SELECT COUNT(*) FROM parts WHERE {where}", args).fetchone()[0]
        rows = conn.execute(f"SELECT result_json, operator_json, image_pruned FROM parts WHERE {where} "
                            "ORDER BY seq LIMIT ? OFFSET ?", (*args, limit, start)).fetchall()
        return [Journal.result_from_row(row[0], row[1], row[2], epoch=self.epoch) for row in rows], int(total)


def identifier(value: Any) -> str:
    """The `Id` of an id structure a client sent (empty when none was given)."""
    if value is None:
        return ""
    if isinstance(value, ua.Variant):
        value = value.Value
    return str(getattr(value, "Id", "") or "").strip()


def results_variant(results: Sequence[Any]) -> ua.Variant:
    return ua.Variant(list(results), ua.VariantType.ExtensionObject)
