"""The gate's threshold rules, shared by the trainer (commissioning) and the line (re-deriving the
threshold when operators' reviewed parts change the bank, `gate_learning`): one definition, so the
line's threshold means what the trainer's did.

With anomalies at hand, the threshold is the highest one that still flags `target_recall` of
them (score ≥ threshold is suspicious): the gate lets through as few good parts as it can while
sending that share of known defects to the VLM. Without anomalies, it is a quantile of the
held-out normal scores: about 1 − quantile of good parts go to the VLM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .gate import Calibration


def recall_threshold(anomalous_scores: Sequence[float], target_recall: float) -> float:
    """The highest t with share(anomalous score ≥ t) ≥ target_recall."""
    a = np.sort(np.asarray(anomalous_scores, dtype=np.float64))
    if a.size == 0:
        raise ValueError("a recall threshold needs anomalous scores")
    k = math.floor((1.0 - target_recall) * a.size + 1e-9)
    return float(a[min(k, a.size - 1)])


def quantile_threshold(normal_scores: Sequence[float], quantile: float) -> float:
    n = np.asarray(normal_scores, dtype=np.float64)
    if n.size == 0:
        raise ValueError("a quantile threshold needs normal scores")
    return float(np.quantile(n, quantile))


def calibrate(
    normal_scores: Sequence[float],
    anomalous_scores: Sequence[float],
    target_recall: float = 0.95,
    normal_quantile: float = 0.90,
) -> tuple[Calibration, float]:
    """(how the threshold was chosen, the threshold); see the module docstring."""
    normal = np.asarray(normal_scores, dtype=np.float64)
    anomalous = np.asarray(anomalous_scores, dtype=np.float64)
    if not (np.isfinite(normal).all() and np.isfinite(anomalous).all()):
        raise ValueError("calibration scores must be finite")
    q = quantile_threshold(normal, normal_quantile) if normal.size else None
    if anomalous.size:
        method, target, t = "recall", target_recall, recall_threshold(anomalous, target_recall)
    elif q is not None:
        method, target, t = "normal_quantile", normal_quantile, q
    else:
        raise ValueError("calibration needs held-out normal or anomalous scores")
    return Calibration(
        method=method,
        target=target,
        n_normal=int(normal.size),
        n_anomalous=int(anomalous.size),
        recall=float((anomalous >= t).mean()) if anomalous.size else None,
        normal_flag_rate=float((normal >= t).mean()) if normal.size else None,
        normal_quantile_threshold=q,
    ), t
