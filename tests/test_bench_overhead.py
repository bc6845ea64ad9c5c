"""bench/appliance_overhead.py: the interleaving, the paired statistics, and a short run end to end
on the tiny export through the real station service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import appliance_overhead

    return appliance_overhead


def test_blocks_alternate_which_side_goes_first(bench) -> None:
    plan = bench.schedule(7, 3)
    assert plan == [("direct", [0, 1, 2]), ("appliance", [0, 1, 2]),
                    ("appliance", [3, 4, 5]), ("direct", [3, 4, 5]),
                    ("direct", [6]), ("appliance", [6])]
    three = bench.schedule(3, 1, ("direct", "appliance", "appliance_raw"))
    assert [side for side, _ in three] == ["direct", "appliance", "appliance_raw", "appliance", "appliance_raw",
                                           "direct", "appliance_raw", "direct", "appliance"]


def test_paired_bootstrap_reports_the_ratio_and_overhead(bench) -> None:
    rng = np.random.default_rng(1)
    direct = list(100 + rng.normal(0, 5, 40))
    appliance = [d * 1.10 for d in direct]
    out = bench.paired_bootstrap(direct, appliance, rounds=500)
    assert out["ratio_of_medians"] == pytest.approx(1.10, abs=1e-3)
    lo, hi = out["ratio_ci95"]
    assert lo <= 1.10 <= hi and hi - lo < 0.01  # exact pairs: a narrow interval
    assert out["overhead_pct_of_part"] == pytest.approx(100 * (1 - 1 / 1.10), abs=0.05)
    assert out["overhead_ms"] > 0


@pytest.mark.slow
@pytest.mark.needs_llama
@pytest.mark.needs_torch
def test_a_short_run_measures_both_sides_on_identical_work(bench, tiny_gguf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    rc = bench.main(["--model", str(tiny_gguf_dir), "--parts", "2", "--block", "1", "--warmup", "1",
                     "--max-tokens", "12", "--side", "200", "--reference", "--compare-raw",
                     "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0
    assert report["identical_work"]["answers_identical_on_every_side"] == "2/2"
    assert report["identical_work"]["completion_tokens"] == [12]
    assert report["settings"]["reference"] is True
    assert report["direct_ms"]["n"] == report["appliance_ms"]["n"] == 2
    assert len(report["appliance_vs_direct"]["ratio_ci95"]) == 2
    assert report["cpu"]["appliance_ms"]["median"] > 0
    for side in ("appliance", "appliance_raw"):
        assert {"journal", "model", "resize", "complete", "publish", "ipc"} <= set(report["appliance_stages_ms"][side])
    assert len(report["appliance_vs_appliance_raw"]["ratio_ci95"]) == 2
    assert len(report["machine"]["load_avg_start"]) == 3 and report["command"].startswith("python bench/")
    assert [p["order"] for p in report["parts"]] == [["direct", "appliance", "appliance_raw"],
                                                     ["appliance", "appliance_raw", "direct"]]
    # the camera's PNG was kept on one side, the journal encoded the pixels on the other
    for p in report["parts"]:
        assert p["appliance_image"]["camera_file_kept"] and not p["appliance_raw_image"]["camera_file_kept"]
        assert p["appliance_image"]["suffix"] == p["appliance_raw_image"]["suffix"] == ".png"
