"""Inspection results and result-bus messages: one typed record, the same JSON everywhere.

An inspection result is what the journal stores, the PUB socket publishes, the control socket
replays and the review TUI shows. Control requests/replies travel on the appliance's ROUTER socket.
Every message carries `schema_version`; readers refuse a major version they do not know.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = SCHEMA_VERSION.split(".")[0]

Verdict = Literal["pass", "fail", "review"]
#: A person's decision on a part: a defect (the model's boxes right, or wrong and redrawn), a
#: false alarm, unsure (looked, cannot tell: for an engineer), or skipped (not judged).
OperatorDecision = Literal["confirmed_defect", "defect_wrong_box", "false_alarm", "unsure", "skip"]
#: What each decision says about the part as a training label: `anomalous`, `normal`, or None
#: (no label). Every export of operator decisions reads this one table.
DECISION_TRAINING_LABEL: dict[str, str | None] = {
    "confirmed_defect": "anomalous", "defect_wrong_box": "anomalous", "false_alarm": "normal",
    "unsure": None, "skip": None,
}
#: Decisions that carry the operator's own boxes (and must: at least one).
DECISIONS_WITH_BOXES = ("defect_wrong_box",)
#: What the line does with a part (the PLC's reject output acts on `reject`).
LineAction = Literal["pass", "reject", "hold"]
#: Where a part's decision came from: the screening gate, the VLM in time, or the fail-safe
#: action because the VLM did not finish in time, was down, the part had no frame, or the
#: disk was full.
DecisionSource = Literal[
    "gate", "vlm", "failsafe_timeout", "failsafe_model_down", "failsafe_missed_frame", "failsafe_disk_full"
]


def utcnow() -> datetime:
    return datetime.now(UTC)


#: Size limits on what a client may send: a control request is refused whole when any field is
#: longer (the bus also refuses frames over MAX_REQUEST_BYTES before parsing them).
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 128
MAX_NOTE_CHARS = 2000
MAX_REQUEST_BYTES = 16 * 1024
#: the most results one replay request may ask for (its `limit`)
MAX_REPLAY_LIMIT = 5000
#: the most boxes an operator may draw on one part
MAX_VERDICT_BOXES = 16

Epoch = Annotated[str, Field(max_length=MAX_ID_CHARS)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: str = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _known_major(cls, v: str) -> str:
        if v.split(".")[0] != SCHEMA_MAJOR:
            raise ValueError(f"schema_version {v!r} is not readable by schema {SCHEMA_VERSION}")
        return v


class Box(BaseModel):
    """An axis-aligned box in original-image pixels (x1 ≤ x2, y1 ≤ y2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""

    @classmethod
    def from_xyxy(cls, xyxy: list[float], label: str = "") -> Box:
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        return cls(x1=min(x1, x2), y1=min(y1, y2), x2=max(x1, x2), y2=max(y1, y2), label=label)

    @property
    def xyxy(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


class OperatorVerdict(_Message):
    """A person's decision on a part, journaled with who and when."""

    type: Literal["operator_verdict"] = "operator_verdict"
    station: str = Field(max_length=MAX_ID_CHARS)
    seq: int = Field(ge=1)
    decision: OperatorDecision
    operator: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    note: str = Field("", max_length=MAX_NOTE_CHARS)
    at: datetime = Field(default_factory=utcnow)
    #: Client-chosen id so a verdict re-sent after a reconnect is journaled once.
    verdict_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    #: The part the operator judged and the journal it was read from: the station refuses the
    #: verdict when seq now names another part (a replaced journal, a queued verdict).
    part_id: str = Field("", max_length=MAX_NAME_CHARS * 2)
    epoch: Epoch = ""
    #: Set by the station, never by the client: the name of the CURVE key that sent the verdict
    #: ("local" without CURVE).
    client: str = Field("", max_length=MAX_NAME_CHARS)
    #: The operator's own boxes, in original-image pixels (never the model grid's): only with
    #: `defect_wrong_box`, which needs at least one.
    boxes: list[Box] = Field(default_factory=list, max_length=MAX_VERDICT_BOXES)

    @model_validator(mode="after")
    def _boxes_fit_the_decision(self) -> OperatorVerdict:
        if self.decision in DECISIONS_WITH_BOXES and not self.boxes:
            raise ValueError(f"boxes: decision {self.decision!r} needs the corrected box (at least one, "
                             "in image pixels)")
        if self.decision not in DECISIONS_WITH_BOXES and self.boxes:
            raise ValueError(f"boxes: only {' / '.join(DECISIONS_WITH_BOXES)} carries boxes, "
                             f"not {self.decision!r}")
        for i, b in enumerate(self.boxes):
            if not all(math.isfinite(v) and v >= 0 for v in b.xyxy) or b.x2 <= b.x1 or b.y2 <= b.y1:
                raise ValueError(f"boxes[{i}]: {b.xyxy} is not a box in image pixels "
                                 "(finite, ≥ 0, x1 < x2, y1 < y2)")
        return self


class InspectionResult(_Message):
    """One inspected part: what the model saw and said, the verdict, and how long each stage took."""

    type: Literal["result"] = "result"
    station: str
    seq: int = Field(ge=1, description="per-station sequence number, assigned by the journal")
    epoch: str = Field("", description="the journal's identity: seqs restart when it changes")
    part_id: str
    camera: str
    frame_number: int = Field(ge=0)
    captured_at: datetime
    verdict: Verdict
    reason: str = Field("", description="why the verdict: the answer, a gate pass, or the failure")
    decision: bool | None = Field(None, description="the model's yes/no; None when unread or not asked")
    score: float | None = Field(None, description="anomaly score in [0, 1] when one exists")
    boxes: list[Box] = Field(default_factory=list)
    think: str = ""
    rethink: str = ""
    answer: str = ""
    raw_response: str = ""
    format_ok: bool = False
    problems: list[str] = Field(default_factory=list)
    prompt_version: str = ""
    model_id: str = ""
    image_path: str = Field("", description="journal-relative path of the stored image")
    image_width: int = Field(0, ge=0)
    image_height: int = Field(0, ge=0)
    gate_score: float | None = None
    gate_threshold: float | None = Field(None, description="the gate's threshold: a score at or above it "
                                         "is suspicious")
    gate_map_path: str = ""
    gate_bank_sha256: str = Field("", description="the gate memory bank that scored it (changes as the line learns)")
    grid_width: int = Field(0, ge=0, description="the model grid the VLM saw (0: not asked); its boxes "
                            "in `think`/`rethink` are in these pixels")
    grid_height: int = Field(0, ge=0)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    attempts: int = Field(1, ge=0)
    operator: OperatorVerdict | None = None
    # ---- line decisions (stations with a deadline; None/0 on results made without one) --------
    revision: int = Field(default=0, ge=0, description="0: the decision the line acted on; 1+: later verdicts")
    decision_source: DecisionSource | None = None
    action: LineAction | None = Field(default=None, description="what the line did with the part")
    decided_at: datetime | None = None
    triggered_at: datetime | None = None
    deadline_ms: float | None = Field(default=None, gt=0)
    recipe: str = ""

    @property
    def needs_review(self) -> bool:
        """Flagged by the line and not yet decided by a person."""
        return self.verdict in ("fail", "review") and self.operator is None


class CameraStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: str
    url: str = ""
    connected: bool
    fps: float = 0.0
    last_frame_age_s: float | None = None
    captured: int = 0
    dropped: int = 0
    errors: int = 0
    reconnects: int = 0
    last_error: str = ""
    streaming: bool = Field(True, description="frames flow continuously; False for folders and triggered "
                            "cameras, where a long silence is an idle line, not a stall")


class GateState(BaseModel):
    """One recipe's screening gate as the station runs it: which bank, and whether its scores drift."""

    recipe: str
    bank_sha256: str = ""
    bank_size: int = 0
    threshold: float | None = None
    learned_changes: int = Field(0, ge=0, description="bank versions the line made from operator verdicts")
    drift_raised: bool = False
    drift_statistic: float | None = Field(None, description="KS D of the latest window against the reference")
    drift_critical: float | None = None
    drift_parts_seen: int = 0


class StationStatus(_Message):
    """The appliance's health, published on the status topic and answered to status requests."""

    type: Literal["status"] = "status"
    station: str
    at: datetime = Field(default_factory=utcnow)
    healthy: bool
    last_seq: int = Field(0, ge=0)
    epoch: str = Field("", description="the journal's identity; a new one means seqs restarted")
    cameras: list[CameraStatus] = Field(default_factory=list)
    worker_alive: bool = False
    worker_restarts: int = 0
    parts_per_min: float = 0.0
    verdict_counts: dict[str, int] = Field(default_factory=dict)
    latency_ms_p50: dict[str, float] = Field(default_factory=dict)
    latency_ms_p95: dict[str, float] = Field(default_factory=dict)
    model_id: str = ""
    problems: list[str] = Field(default_factory=list)
    recipe: str = Field(default="", description="the product recipe in use (stations with recipes)")
    counters: dict[str, float] = Field(
        default_factory=dict,
        description="the line's running counters: deadline misses, missed ejections, decision-loop stalls "
                    "(ms, max and p99), the PLC link's poll gap and pulses, VLM jobs dropped",
    )
    gates: list[GateState] = Field(default_factory=list, description="each recipe's gate: bank, threshold, drift")


# ---- control socket (ROUTER): requests and replies ------------------------------------------


class ReplayRequest(_Message):
    type: Literal["replay"] = "replay"
    from_seq: int = Field(ge=1)
    to_seq: int | None = Field(None, ge=1)
    limit: int = Field(500, ge=1, le=MAX_REPLAY_LIMIT)


class VerdictRequest(_Message):
    type: Literal["verdict"] = "verdict"
    verdict: OperatorVerdict


class StatusRequest(_Message):
    type: Literal["status_request"] = "status_request"


class RecipeRequest(_Message):
    """Product changeover: the recipe for the parts triggered from now on."""

    type: Literal["recipe"] = "recipe"
    recipe: str = Field(min_length=1, max_length=64)
    #: who gave the command (journaled and published with the key that sent it)
    operator: str = Field("", max_length=MAX_NAME_CHARS)


class ImageRequest(_Message):
    """A part's journaled image (or gate heat map), for dashboards without access to its files."""

    type: Literal["image_request"] = "image_request"
    seq: int = Field(ge=1)
    kind: Literal["image", "gate_map"] = "image"
    epoch: Epoch = ""
    #: the first byte wanted: images come in pages (ImageReply.size is the whole file's)
    offset: int = Field(0, ge=0)


#: what a model command asks: make a stored candidate the active model, go back to the previous active
#: one, run a stored candidate in shadow beside the active model, or stop the shadow
ModelAction = Literal["promote", "rollback", "shadow", "shadow_stop"]


class ModelRequest(_Message):
    """A model change on a running station (needs a key with the `model` role; journaled either way).

    `model_id` names a model in the station's store (`adfm-appliance models`); `rollback` and
    `shadow_stop` take none."""

    type: Literal["model"] = "model"
    action: ModelAction
    model_id: str = Field("", max_length=MAX_NAME_CHARS)
    #: who gave the command (journaled and published with the key that sent it)
    operator: str = Field("", max_length=MAX_NAME_CHARS)


class ShadowReplayRequest(_Message):
    """Shadow results journaled from row id `from_id` on (they are published live only; a follower
    that missed some, or was away, fetches them with this)."""

    type: Literal["shadow_replay"] = "shadow_replay"
    from_id: int = Field(ge=1)
    limit: int = Field(500, ge=1, le=MAX_REPLAY_LIMIT)


ControlRequest = Annotated[
    ReplayRequest | VerdictRequest | StatusRequest | ImageRequest | RecipeRequest | ModelRequest
    | ShadowReplayRequest,
    Field(discriminator="type"),
]


class ReplayReply(_Message):
    type: Literal["replay_reply"] = "replay_reply"
    results: list[InspectionResult]
    last_seq: int = Field(ge=0, description="the journal's newest seq when the reply was made")
    more: bool = False
    epoch: str = ""


class ShadowEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    row_id: int = Field(ge=1, description="the shadow result's row id in the station's journal")
    result: InspectionResult


class ShadowReplayReply(_Message):
    type: Literal["shadow_replay_reply"] = "shadow_replay_reply"
    entries: list[ShadowEntry]
    last_id: int = Field(ge=0, description="the journal's newest shadow row id when the reply was made")
    more: bool = False
    epoch: str = ""


class ImageReply(_Message):
    type: Literal["image_reply"] = "image_reply"
    seq: int = Field(ge=1)
    kind: Literal["image", "gate_map"] = "image"
    epoch: str = ""
    media_type: str
    data_b64: str = Field(description="the file's bytes from `offset`, base64 (one page)")
    offset: int = Field(0, ge=0)
    size: int = Field(0, ge=0, description="the whole file's size in bytes")


class Ack(_Message):
    type: Literal["ack"] = "ack"
    ok: bool = True
    detail: str = ""


class ErrorReply(_Message):
    type: Literal["error"] = "error"
    error: str


ControlReply = Annotated[
    ReplayReply | Ack | ErrorReply | StationStatus | ImageReply | ShadowReplayReply, Field(discriminator="type")
]

_REQUEST = TypeAdapter(ControlRequest)
_REPLY = TypeAdapter(ControlReply)


def parse_request(
    data: bytes | str,
) -> ReplayRequest | VerdictRequest | StatusRequest | ImageRequest | RecipeRequest | ModelRequest | ShadowReplayRequest:
    """Decode a control request; raises pydantic.ValidationError naming the bad field."""
    return _REQUEST.validate_json(data)


def parse_reply(data: bytes | str) -> ReplayReply | Ack | ErrorReply | StationStatus | ImageReply | ShadowReplayReply:
    return _REPLY.validate_json(data)


def result_topic(station: str) -> bytes:
    return f"result.{station}".encode()


def status_topic(station: str) -> bytes:
    return f"status.{station}".encode()


def verdict_topic(station: str) -> bytes:
    """Topic on which the appliance announces each newly journaled operator verdict."""
    return f"verdict.{station}".encode()


def shadow_topic(station: str) -> bytes:
    """Topic of shadow results: a candidate model's answers on parts the active model decided (never
    acted on). Each message is `[topic, id, InspectionResult JSON]`, id the journal's shadow row id."""
    return f"shadow.{station}".encode()
