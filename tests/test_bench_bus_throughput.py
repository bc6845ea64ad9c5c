"""bench/bus_throughput.py end to end at a small size: every result reaches every subscriber, the JSON is complete.

No timing is asserted: the figures belong to the bench's JSON, not to a unit test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
N = 500


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))


def test_every_result_reaches_every_subscriber_and_the_json_has_its_fields(tmp_path: Path):
    from bus_throughput import run_bench

    out = tmp_path / "bus_throughput.json"
    report = run_bench(n=N, rounds=1, subscribers=(1, 3), out=out, command="pytest")
    written = json.loads(out.read_text())
    assert written["summary"] == report["summary"]

    names = {"live-plain-1sub", "live-curve-1sub", "live-plain-3sub", "live-curve-3sub",
             "replay-plain-1sub", "replay-curve-1sub"}
    assert set(written["runs"]) == names == set(written["summary"])
    for name, runs in written["runs"].items():
        assert len(runs) == 1, name
        run = runs[0]
        expected_subs = 3 if name.endswith("3sub") else 1
        assert len(run["subscribers"]) == expected_subs, name
        for sub in run["subscribers"]:  # seq 1..N, each once, in order, live or replayed
            assert sub["received"] == N and sub["last_seq"] == N and sub["out_of_order"] == 0, (name, sub)
            assert sub["live"] + sub["replayed"] == N, (name, sub)
        assert run["received_min"] == N and run["all_received"], name
        assert run["results_per_s"] > 0 and run["wall_s"] > 0, name
        if name.startswith("live"):
            assert run["published"] == N and run["bus_thread_published"] >= N, name
        else:
            assert run["subscribers"][0]["replayed"] == N, name  # a catching-up subscriber replays everything
        assert written["summary"][name]["all_received_every_round"], name
        assert written["summary"][name]["results_per_s"]["rounds"] == 1, name

    assert written["command"] == "pytest" and written["date"]
    machine = written["machine"]
    assert machine["platform"] and machine["cpus"] >= 1
    assert len(written["load_avg_start"]) == 3 and len(written["load_avg_end"]) == 3
    # bench/report.py reads the load averages from here
    assert machine["loadavg_start_end"] == [written["load_avg_start"], written["load_avg_end"]]
    assert written["params"]["results_per_round"] == N and written["params"]["result_json_bytes"] > 1000
    assert set(written["ratios_pct"]) == {
        "live-curve-1sub_over_live-plain-1sub", "live-curve-3sub_over_live-plain-3sub",
        "replay-curve-1sub_over_replay-plain-1sub"}


def test_io_thread_counts_are_compared_side_by_side():
    from bus_throughput import run_bench

    report = run_bench(n=200, rounds=1, subscribers=(2,), replay=False, io_threads=(1, 2))
    assert set(report["runs"]) == {"live-plain-2sub-io1", "live-curve-2sub-io1", "live-plain-2sub-io2",
                                   "live-curve-2sub-io2"}
    assert all(runs[0]["all_received"] for runs in report["runs"].values())
    assert report["params"]["station_zmq_io_threads"] == [1, 2]
    assert {"live-curve-2sub-io2_over_io1", "live-plain-2sub-io2_over_io1"} <= set(report["ratios_pct"])
