"""Drift of the gate's score distribution, per recipe: a two-sample test against commissioning scores.

Why: lighting that ages or is knocked, a new supplier's material, a dirty lens — the gate's scores
move before anyone notices the VLM getting more parts or defects passing. The station keeps, per
recipe, a reference sample of scores (the commissioning scores) and a window of the latest ones,
and tests them with the two-sample Kolmogorov–Smirnov statistic D (the largest gap between the two
empirical distributions; no assumption about their shape). D above its critical value at `alpha`
raises the alarm once; it clears once D falls below the critical value at `clear_alpha` (hysteresis,
so a borderline window does not flap).

The reference is either given (`set_reference`, e.g. the held-out good parts' scores recorded by the
trainer, `reference_scores(metadata)`) or, by default, the first `reference_size` scores the station
sees for the recipe: the commissioning run. A gate change (a new bank from `gate_learning`, a retrained
gate) changes the scores on purpose: call `reset(recipe)` then.

The appliance's part (not here): call `observe(recipe, score)` for every scored part and publish
each returned `DriftAlarm` (bus, metrics, OPC UA) with its figures; `state(recipe)` gives the
current figures for metrics.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

#: Terms of the Kolmogorov distribution's series: plenty for any λ where p matters.
_SERIES_TERMS = 100


class DriftConfigError(ValueError):
    """A drift monitor setting out of range; the message names it."""


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov D: the largest gap between the empirical CDFs of `a` and `b`."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of D for samples of n and m (Kolmogorov's series with Stephens' correction)."""
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return 1.0
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, _SERIES_TERMS + 1))
    return float(min(1.0, max(0.0, p)))


def ks_critical(alpha: float, n: int, m: int) -> float:
    """D above which two samples of n and m differ at level `alpha` (large-sample approximation)."""
    return math.sqrt(-math.log(alpha / 2.0) / 2.0) * math.sqrt((n + m) / (n * m))


@dataclass(frozen=True)
class DriftAlarm:
    """A change of a recipe's drift state, with the figures that decided it."""

    recipe: str
    state: Literal["raised", "cleared"]
    statistic: float  # KS D between the window and the reference
    critical: float  # D's critical value at the monitor's alpha
    p_value: float
    window_size: int
    reference_size: int
    window_median: float
    reference_median: float
    parts_seen: int  # parts observed for this recipe when the state changed

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Recipe:
    reference: np.ndarray | None
    window: deque[float]
    seen: int = 0
    raised: bool = False
    last: dict[str, float] = field(default_factory=dict)


class DriftMonitor:
    """Per-recipe score windows tested against a reference; see the module docstring.

    `window`: the latest scores tested (an alarm needs about `critical` × window shifted parts);
    `alpha`: the level that raises (small: the test runs at every part, on overlapping windows);
    `clear_alpha`: the level below which it clears; `reference_size`: scores taken as the reference
    when none was given.
    """

    def __init__(
        self,
        window: int = 50,
        alpha: float = 1e-3,
        clear_alpha: float = 0.05,
        reference_size: int = 100,
        references: Mapping[str, Iterable[float]] | None = None,
    ) -> None:
        if window < 10:
            raise DriftConfigError(f"window must be ≥ 10 parts, got {window}")
        if not 0 < alpha < clear_alpha < 1:
            raise DriftConfigError(f"need 0 < alpha < clear_alpha < 1, got alpha={alpha}, clear_alpha={clear_alpha}")
        if reference_size < 10:
            raise DriftConfigError(f"reference_size must be ≥ 10 scores, got {reference_size}")
        self.window, self.alpha, self.clear_alpha, self.reference_size = window, alpha, clear_alpha, reference_size
        self._recipes: dict[str, _Recipe] = {}
        for recipe, scores in (references or {}).items():
            self.set_reference(recipe, scores)

    def set_reference(self, recipe: str, scores: Iterable[float]) -> None:
        """Use `scores` (the commissioning scores of this recipe's gate) as its reference; clears its window."""
        ref = np.asarray(list(scores), dtype=np.float64)
        if ref.size < 10:
            raise DriftConfigError(f"recipe {recipe!r}: a reference needs ≥ 10 scores, got {ref.size}")
        if not np.isfinite(ref).all():
            raise DriftConfigError(f"recipe {recipe!r}: the reference scores must be finite")
        self._recipes[recipe] = _Recipe(ref, deque(maxlen=self.window))

    def reset(self, recipe: str) -> None:
        """Forget the recipe's reference and window (after a gate change): the next scores make a new one."""
        self._recipes.pop(recipe, None)

    def observe(self, recipe: str, score: float) -> DriftAlarm | None:
        """Record one part's gate score; returns an alarm when the recipe's drift state changes."""
        if not math.isfinite(score):
            raise ValueError(f"recipe {recipe!r}: gate score must be finite, got {score}")
        r = self._recipes.get(recipe)
        if r is None:
            r = self._recipes[recipe] = _Recipe(None, deque(maxlen=self.reference_size))
        r.seen += 1
        if r.reference is None:  # still collecting the commissioning run
            r.window.append(float(score))
            if len(r.window) == self.reference_size:
                r.reference, r.window = np.asarray(r.window), deque(maxlen=self.window)
            return None
        r.window.append(float(score))
        if len(r.window) < self.window:
            return None
        win = np.asarray(r.window)
        d = ks_statistic(win, r.reference)
        n, m = win.size, r.reference.size
        crit, crit_clear = ks_critical(self.alpha, n, m), ks_critical(self.clear_alpha, n, m)
        r.last = {"statistic": d, "critical": crit, "p_value": ks_p_value(d, n, m)}
        if not r.raised and d > crit:
            r.raised = True
            return self._alarm(recipe, r, "raised", win)
        if r.raised and d < crit_clear:
            r.raised = False
            return self._alarm(recipe, r, "cleared", win)
        return None

    def state(self, recipe: str) -> dict[str, Any]:
        """The recipe's current figures, for metrics: raised or not, the last D, critical value, p-value."""
        r = self._recipes.get(recipe)
        if r is None:
            return {"recipe": recipe, "raised": False, "parts_seen": 0, "reference_ready": False}
        return {"recipe": recipe, "raised": r.raised, "parts_seen": r.seen,
                "reference_ready": r.reference is not None, **r.last}

    def _alarm(self, recipe: str, r: _Recipe, state: Literal["raised", "cleared"], win: np.ndarray) -> DriftAlarm:
        assert r.reference is not None
        return DriftAlarm(
            recipe=recipe, state=state, statistic=r.last["statistic"], critical=r.last["critical"],
            p_value=r.last["p_value"], window_size=int(win.size), reference_size=int(r.reference.size),
            window_median=float(np.median(win)), reference_median=float(np.median(r.reference)), parts_seen=r.seen,
        )


def reference_scores(metadata: Any) -> list[float]:
    """The held-out good parts' scores the trainer recorded in a gate's metadata (empty if none)."""
    scores = getattr(metadata, "training", {}).get("holdout_normal_scores", [])
    return [float(s) for s in scores]
