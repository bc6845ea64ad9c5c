"""The demo's scoring against the synthetic ground truth (no model: results built by hand)."""

from __future__ import annotations

from datetime import UTC, datetime

from adfm.appliance.demo import (
    builder_key,
    contact_sheet,
    format_summary,
    malformed_boxes,
    score_against_truth,
    score_model,
    write_parts,
)
from adfm.schema import Box, InspectionResult

TRUTH = {
    "part-000-normal": {"label": "normal", "defect": None, "box": None},
    "part-001-anomalous": {"label": "anomalous", "defect": "spot", "box": [40.0, 40.0, 80.0, 80.0]},
    "part-002-normal": {"label": "normal", "defect": None, "box": None},
    "part-003-anomalous": {"label": "anomalous", "defect": "missing", "box": [10.0, 10.0, 30.0, 30.0]},
}


def _result(seq: int, part_id: str, verdict: str, decision: bool | None, boxes=(), think: str = "",
            raw: str = "") -> InspectionResult:
    return InspectionResult(station="demo", seq=seq, part_id=part_id, camera="cam0", frame_number=seq,
                            captured_at=datetime.now(UTC), verdict=verdict, decision=decision,
                            boxes=[Box.from_xyxy(b, "spot") for b in boxes], think=think, rethink="r", answer="yes",
                            raw_response=raw, format_ok=decision is not None)


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
               "gate": "g.onnx", "note": ""}
    text = format_summary(summary)
    assert "the station (gate on): 50% of 4 parts right (1 passed by the gate, 2 answered by the model, " \
        "1 sent to review)" in text
    assert "one region stands out" in text and "[40, 40, 80, 60]" in text and "best IoU 0.50" in text


def test_parts_alternate_and_carry_their_defect_box(tmp_path):
    truth = write_parts(tmp_path, 4)
    assert [t["label"] for t in truth.values()] == ["normal", "anomalous", "normal", "anomalous"]
    assert [t["defect"] for t in truth.values()] == [None, "spot", None, "missing"]
    assert truth["part-000-normal"]["box"] is None
    x1, y1, x2, y2 = truth["part-001-anomalous"]["box"]
    assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256 and (x2 - x1) * (y2 - y1) > 100
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{k}.png" for k in truth]


def test_malformed_boxes_are_flagged_with_what_is_wrong():
    text = ('<think>spot [{"bbox_2d": [67, 75, 96, 52], "label": "spot"}, {"bbox_2d": [1, 2, 3, 4]}, '
            '{"bbox_2d": [5, 5, 5]}, {"bbox_2d": [9, 9, 2, 9]}]</think>')
    assert malformed_boxes(text) == [
        {"written": "[67, 75, 96, 52]", "why": "y2 < y1"},
        {"written": "[5, 5, 5]", "why": "3 numbers, not four"},
        {"written": "[9, 9, 2, 9]", "why": "x2 < x1, y2 = y1"},
    ]
    assert malformed_boxes('<think>[{"bbox_2d": [10, 10, 20, 20]}]</think>') == []


def test_the_model_is_scored_on_its_own_answers_and_drawn_on_a_contact_sheet(tmp_path):
    from PIL import Image

    truth = write_parts(tmp_path, 4)
    gt1 = truth["part-001-anomalous"]["box"]
    bad = '<think>spot [{"bbox_2d": [67, 75, 96, 52], "label": "spot"}]</think>'
    results = [
        _result(1, "part-000-normal", "pass", False),
        _result(2, "part-001-anomalous", "fail", True, [gt1]),  # right, on the defect
        _result(3, "part-002-normal", "fail", True, [[67, 52, 96, 75]], raw=bad),  # wrong, malformed box
        _result(4, "part-003-anomalous", "review", None),  # unread: wrong
    ]
    m = score_model(results, truth)
    assert (m["parts"], m["answered"], m["accuracy"], m["format_rate"]) == (4, 3, 0.5, 0.75)
    assert m["defective"] == 2 and m["iou50_defective"] == 0.5 and m["malformed_boxes"] == 1
    assert m["per_part"][1]["best_iou"] == 1.0 and m["per_part"][2]["malformed"][0]["why"] == "y2 < y1"
    m["contact_sheet"] = str(contact_sheet(tmp_path, m, tmp_path / "sheet.png"))
    sheet = Image.open(m["contact_sheet"])
    assert sheet.size == (4 * (256 + 6) + 6, 256 + 34 + 12)
    # the model's box (red) on part 1, drawn over the true box; the true box (green) alone on part 3
    x1, y1 = (round(v) for v in gt1[:2])
    assert sheet.getpixel((6 + 262 + x1, 6 + y1)) == (235, 40, 40)
    x3, y3 = (round(v) for v in truth["part-003-anomalous"]["box"][:2])
    assert sheet.getpixel((6 + 3 * 262 + x3, 6 + y3)) == (40, 220, 60)
    summary = {"station": "demo", "parts": 4, "seconds": 1.0, "verdicts": {"pass": 1, "fail": 2, "review": 1},
               "worker_restarts": 0, "latency_ms_p50": {}, "latency_ms_p95": {}, "bus": {}, "subscriber_received": 4,
               "subscriber_in_order": True, "subscriber_error": "", "journal": {"db": "j.db"}, "last_seq": 4,
               "images": "img", "metrics_file": "m", "config": "c", "model_dir": "d", "gate": "g.onnx",
               "model_alone": m, "against_truth": score_against_truth(results, truth), "note": ""}
    text = format_summary(summary)
    first = text.splitlines()[1]
    assert first.startswith("  the model (gate off, greedy): 50% of 4 parts right, answers in format 75%")
    assert "IoU ≥ 0.5 on 50% of the 2 defective parts" in first and "1 MALFORMED box(es)" in first


def test_the_example_flags_a_malformed_box_instead_of_printing_it_as_read():
    truth = {"part-001-anomalous": TRUTH["part-001-anomalous"]}
    bad = '<think>spot [{"bbox_2d": [67, 75, 96, 52], "label": "spot"}]</think>'
    scored = score_against_truth([_result(1, "part-001-anomalous", "fail", True, [[67, 52, 96, 75]], raw=bad)], truth)
    summary = {"station": "demo", "parts": 1, "seconds": 1.0, "verdicts": {"fail": 1}, "worker_restarts": 0,
               "latency_ms_p50": {}, "latency_ms_p95": {}, "bus": {}, "subscriber_received": 1,
               "subscriber_in_order": True, "subscriber_error": "", "journal": {"db": "j.db"}, "last_seq": 1,
               "images": "img", "metrics_file": "m", "config": "c", "model_dir": "d", "against_truth": scored,
               "note": ""}
    text = format_summary(summary)
    assert "MALFORMED box written as [67, 75, 96, 52] (y2 < y1): read with its corners put in order" in text


def test_the_model_cache_key_follows_the_builder(monkeypatch):
    from adfm.appliance import demo

    key = builder_key()
    assert key == builder_key() and len(key) == 16
    monkeypatch.setattr(demo, "DEMO_MODEL_VERSION", demo.DEMO_MODEL_VERSION + 1)
    assert builder_key() != key
