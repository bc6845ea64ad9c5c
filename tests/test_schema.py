"""Results and bus messages: JSON round trips, discriminated control messages, version checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from adfm.schema import (
    SCHEMA_VERSION,
    Ack,
    Box,
    InspectionResult,
    OperatorVerdict,
    ReplayReply,
    ReplayRequest,
    StationStatus,
    StatusRequest,
    VerdictRequest,
    parse_reply,
    parse_request,
    result_topic,
)


def _result(**kw) -> InspectionResult:
    base = dict(
        station="line1", seq=7, part_id="P-0007", camera="cam0", frame_number=12,
        captured_at=datetime(2026, 11, 22, 3, 0, tzinfo=UTC), verdict="fail", decision=True,
        boxes=[Box.from_xyxy([30, 40, 10, 20], "scratch")], think="t", rethink="r", answer="yes",
        format_ok=True, prompt_version="multi-stage-v1", model_id="m@abc", image_path="images/7.png",
        image_width=640, image_height=480, latency_ms={"vlm": 812.5, "journal": 1.2},
    )
    base.update(kw)
    return InspectionResult(**base)


def test_result_json_round_trip():
    r = _result()
    back = InspectionResult.model_validate_json(r.model_dump_json())
    assert back == r
    assert back.schema_version == SCHEMA_VERSION
    assert back.boxes[0].xyxy == [10, 20, 30, 40]  # corners ordered
    assert back.needs_review


def test_operator_verdict_clears_review():
    v = OperatorVerdict(station="line1", seq=7, decision="false_alarm", operator="ana", verdict_id="v1")
    r = _result(operator=v)
    assert not r.needs_review
    assert InspectionResult.model_validate_json(r.model_dump_json()).operator.operator == "ana"


def test_unknown_major_version_and_fields_are_refused():
    data = _result().model_dump(mode="json")
    data["schema_version"] = "2.0"
    with pytest.raises(ValidationError, match="schema_version"):
        InspectionResult.model_validate(data)
    data["schema_version"] = "1.3"  # a newer minor of the same major reads
    InspectionResult.model_validate(data)
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        InspectionResult.model_validate(data)


def test_bad_verdict_names_the_field():
    with pytest.raises(ValidationError, match="verdict"):
        _result(verdict="maybe")


def test_control_requests_are_discriminated():
    assert isinstance(parse_request(ReplayRequest(from_seq=3).model_dump_json()), ReplayRequest)
    assert isinstance(parse_request(StatusRequest().model_dump_json()), StatusRequest)
    v = OperatorVerdict(station="s", seq=1, decision="confirmed_defect", operator="op", verdict_id="x")
    req = parse_request(VerdictRequest(verdict=v).model_dump_json())
    assert isinstance(req, VerdictRequest) and req.verdict.decision == "confirmed_defect"
    with pytest.raises(ValidationError):
        parse_request(b'{"type": "delete_everything"}')
    with pytest.raises(ValidationError, match="from_seq"):
        parse_request(b'{"type": "replay", "from_seq": 0}')


def test_replies_round_trip():
    rep = ReplayReply(results=[_result()], last_seq=7)
    assert parse_reply(rep.model_dump_json()) == rep
    assert parse_reply(Ack(detail="ok").model_dump_json()).ok
    st = StationStatus(station="s", healthy=True, last_seq=7)
    assert isinstance(parse_reply(st.model_dump_json()), StationStatus)
    assert result_topic("line1") == b"result.line1"
