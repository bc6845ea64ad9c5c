"""The demo's scoring against the synthetic ground truth (no model: results built by hand)."""

from __future__ import annotations

from datetime import UTC, datetime

from adfm.appliance.demo import format_summary, score_against_truth, write_parts
from adfm.schema import Box, InspectionResult

TRUTH = {
    "part-000-normal": {"label": "normal", "defect": None, "box": None},
    "part-001-anomalous": {"label": "anomalous", "defect": "spot", "box": [40.0, 40.0, 80.0, 80.0]},
    "part-002-normal": {"label": "normal", "defect": None, "box": None},
    "part-003-anomalous": {"label": "anomalous", "defect": "missing", "box": [10.0, 10.0, 30.0, 30.0]},
}


def _result(seq: int, part_id: str, verdict: str, decision: bool | None, boxes=(), think: str = "") -> InspectionResult:
    return InspectionResult(station="demo", seq=seq, part_id=part_id, camera="cam0", frame_number=seq,
                            captured_at=datetime.now(UTC), verdict=verdict, decision=decision,
                            boxes=[Box.from_xyxy(b, "spot") for b in boxes], think=think, rethink="r", answer="yes")


def test_accuracy_counts_review_apart_and_picks_a_defective_part_with_boxes():
    results = [
        _result(1, "part-000-normal", "pass", None),  # passed by the gate: right
        _result(2, "part-001-anomalous", "fail", True, [[40, 40, 80, 60]], think="one region stands out"),  # right
        _result(3, "part-002-normal", "fail", True, [[0, 0, 5, 5]]),  # wrong
        _result(4, "part-003-anomalous", "review", None),  # a person decides: not right
    ]
    scored = score_against_truth(results, TRUTH)
    assert scored["parts_scored"] == 4 and scored["accuracy"] == 0.5
    assert scored["reviewed"] == 1 and scored["by_gate"] == 1
    assert scored["model_answers"] == 2 and scored["model_accuracy"] == 0.5 and scored["with_boxes"] == 2
    example = scored["example"]
    assert example["part_id"] == "part-001-anomalous" and example["boxes"][0]["xyxy"] == [40, 40, 80, 60]
    assert example["best_iou"== "best_iou"] if False else abs(example["best_iou"] - 0.5) < 1e-9
    summary = {"station": "demo", "parts": 4, "seconds": 1.0, "verdicts": {"pass": 1, "fail": 2, "review": 1},
               "worker_restarts": 0, "latency_ms_p50": {}, "latency_ms_p95": {}, "bus": {}, "subscriber_received": 4,
               "subscriber_in_order": True, "subscriber_error": "", "journal": {"db": "j.db"}, "last_seq": 4,
               "images": "img", "metrics_file": "m", "config": "c", "model_dir": "d", "against_truth": scored,
               "note": ""}
    text = format_summary(summary)
    assert "50% of 4 parts right (1 sent to review, 1 passed by the gate)" in text
    assert "one region stands out" in text and "[40, 40, 80, 60]" in text and "best IoU 0.50" in text


def test_parts_alternate_and_carry_their_defect_box(tmp_path):
    truth = write_parts(tmp_path, 4)
    assert [t["label"] for t in truth.values()] == ["normal", "anomalous", "normal", "anomalous"]
    assert [t["defect"] for t in truth.values()] == [None, "spot", None, "missing"]
    assert truth["part-000-normal"]["box"] is None
    x1, y1, x2, y2 = truth["part-001-anomalous"]["box"]
    assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256 and (x2 - x1) * (y2 - y1) > 100
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{k}.png" for k in truth]
