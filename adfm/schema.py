"""Inspection results and result-bus messages: one typed record, the same JSON everywhere.

An inspection result is what the journal stores, the PUB socket publishes, the control socket
replays and the review TUI shows. Control requests/replies travel on the appliance's ROUTER socket.
Every message carries `schema_version`; readers refuse a major version they do not know.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = SCHEMA_VERSION.split(".")[0]

Verdict = Literal["pass", "fail", "review"]
OperatorDecision = Literal["confirmed_defect", "false_alarm", "skip"]
#: What the line does with a part (the PLC's reject output acts on `reject`).
LineAction = Literal["pass", "reject", "hold"]
#: Where a part's decision came from: the screening gate, the VLM in time, or the fail-safe
#: action because the VLM did not finish in time, was down, the part had no frame, or the
#: disk was full; `missed_link`: the PLC counted the part while its link was down, so the station
#: never saw it (recorded with the fail-safe action on reconnect, before the count moves on).
DecisionSource = Literal[
    "gate", "vlm", "failsafe_timeout", "failsafe_model_down", "failsafe_missed_frame", "failsafe_disk_full",
    "missed_link",
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
    gate_map_path: str = ""
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


ControlRequest = Annotated[
    ReplayRequest | VerdictRequest | StatusRequest | ImageRequest | RecipeRequest, Field(discriminator="type")
]


class ReplayReply(_Message):
    type: Literal["replay_reply"] = "replay_reply"
    results: list[InspectionResult]
    last_seq: int = Field(ge=0, description="the journal's newest seq when the reply was made")
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
    ReplayReply | Ack | ErrorReply | StationStatus | ImageReply, Field(discriminator="type")
]

_REQUEST = TypeAdapter(ControlRequest)
_REPLY = TypeAdapter(ControlReply)


def parse_request(data: bytes | str) -> ReplayRequest | VerdictRequest | StatusRequest | ImageRequest | RecipeRequest:
    """Decode a control request; raises pydantic.ValidationError naming the bad field."""
    return _REQUEST.validate_json(data)


def parse_reply(data: bytes | str) -> ReplayReply | Ack | ErrorReply | StationStatus | ImageReply:
    return _REPLY.validate_json(data)


def result_topic(station: str) -> bytes:
    return f"result.{station}".encode()


def status_topic(station: str) -> bytes:
    return f"status.{station}".encode()


def verdict_topic(station: str) -> bytes:
    """Topic on which the appliance announces each newly journaled operator verdict."""
    return f"verdict.{station}".encode()
