"""Score-based models: AUROC, F1-max, fixed and Youden-J thresholds against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adfm.trainer.data.records import Sample, write_manifest
from adfm.trainer.evaluation.cli import main as eval_main
from adfm.trainer.evaluation.metrics import score_report
from adfm.trainer.evaluation.scores import ScoresError, main, read_scores

LABELS = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])


def test_score_metrics_match_hand_computed_values():
    m = score_report(LABELS, SCORES, threshold=0.2)
    # 7 of the 9 (anomalous, normal) pairs are ordered right
    assert m["auroc"] == pytest.approx(7 / 9)
    # best F1 at 0.8: precision 1, recall 2/3
    assert m["f1_max"] == pytest.approx(0.8) and m["f1_max_threshold"] == pytest.approx(0.8)
    # TPR − FPR: 0.9 → 1/3, 0.8 → 2/3, 0.4 → 1/3, 0.35 → 0, 0.3 → 1/3, 0.1 → 0
    assert m["youden_threshold"] == pytest.approx(0.8) and m["youden_j"] == pytest.approx(2 / 3)
    assert (m["youden_tpr"], m["youden_fpr"]) == (pytest.approx(2 / 3), 0.0)
    assert m["accuracy_at_youden"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy_at_youden"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["confusion_at_youden"] == {"tp": 2, "fp": 0, "tn": 3, "fn": 1}
    # at 0.2 everything but 0.1 is flagged
    assert m["accuracy_at_threshold"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy_at_threshold"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["recall_at_threshold"] == 1.0
    assert m["confusion_at_threshold"] == {"tp": 3, "fp": 2, "tn": 1, "fn": 0}


def test_one_class_gives_no_ranking_figures():
    m = score_report(np.array([True, True]), np.array([0.2, 0.9]), threshold=0.5)
    assert m["auroc"] is None and m["youden_threshold"] is None and m["f1_max"] is None
    assert m["accuracy_at_threshold"] == 0.5


def test_worse_than_chance_scores_still_get_a_finite_youden_threshold():
    m = score_report(np.array([True, False]), np.array([0.1, 0.9]), threshold=0.5)
    assert m["auroc"] == 0.0 and np.isfinite(m["youden_threshold"])


def _split(tmp_path: Path) -> Path:
    samples = []
    for i, (lab, ds, cat) in enumerate([(0, "mvtec", "tile"), (0, "mvtec", "tile"), (0, "visa", "pcb"),
                                        (1, "mvtec", "tile"), (1, "visa", "pcb"), (1, "visa", "pcb")]):
        samples.append(Sample(id=f"{ds}/{cat}/test/{i}", image=str(tmp_path / f"{i}.png"), dataset=ds,
                              category=cat, split="test", label="anomalous" if lab else "normal"))
    return write_manifest(samples, tmp_path / "split.jsonl")


def test_cli_with_a_split_writes_results_tables_and_plots(tmp_path):
    split = _split(tmp_path)
    ids = [json.loads(x)["id"] for x in split.read_text().splitlines()]
    rows = ["id,score,image"]
    for i, (sid, v) in enumerate(zip(ids, SCORES, strict=True)):
        rows.append(f",{v},{tmp_path / f'{i}.png'}" if i == 1 else f"{sid},{v},")  # row 1 matched by image
    scores = tmp_path / "scores.csv"
    scores.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert eval_main(["scores", str(scores), "--split", str(split), "--out", str(out), "--threshold", "0.2"]) == 0
    results = json.loads((out / "results.json").read_text())
    overall = results["metrics"]["overall"]
    assert overall["n"] == 6 and overall["auroc"] == pytest.approx(7 / 9)
    assert overall["youden_threshold"] == pytest.approx(0.8)
    assert overall["accuracy_at_threshold"] == pytest.approx(4 / 6)
    assert set(results["metrics"]["datasets"]) == {"mvtec", "visa"}
    assert results["metrics"]["datasets"]["mvtec"]["categories"]["tile"]["n"] == 3
    for name in ("results.md", "roc.png", "confusion_matrix.png"):
        assert (out / name).is_file()
    assert "Youden-J" in (out / "results.md").read_text()


def test_labels_from_the_scores_file(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text("\n".join(json.dumps({"image": f"{i}.png", "score": float(v), "label": "anomalous" if lab
                                          else "good"}) for i, (lab, v) in enumerate(zip(LABELS, SCORES,
                                                                                          strict=True))))
    items, notes = read_scores(path)
    assert [s.anomalous for s in items] == list(LABELS) and notes == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("image,score\na.png,high\n", r"scores\.csv:2: score 'high' is not a number"),
        ("image,score\na.png,nan\n", r"scores\.csv:2: score 'nan' is not finite"),
        ("image,value\na.png,1\n", "must name a 'score' column"),
        ("image,score,label\na.png,0.5,maybe\n", "label 'maybe' is neither normal nor anomalous"),
        ("image,score\na.png,0.5\n", "no label; give the split manifest with --split"),
        ("image,score\n", "no scores"),
    ],
)
def test_bad_scores_files_are_named(tmp_path, content, message):
    path = tmp_path / "scores.csv"
    path.write_text(content)
    with pytest.raises(ScoresError, match=message):
        read_scores(path)


def test_rows_must_match_the_split(tmp_path):
    split = _split(tmp_path)
    path = tmp_path / "scores.csv"
    path.write_text("sample_id,score\nnot/a/sample,0.3\n")
    with pytest.raises(ScoresError, match=r"scores\.csv:2: 'not/a/sample' is not a sample of"):
        read_scores(path, split)
    path.write_text("sample_id,score\nmvtec/tile/test/0,0.3\nmvtec/tile/test/0,0.4\n")
    with pytest.raises(ScoresError, match="scored twice"):
        read_scores(path, split)
    path.write_text("sample_id,score\nmvtec/tile/test/0,0.3\n")
    items, notes = read_scores(path, split)
    assert len(items) == 1 and "5 samples" in notes[0]


def test_cli_refuses_a_missing_file_with_its_name(tmp_path, capsys):
    assert main([str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "scores file not found" in capsys.readouterr().err
