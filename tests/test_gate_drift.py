"""Drift of the gate's scores (`adfm.runtime.gate_drift`): the two-sample test itself, and on the
synthetic station a lighting change mid-run raises the alarm within N parts while a steady run
raises none."""

from __future__ import annotations

import numpy as np
import pytest

from adfm.runtime.gate import Gate
from adfm.runtime.gate_drift import (
    DriftConfigError,
    DriftMonitor,
    ks_critical,
    ks_p_value,
    ks_statistic,
    reference_scores,
)
from adfm.synthetic import add_defect, relight, render_part
from tests.conftest import HAS_TORCH
from tests.gate_support import trained_gate

WINDOW = 50  # N: the alarm must come within this many parts of the change


def test_ks_statistic_and_p_value_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.3, 1.0):
        a, b = rng.normal(0, 1, 80), rng.normal(shift, 1, 120)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert ks_statistic(a, b) == pytest.approx(ref.statistic, abs=1e-12)
        assert ks_p_value(ks_statistic(a, b), 80, 120) == pytest.approx(ref.pvalue, abs=0.02)
    assert ks_critical(0.05, 100, 100) == pytest.approx(1.358 * np.sqrt(0.02), rel=1e-3)


def test_bad_settings_are_named():
    with pytest.raises(DriftConfigError, match="window"):
        DriftMonitor(window=3)
    with pytest.raises(DriftConfigError, match="alpha"):
        DriftMonitor(alpha=0.1, clear_alpha=0.05)
    with pytest.raises(DriftConfigError, match=r"'r1'.*≥ 10 scores"):
        DriftMonitor(references={"r1": [1.0, 2.0]})
    with pytest.raises(ValueError, match="finite"):
        DriftMonitor().observe("r1", float("nan"))


def test_alarm_is_raised_once_and_clears_with_hysteresis():
    rng = np.random.default_rng(1)
    mon = DriftMonitor(window=WINDOW, references={"a": rng.normal(0, 1, 200)})
    events = [mon.observe("a", float(s)) for s in rng.normal(0, 1, 200)]
    events += [mon.observe("a", float(s)) for s in rng.normal(3, 1, 100)]
    events += [mon.observe("a", float(s)) for s in rng.normal(0, 1, 200)]
    got = [(i, e.state) for i, e in enumerate(events) if e is not None]
    assert [s for _, s in got] == ["raised", "cleared"]
    assert 200 < got[0][0] < 200 + WINDOW and got[1][0] > 300
    assert mon.state("a")["raised"] is False and mon.state("other")["parts_seen"] == 0


@pytest.fixture(scope="module")
def station_scores(tmp_path_factory, synthetic_folder) -> dict[str, list[float]]:
    """Gate scores of fresh synthetic parts (every 20th defective): a commissioning run, a steady run,
    and parts under dimmer light."""
    if not HAS_TORCH:
        pytest.skip("training a gate needs the trainer extra (torch)")
    gate = Gate.load(trained_gate(tmp_path_factory, synthetic_folder), threads=1)
    rng = np.random.default_rng(42)

    def run(n: int, gain: float = 1.0) -> list[float]:
        scores = []
        for i in range(n):
            image, region = render_part(("washer", "tile")[i % 2], rng)
            if i % 20 == 19:
                image, _ = add_defect(image, region, "spot", rng)
            scores.append(gate.score(relight(image, gain) if gain != 1.0 else image).score)
        return scores

    return {"commissioning": run(100), "steady": run(200), "dim": run(WINDOW, gain=0.7),
            "holdout": reference_scores(gate.metadata)}


def test_a_steady_run_raises_no_drift(station_scores):
    mon = DriftMonitor(window=WINDOW, reference_size=100)
    events = [mon.observe("washer-tile", s) for s in station_scores["commissioning"] + station_scores["steady"]]
    assert not any(events)
    assert mon.state("washer-tile")["reference_ready"] and mon.state("washer-tile")["statistic"] < 0.3


def test_lighting_change_mid_run_raises_drift_within_n_parts(station_scores):
    mon = DriftMonitor(window=WINDOW, reference_size=100)
    for s in station_scores["commissioning"] + station_scores["steady"][:80]:
        assert mon.observe("washer-tile", s) is None
    alarms = [(i, a) for i, s in enumerate(station_scores["dim"]) if (a := mon.observe("washer-tile", s))]
    assert alarms, f"no drift alarm within {WINDOW} parts of the lighting change"
    i, alarm = alarms[0]
    assert alarm.state == "raised" and i < WINDOW
    assert alarm.statistic > alarm.critical and alarm.p_value < 1e-3
    assert alarm.window_median > alarm.reference_median  # dimmer parts look less like the bank


def test_trainer_records_the_holdout_scores_as_a_reference(station_scores):
    assert len(station_scores["holdout"]) >= 1 and all(np.isfinite(station_scores["holdout"]))
