"""Metrics from stored answers with known content, checked against values computed by hand."""

from __future__ import annotations

import pytest

from adfm.protocol import format_response
from adfm.trainer.data.records import Sample
from adfm.trainer.evaluation.responses import INSPECT, ResponseRecord
from adfm.trainer.evaluation.vlm_eval import score
from adfm.trainer.evaluation.vlm_metrics import inspection_metrics, mmad_metrics

IDENTITY = (100, 100, 100, 100)


def _sample(sid: str, dataset: str, category: str, label: str, boxes=None, extra=None) -> Sample:
    return Sample(
        id=sid, image=f"/data/{sid}.png", dataset=dataset, category=category, split="test", label=label,
        defect_type="good" if label == "normal" else "scratch", boxes=boxes, extra=extra or {},
    )


def _rec(sid: str, response: str, grid=IDENTITY, question: str = INSPECT, task: str = INSPECT) -> ResponseRecord:
    return ResponseRecord(sample_id=sid, question=question, task=task, response=response, grid=grid,
                          image=f"/data/{sid}.png", run="r")


def _inspection_case() -> tuple[dict[str, Sample], list[ResponseRecord]]:
    s = [
        _sample("m1", "mvtec", "washer", "normal", boxes=[]),
        _sample("m2", "mvtec", "washer", "normal", boxes=[]),
        _sample("m3", "mvtec", "washer", "anomalous", boxes=[[10, 10, 50, 50]]),
        _sample("m4", "mvtec", "washer", "anomalous", boxes=[[0, 0, 20, 20], [60, 60, 100, 100]]),
        _sample("m5", "mvtec", "washer", "anomalous", boxes=[[30, 30, 60, 60]]),
        _sample("m6", "mvtec", "tile", "normal", boxes=[]),
        _sample("m7", "mvtec", "tile", "anomalous", boxes=None),
        _sample("v1", "visa", "pcb", "normal", boxes=[]),
        _sample("v2", "visa", "pcb", "anomalous", boxes=[[20, 20, 40, 40]]),
    ]
    records = [
        _rec("m1", format_response(False)),                                   # TN
        _rec("m2", format_response(True, [[5, 5, 15, 15]])),                  # FP, a box on a normal part
        _rec("m3", format_response(True, [[10, 10, 50, 50]])),                # TP, exact box: GIoU 1
        _rec("m4", format_response(True, [[0, 0, 20, 40]])),                  # TP, IoU 0.5 with gt 0
        _rec("m5", "the part looks fine to me"),                              # unread, anomalous
        _rec("m6", format_response(False)),                                   # TN
        _rec("m7", format_response(False)),                                   # FN, boxes unknown
        _rec("v1", "<answer>no</answer>"),                                    # TN, format not kept
        # grid 100x50 for a 200x100 image: the model's [10,10,20,20] is [20,20,40,40] in the original
        _rec("v2", format_response(True, [[10, 10, 20, 20]]), grid=(200, 100, 100, 50)),
    ]
    return {x.id: x for x in s}, records


