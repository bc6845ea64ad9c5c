"""Choosing the gate's threshold from scores of images it was not fitted on.

With anomalies at hand, the threshold is the highest one that still flags `target_recall` of
them (score ≥ threshold is suspicious): the gate lets through as few good parts as it can while
sending that share of known defects to the VLM. Without anomalies, it is a quantile of the
held-out normal scores: about 1 − quantile of good parts go to the VLM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from adfm.runtime.gate import Calibration


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


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate k/n: a threshold set on ~30 parts is noisy, so the
    figures it is sold with carry their spread."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


#: Heat map pixels of normal parts below this percentile are drawn in the coldest colour.
DISPLAY_LOW_PERCENTILE = 95.0


def display_range(normal_maps: np.ndarray, normal_scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """Heat map colours: cold up to the 95th percentile of normal map values (ordinary texture stays
    dark), hottest from the threshold or the highest held-out normal score, whichever is higher
    (so a good part's map never looks like a defect's)."""
    maps = np.asarray(normal_maps, dtype=np.float64)
    scores = np.asarray(normal_scores, dtype=np.float64)
    low = float(np.percentile(maps, DISPLAY_LOW_PERCENTILE)) if maps.size else 0.0
    high = max(float(threshold), float(scores.max()) if scores.size else float(threshold))
    if not high > low:
        high = low + max(abs(low), 1e-6)
    return low, high
