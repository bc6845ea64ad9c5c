"""Metrics of per-image anomaly scores (higher = more anomalous; score ≥ threshold is flagged).

AUROC, F1-max, recall at a threshold, accuracy at a fixed threshold and at the Youden-J threshold
(the ROC point maximising TPR − FPR), on scikit-learn's curves. Shared by the gate report and
the score-based protocol; `score_report` gathers them all in one dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class MetricError(ValueError):
    """Scores and labels a metric cannot be computed on; the message says why."""


def as_arrays(
    labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(bool labels, float64 scores), checked: same length, at least one, all scores finite."""
    y = np.asarray(labels, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.size != s.size:
        raise MetricError(f"{y.size} labels but {s.size} scores")
    if y.size == 0:
        raise MetricError("no scores")
    if not np.isfinite(s).all():
        raise MetricError(f"{int((~np.isfinite(s)).sum())} scores are not finite")
    return y, s


def has_both_classes(labels: np.ndarray) -> bool:
    y = np.asarray(labels, dtype=bool)
    return bool(y.any() and not y.all())


def _need_both(y: np.ndarray, what: str) -> None:
    if not has_both_classes(y):
        raise MetricError(f"{what} needs normal and anomalous images; got only {'anomalous' if y.all() else 'normal'}")


def auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores."""
    from sklearn.metrics import roc_auc_score

    y, s = as_arrays(labels, scores)
    _need_both(y, "AUROC")
    return float(roc_auc_score(y, s))


def f1_max(labels, scores) -> tuple[float, float]:
    """(best F1 over all thresholds, the threshold reaching it)."""
    from sklearn.metrics import precision_recall_curve

    y, s = as_arrays(labels, scores)
    _need_both(y, "F1-max")
    precision, recall, thresholds = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def flagged(scores, threshold: float) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64) >= threshold


def flag_rate(scores, threshold: float) -> float:
    """Share of images at or above the threshold (for the gate: the share sent to the VLM)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise MetricError("no scores")
    return float(flagged(s, threshold).mean())


def recall_at(labels, scores, threshold: float) -> float | None:
    """Share of anomalous images flagged at `threshold`; None without anomalous images."""
    y, s = as_arrays(labels, scores)
    return float(flagged(s[y], threshold).mean()) if y.any() else None


def confusion_at(labels, scores, threshold: float) -> dict[str, int]:
    y, s = as_arrays(labels, scores)
    p = flagged(s, threshold)
    return {"tp": int((y & p).sum()), "fp": int((~y & p).sum()), "tn": int((~y & ~p).sum()),
            "fn": int((y & ~p).sum())}


def accuracy_at(labels, scores, threshold: float) -> float:
    y, s = as_arrays(labels, scores)
    return float((flagged(s, threshold) == y).mean())


def balanced_accuracy_at(labels, scores, threshold: float) -> float:
    """Mean of the per-class accuracies over the classes present."""
    y, s = as_arrays(labels, scores)
    p = flagged(s, threshold)
    per_class = [float((p[y == c] == c).mean()) for c in (False, True) if (y == c).any()]
    return sum(per_class) / len(per_class)


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) at every distinct score, highest threshold first (scikit-learn's ROC)."""
    from sklearn.metrics import roc_curve

    y, s = as_arrays(labels, scores)
    _need_both(y, "a ROC curve")
    return roc_curve(y, s, drop_intermediate=False)


def youden_threshold(labels, scores) -> dict[str, float]:
    """The threshold maximising TPR − FPR (the highest among ties): threshold, j, tpr, fpr."""
    fpr, tpr, thresholds = roc_points(labels, scores)
    j = np.where(np.isfinite(thresholds), tpr - fpr, -np.inf)  # the "flag nothing" point has no threshold
    k = int(np.argmax(j))
    return {"threshold": float(thresholds[k]), "j": float(j[k]), "tpr": float(tpr[k]), "fpr": float(fpr[k])}


def score_report(labels, scores, threshold: float) -> dict[str, Any]:
    """Every figure above for one set of images, at `threshold` and at the Youden-J threshold.

    Figures that need both classes (AUROC, F1-max, Youden-J) are None when one is missing.
    """
    y, s = as_arrays(labels, scores)
    out: dict[str, Any] = {
        "auroc": None, "f1_max": None, "f1_max_threshold": None,
        "threshold": threshold,
        "accuracy_at_threshold": accuracy_at(y, s, threshold),
        "balanced_accuracy_at_threshold": balanced_accuracy_at(y, s, threshold),
        "recall_at_threshold": recall_at(y, s, threshold),
        "confusion_at_threshold": confusion_at(y, s, threshold),
        "youden_threshold": None, "youden_j": None, "youden_tpr": None, "youden_fpr": None,
        "accuracy_at_youden": None, "balanced_accuracy_at_youden": None, "confusion_at_youden": None,
    }
    if not has_both_classes(y):
        return out
    out["auroc"] = auroc(y, s)
    out["f1_max"], out["f1_max_threshold"] = f1_max(y, s)
    yj = youden_threshold(y, s)
    t = yj["threshold"]
    out.update(
        youden_threshold=t, youden_j=yj["j"], youden_tpr=yj["tpr"], youden_fpr=yj["fpr"],
        accuracy_at_youden=accuracy_at(y, s, t), balanced_accuracy_at_youden=balanced_accuracy_at(y, s, t),
        confusion_at_youden=confusion_at(y, s, t),
    )
    return out
