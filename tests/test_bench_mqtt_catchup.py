"""bench/mqtt_catchup.py end to end at a small size: every backlog is acknowledged, each result sent once,
the JSON is complete. No timing is asserted: the figures belong to the bench's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.mqtt_support import missing_reason

BENCH = Path(__file__).resolve().parents[1] / "bench"
N = 300

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))


def test_every_backlog_is_acknowledged_and_the_json_has_its_fields(tmp_path: Path):
    from mqtt_catchup import run_bench

    out = tmp_path / "mqtt_catchup.json"
    report = run_bench(N, 1, [10, 100], out, "pytest")
    written = json.loads(out.read_text())
    assert written["summary"] == report["summary"]
    assert set(written["rounds_raw"]) == {"inflight-10", "inflight-100"} == set(written["summary"])
    for name, rows in written["rounds_raw"].items():
        assert len(rows) == 1 and rows[0]["sent"] == N, name  # from seq 1 to N, each once
        assert rows[0]["results_per_s"] > 0 and rows[0]["cpu_ms_per_result"] > 0, name
    assert written["wake_us_mean"] > 0 and written["n"] == N
    assert len(written["machine"]["loadavg_start_end"]) == 2
