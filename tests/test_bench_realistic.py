"""The realistic-size benches: cached builds are found only when built alike, the per-part budget
bench runs end to end on the tiny export, and README's performance section is what bench/results says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))


def test_readme_performance_section_is_written_from_the_results() -> None:
    import report

    readme = (ROOT / "README.md").read_text()
    assert report.replace_section(readme, report.render()) == readme, "run: python bench/report.py --write"


def test_report_rejects_a_readme_without_its_markers() -> None:
    import report

    with pytest.raises(ValueError, match="markers"):
        report.replace_section("# no section here\n", "## Performance\n")


def test_an_export_counts_as_cached_only_when_built_with_todays_shapes(tmp_path: Path) -> None:
    import realistic_models as rm

    out = rm.export_dir("qwen2.5-vl-3b", tmp_path)
    out.mkdir(parents=True)
    assert rm.cached_export("qwen2.5-vl-3b", tmp_path) is None
    (out / rm.MARKER).write_text(json.dumps(rm._params("qwen2.5-vl-3b", rm.QUANT)))
    assert rm.cached_export("qwen2.5-vl-3b", tmp_path) == out
    changed = rm._params("qwen2.5-vl-3b", rm.QUANT) | {"max_pixels": 1}
    (out / rm.MARKER).write_text(json.dumps(changed))
    assert rm.cached_export("qwen2.5-vl-3b", tmp_path) is None
    (out / rm.MARKER).write_text("{not json")
    assert rm.cached_export("qwen2.5-vl-3b", tmp_path) is None


@needs_torch
def test_a_random_checkpoint_is_reused_when_its_marker_matches(tmp_path: Path, tiny_model_dir: Path) -> None:
    from model_configs import MARKER, build_random_checkpoint, get_spec

    spec = get_spec("tiny")
    path = build_random_checkpoint(spec, tmp_path / "m", min_pixels=3136, max_pixels=50176,
                                   processor_from=tiny_model_dir)
    weights = next(path.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert build_random_checkpoint(spec, path, min_pixels=3136, max_pixels=50176,
                                   processor_from=tiny_model_dir) == path
    assert weights.stat().st_mtime_ns == stamp  # not written again (its spec holds tuples; JSON holds lists)
    assert json.loads((path / MARKER).read_text())["spec"]["vision"]["fullatt_block_indexes"] == [1]


@pytest.mark.slow
@pytest.mark.needs_llama
def test_part_budget_runs_on_the_tiny_export(tiny_gguf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "budget.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "part_budget.py"), "--size", "tiny", "--model", str(tiny_gguf_dir),
         "--budgets", "16", "36", "--rounds", "2", "--max-tokens", "6", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [b["image_tokens_each"] for b in data["budgets"]] == [16, 36]
    for b in data["budgets"]:
        ways = b["ways"]
        assert {w: ways[w]["n"] for w in ways} == {"no_reference": 2, "reference_fresh": 2, "reference_reused": 2}
        fresh, reused = ways["reference_fresh"], ways["reference_reused"]
        # the reused prefix is not evaluated again: fewer positions through the model, one image encoded
        assert reused["prompt_tokens"] == fresh["prompt_tokens"]
        assert reused["prompt_tokens_evaluated"] < fresh["prompt_tokens_evaluated"] - b["image_tokens_each"]
        assert fresh["image_tokens"] == [b["image_tokens_each"]] * 2
        assert all(r["completion_tokens"] <= 6 for r in b["runs"]["reference_reused"])
        assert len(b["reused_over_fresh"]["per_round"]) == 2
    assert data["command"].startswith("python bench/part_budget.py") and data["machine"]["loadavg_start_end"]
