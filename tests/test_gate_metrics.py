"""Score metrics (AUROC, F1-max, recall, accuracies, Youden-J) and the gate's threshold calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from adfm.trainer.evaluation.metrics import (
    MetricError,
    accuracy_at,
    auroc,
    balanced_accuracy_at,
    f1_max,
    flag_rate,
    recall_at,
    score_report,
    youden_threshold,
)
from adfm.trainer.gate.calibrate import calibrate, display_range, quantile_threshold, recall_threshold

LABELS = np.array([0, 0, 0, 1, 1], dtype=bool)
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.3])


def test_auroc_counts_ordered_pairs():
    # pairs (anomalous, normal): 0.8 beats all 3, 0.3 beats only 0.1 → 4 of 6
    assert auroc(LABELS, SCORES) == pytest.approx(4 / 6)
    assert auroc(LABELS, -SCORES) == pytest.approx(2 / 6)


def test_f1_max_and_its_threshold():
    # at t=0.8: P=1, R=.5 → .667; at t=0.3 (flags 0.8, 0.4, 0.35, 0.3): P=.5, R=1 → .667; t=.35: P=1/3… → best .667
    f1, t = f1_max(LABELS, SCORES)
    assert f1 == pytest.approx(2 / 3)
    assert t in (0.8, 0.3)


def test_threshold_figures():
    assert recall_at(LABELS, SCORES, 0.5) == 0.5
    assert recall_at(LABELS, SCORES, 0.3) == 1.0
    assert recall_at(np.zeros(3, bool), [1, 2, 3], 0.5) is None
    assert accuracy_at(LABELS, SCORES, 0.5) == pytest.approx(4 / 5)
    assert balanced_accuracy_at(LABELS, SCORES, 0.5) == pytest.approx((1.0 + 0.5) / 2)
    assert flag_rate(SCORES, 0.35) == pytest.approx(3 / 5)


def test_youden_picks_max_tpr_minus_fpr():
    y = youden_threshold(LABELS, SCORES)
    # t=0.8: TPR .5 FPR 0 → .5;  t=0.3: TPR 1, FPR 2/3 → .33
    assert y["threshold"] == 0.8 and y["j"] == pytest.approx(0.5)


def test_report_with_one_class_leaves_two_class_figures_empty():
    r = score_report(np.zeros(4, bool), [0.1, 0.2, 0.3, 0.4], 0.25)
    assert r["auroc"] is None and r["f1_max"] is None and r["youden_threshold"] is None
    assert r["accuracy_at_threshold"] == 0.5 and r["recall_at_threshold"] is None
    with pytest.raises(MetricError, match="only normal"):
        auroc(np.zeros(4, bool), [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([True, False], [0.1], "2 labels but 1 scores"),
        ([], [], "no scores"),
        ([True, False], [0.1, math.nan], "finite"),
    ],
)
def test_bad_inputs_are_named(labels, scores, message):
    with pytest.raises(MetricError, match=message):
        score_report(labels, scores, 0.5)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(-1e3, 1e3, allow_nan=False)), min_size=2, max_size=40),
    st.floats(-1e3, 1e3, allow_nan=False),
)
def test_report_is_consistent_with_its_confusion(pairs, threshold):
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs])
    r = score_report(labels, scores, threshold)
    c = r["confusion_at_threshold"]
    assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == len(pairs)
    assert r["accuracy_at_threshold"] == pytest.approx((c["tp"] + c["tn"]) / len(pairs))
    if labels.any() and not labels.all():
        # AUROC depends on the order of the scores only: their dense ranks give the same figure
        assert auroc(labels, rankdata(scores, method="dense")) == pytest.approx(r["auroc"])
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 < r["f1_max"] <= 1.0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60), st.floats(0.05, 1.0))
def test_recall_threshold_is_the_highest_that_keeps_the_target(anomalous, target):
    a = np.array(anomalous)
    t = recall_threshold(a, target)
    assert (a >= t).mean() >= target - 1e-9
    higher = a[a > t]
    if higher.size:  # the next candidate up no longer keeps the target
        assert (a >= higher.min()).mean() < target


def test_calibration_prefers_anomalies_and_falls_back_to_normal_quantile():
    normal = np.linspace(0.0, 1.0, 101)
    cal, t = calibrate(normal, [0.5, 0.9, 1.5, 2.0], target_recall=0.75, normal_quantile=0.9)
    assert cal.method == "recall" and t == 0.9 and cal.recall == 0.75
    assert cal.normal_flag_rate == pytest.approx(11 / 101)
    assert cal.normal_quantile_threshold == pytest.approx(0.9)
    cal, t = calibrate(normal, [], normal_quantile=0.9)
    assert cal.method == "normal_quantile" and t == pytest.approx(quantile_threshold(normal, 0.9))
    assert cal.recall is None and cal.n_anomalous == 0
    with pytest.raises(ValueError, match="needs held-out normal or anomalous"):
        calibrate([], [])
    with pytest.raises(ValueError, match="finite"):
        calibrate([0.1, math.inf], [])


def test_display_range_keeps_normal_texture_cold_and_good_parts_below_the_hottest():
    maps = np.linspace(0.0, 1.0, 101)
    assert display_range(maps, np.array([0.7, 1.2]), 0.9) == (pytest.approx(0.95), 1.2)
    assert display_range(maps, np.array([0.7, 0.8]), 1.5) == (pytest.approx(0.95), 1.5)
    lo, hi = display_range(np.array([1.0, 1.0]), np.array([]), 0.5)  # threshold below normal texture
    assert hi > lo == 1.0
