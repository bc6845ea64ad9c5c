"""Choosing the gate's threshold from scores of images it was not fitted on.

With anomalies at hand, the threshold is the highest one that still flags `target_recall` of
them (score ≥ threshold is suspicious): the gate lets through as few good parts as it can while
sending that share of known defects to the VLM. Without anomalies, it is a quantile of the
held-out normal scores: about 1 − quantile of good parts go to the VLM.
"""

from __future__ import annotations

import math

import numpy as np

# the rules live with the line, which re-derives the threshold too; imported here for the trainer
from adfm.runtime.gate_calibration import calibrate, quantile_threshold, recall_threshold

__all__ = ["calibrate", "display_range", "quantile_threshold", "recall_threshold", "wilson_interval"]


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