def test_inspection_metrics_match_hand_computed_values():
    samples, records = _inspection_case()
    m = inspection_metrics(samples, records, "multi-stage-v1")

    mv = m["datasets"]["mvtec"]
    assert mv["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1, "unread_normal": 0, "unread_anomalous": 1}
    assert mv["n"] == 7 and mv["n_normal"] == 3 and mv["n_anomalous"] == 4
    assert mv["accuracy"] == pytest.approx(4 / 7)
    assert mv["normal_accuracy"] == pytest.approx(2 / 3)
    assert mv["anomalous_accuracy"] == pytest.approx(1 / 2)
    assert mv["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert mv["precision"] == pytest.approx(2 / 3)
    assert mv["recall"] == pytest.approx(1 / 2)
    assert mv["f1"] == pytest.approx(4 / 7)
    assert mv["parse_failure_rate"] == pytest.approx(1 / 7)

    loc = mv["localization"]
    assert loc["samples"] == 3 and loc["gt_boxes"] == 4 and loc["pred_boxes"] == 2 and loc["matched"] == 2
    assert loc["mean_giou"] == pytest.approx((1.0 + 0.5) / 2)
    assert loc["box_recall_at_50"] == pytest.approx(2 / 4)
    assert loc["box_precision_at_50"] == pytest.approx(2 / 2)
    assert loc["anomalous_without_gt_boxes"] == 1
    assert loc["normal_with_boxes_rate"] == pytest.approx(1 / 3)

    washer, tile = mv["categories"]["washer"], mv["categories"]["tile"]
    assert washer["accuracy"] == pytest.approx(3 / 5) and tile["accuracy"] == pytest.approx(1 / 2)
    assert tile["balanced_accuracy"] == pytest.approx((1.0 + 0.0) / 2)

    visa = m["datasets"]["visa"]
    assert visa["accuracy"] == 1.0 and visa["f1"] == 1.0
    assert visa["format_ok_rate"] == pytest.approx(1 / 2)
    assert visa["localization"]["mean_giou"] == pytest.approx(1.0)  # grid → original mapping applied

    avg = m["average_over_datasets"]
    assert avg["accuracy"] == pytest.approx((4 / 7 + 1) / 2)
    assert avg["balanced_accuracy"] == pytest.approx(((2 / 3 + 1 / 2) / 2 + 1) / 2)
    assert avg["f1"] == pytest.approx((4 / 7 + 1) / 2)

    pooled = m["overall"]
    assert pooled["accuracy"] == pytest.approx(6 / 9)
    assert pooled["balanced_accuracy"] == pytest.approx((3 / 4 + 3 / 5) / 2)
    assert pooled["precision"] == pytest.approx(3 / 4)
    assert pooled["recall"] == pytest.approx(3 / 5)
    assert pooled["f1"] == pytest.approx(2 / 3)


def test_localization_is_reported_for_think_and_rethink_boxes():
    """<think> proposes (the reward trains those), <rethink> confirms (the line shows those)."""
    samples = {x.id: x for x in [
        _sample("a1", "mvtec", "washer", "anomalous", boxes=[[10, 10, 50, 50]]),
        _sample("a2", "mvtec", "washer", "anomalous", boxes=[[60, 60, 100, 100]]),
        _sample("n1", "mvtec", "washer", "normal", boxes=[]),
    ]}
    records = [
        # think proposes the exact box (GIoU 1) and a far one; rethink keeps a half box: [10,10,50,30],
        # IoU with [10,10,50,50] = 800/1600 = 0.5, enclosing = union → GIoU 0.5
        _rec("a1", '<think>[{"bbox_2d": [10, 10, 50, 50]}, {"bbox_2d": [80, 80, 90, 90]}]</think>'
                   '<rethink>[{"bbox_2d": [10, 10, 50, 30]}]</rethink><answer>yes</answer>'),
        # think proposes nothing; rethink writes no list, so the line shows think's (empty) list
        _rec("a2", "<think>[]</think><rethink>looks like a scratch</rethink><answer>yes</answer>"),
        # a normal part: a proposal in think, discarded in rethink
        _rec("n1", '<think>[{"bbox_2d": [1, 1, 9, 9]}]</think><rethink>[]</rethink><answer>no</answer>'),
    ]
    m = inspection_metrics(samples, records, "multi-stage-v1")["overall"]
    shown, think, rethink = m["localization"], m["localization_think"], m["localization_rethink"]
    assert (shown["pred_boxes"], shown["mean_giou"]) == (1, pytest.approx(0.5))
    assert shown["box_recall_at_50"] == pytest.approx(1 / 2) and shown["normal_with_boxes_rate"] == 0.0
    assert think["pred_boxes"] == 3 - 1  # a1's two proposals (n1's is on a normal part)
    assert think["mean_giou"] == pytest.approx(1.0) and think["box_recall_at_50"] == pytest.approx(1 / 2)
    assert think["box_precision_at_50"] == pytest.approx(1 / 2) and think["normal_with_boxes_rate"] == 1.0
    assert (rethink["pred_boxes"], rethink["mean_giou"]) == (1, pytest.approx(0.5))
    one_stage = inspection_metrics(samples, records[:1], "one-stage-v1")["overall"]
    assert one_stage["localization_rethink"] is None


def test_balanced_accuracy_with_one_class_is_that_class_accuracy():
    samples = {"a": _sample("a", "d", "c", "anomalous", boxes=[]), "b": _sample("b", "d", "c", "anomalous", boxes=[])}
    m = inspection_metrics(samples, [_rec("a", format_response(True)), _rec("b", format_response(False))],
                           "multi-stage-v1")
    assert m["overall"]["balanced_accuracy"] == pytest.approx(0.5)
    assert m["overall"]["normal_accuracy"] is None
    assert m["overall"]["precision"] == 1.0


def _conv(*questions: tuple[str, str, dict[str, str]]) -> dict:
    return {"conversation": [{"Question": "q?", "Answer": a, "Options": o, "type": t} for t, a, o in questions]}


YES_NO = {"A": "Yes.", "B": "No."}
DEFECTS = {"A": "scratch.", "B": "crack.", "C": "None."}


def _mmad_case() -> tuple[dict[str, Sample], list[ResponseRecord]]:
    def mk(key: str, label: str, *questions, source: str) -> Sample:
        extra = {**_conv(*questions), "source": source, "key": key}
        return _sample(f"mmad/{key}", "mmad", "/".join(key.split("/")[:2]), label, boxes=[], extra=extra)

    ad_normal = ("Anomaly Detection", "B", YES_NO)
    ad_bad = ("Anomaly Detection", "A", YES_NO)
    dc = ("Defect Classification", "A", DEFECTS)
    s = [
        mk("DS-MVTec/bottle/image/good/000.png", "normal", ad_normal, source="DS-MVTec"),
        mk("DS-MVTec/bottle/image/good/001.png", "normal", ad_normal, source="DS-MVTec"),
        mk("DS-MVTec/bottle/image/good/002.png", "normal", ad_normal, source="DS-MVTec"),
        mk("DS-MVTec/bottle/image/broken/000.png", "anomalous", ad_bad, dc, source="DS-MVTec"),
        mk("DS-MVTec/bottle/image/broken/001.png", "anomalous", ad_bad, dc, source="DS-MVTec"),
        mk("VisA/pcb1/image/good/000.png", "normal", ad_normal, ("Object Structure", "A", DEFECTS), source="VisA"),
        mk("VisA/pcb1/image/bad/000.png", "anomalous", ad_bad, source="VisA"),
    ]
    samples = {x.id: x for x in s}
    ids = [x.id for x in s]

    def q(i: int, index: int, text: str) -> ResponseRecord:
        return _rec(ids[i], text, question=f"mmad/{index}", task="x")

    records = [
        q(0, 0, "B"),                               # normal, correct
        q(1, 0, "Answer: A."),                      # normal, wrong
        q(2, 0, "<answer>B</answer>"),              # normal, correct
        q(3, 0, "A"),                               # anomalous, correct
        q(3, 1, "It could be B. Final answer: C"),  # last letter C: wrong
        q(4, 0, ""),                                # anomalous, unread: wrong
        q(4, 1, "scratch"),                         # no letter: closest option text, A: correct
        q(5, 0, "B"),                               # VisA normal, correct
        q(5, 1, "A"),                               # Object Structure → Object Analysis, correct
        q(6, 0, "B"),                               # VisA anomalous, wrong
    ]
    return samples, records


def test_mmad_subtasks_match_hand_computed_values():
    samples, records = _mmad_case()
    m = mmad_metrics(samples, records)
    assert m["subtasks"] == ["Anomaly Detection", "Defect Classification", "Object Analysis"]

    ds = m["by_source"]["DS-MVTec"]["subtasks"]
    ad = ds["Anomaly Detection"]
    assert ad["normal_accuracy"] == pytest.approx(2 / 3) and ad["anomalous_accuracy"] == pytest.approx(1 / 2)
    assert ad["score"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # MMAD's balanced accuracy
    assert ad["accuracy"] == pytest.approx(3 / 5)
    assert ad["unread"] == 1
    assert ds["Defect Classification"]["score"] == pytest.approx(1 / 2)
    assert ds["Defect Classification"]["read_by_option_text"] == 1
    assert m["by_source"]["DS-MVTec"]["average"] == pytest.approx(((2 / 3 + 1 / 2) / 2 + 1 / 2) / 2)

    visa = m["by_source"]["VisA"]
    assert visa["subtasks"]["Anomaly Detection"]["score"] == pytest.approx((1 + 0) / 2)
    assert visa["subtasks"]["Object Analysis"]["score"] == 1.0
    assert visa["average"] == pytest.approx(0.75)

    avg = m["average_over_sources"]
    assert avg["Anomaly Detection"] == pytest.approx(((2 / 3 + 1 / 2) / 2 + 1 / 2) / 2)
    assert avg["Defect Classification"] == pytest.approx(1 / 2)
    assert avg["Object Analysis"] == 1.0
    assert avg["Average"] == pytest.approx((((2 / 3 + 1 / 2) / 2 + 1 / 2) / 2 + 0.75) / 2)

    pooled = m["pooled"]["Anomaly Detection"]
    assert pooled["n"] == 7
    assert pooled["score"] == pytest.approx((3 / 4 + 1 / 3) / 2)


def test_score_keeps_the_last_answer_and_counts_unanswered_items():
    from adfm.trainer.evaluation.vlm_eval import Item

    samples, records = _inspection_case()
    items = [Item(s, INSPECT, INSPECT) for s in samples.values()]
    # m1 answered twice (a rerun): the later answer wins; v2 never answered.
    later = [*records[:-1], _rec("m1", format_response(True))]
    out = score(list(samples.values()), items, later, "multi-stage-v1")
    assert out["answers"]["items"] == 9 and out["answers"]["answered"] == 8 and out["answers"]["unanswered"] == 1
    mv = out["inspection"]["datasets"]["mvtec"]["confusion"]
    assert mv["tn"] == 1 and mv["fp"] == 2
    assert out["inspection"]["datasets"]["visa"]["n"] == 1
