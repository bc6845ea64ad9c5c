"""`adfm-eval` end to end with the tiny model: HF checkpoint and its GGUF export on one synthetic split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adfm.trainer.evaluation.report import PLOT_CATEGORIES, PLOT_CONFUSION, PLOT_MMAD, RESULTS_JSON, RESULTS_MD
from adfm.trainer.evaluation.responses import RESPONSES_NAME, read_responses
from adfm.trainer.evaluation.vlm_cli import main

pytestmark = [pytest.mark.slow]

PNG = b"\x89PNG\r\n\x1a\n"
COMMON = ["--max-new-tokens", "6", "--quiet"]


@pytest.fixture(scope="module")
def eval_split(tmp_path_factory: pytest.TempPathFactory, synthetic_mvtec: Path) -> Path:
    """Two MVTec-layout test images (normal, anomalous with pseudo-boxes) and two MMAD images with questions."""
    from adfm.synthetic import make_synthetic_dataset
    from adfm.trainer.data.records import write_manifest
    from adfm.trainer.data.splits import DatasetSource, SplitConfig, make_split

    root = tmp_path_factory.mktemp("eval-split")
    mmad = make_synthetic_dataset(root / "mmad", layout="mmad", categories=["bottle"], n_train=2, n_test_good=1,
                                  n_test_defect=1, defects=["scratch"], seed=3)
    split = make_split([DatasetSource(synthetic_mvtec), DatasetSource(mmad, "mmad")],
                       SplitConfig(protocol="cross-dataset", source="mvtec"), workers=1)
    chosen = []
    for dataset in ("mvtec", "mmad"):
        pool = [s for s in split.test if s.dataset == dataset] or [s for s in split.train if s.dataset == dataset]
        chosen += [next(s for s in pool if not s.anomalous), next(s for s in pool if s.anomalous)]
    assert any(s.boxes for s in chosen if s.dataset == "mvtec")
    return write_manifest(chosen, root / "split.jsonl")


def _check_outputs(out: Path, n_items: int) -> dict:
    for name in (RESPONSES_NAME, RESULTS_JSON, RESULTS_MD, PLOT_CATEGORIES, PLOT_CONFUSION, PLOT_MMAD):
        assert (out / name).is_file(), name
    for name in (PLOT_CATEGORIES, PLOT_CONFUSION, PLOT_MMAD):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000
    results = json.loads((out / RESULTS_JSON).read_text())
    assert results["answers"]["answered"] == results["answers"]["items"] == n_items
    assert set(results["inspection"]["datasets"]) == {"mvtec", "mmad"}
    assert results["mmad"]["subtasks"][0] == "Anomaly Detection"
    records, _ = read_responses(out / RESPONSES_NAME)
    assert len(records) == n_items
    for r in records:
        assert r.grid[2] % 28 == 0 and r.grid[3] % 28 == 0 and 1 <= r.completion_tokens <= 6
    md = (out / RESULTS_MD).read_text()
    assert "average over datasets" in md and "MMAD multiple-choice subtasks" in md
    return results


def _n_items(split: Path) -> int:
    from adfm.trainer.data.records import read_manifest
    from adfm.trainer.evaluation.mmad import mmad_questions

    return sum(1 + len(mmad_questions(s)[0]) for s in read_manifest(split))


@pytest.fixture(scope="module")
def hf_run(tiny_model_dir: Path, eval_split: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval-hf")
    rc = main(["--model", str(tiny_model_dir), "--split", str(eval_split), "--out", str(out),
               "--batch-size", "4", "--dtype", "float32", *COMMON])
    assert rc == 0
    return out


def test_transformers_backend_writes_every_output_and_resumes(hf_run: Path, tiny_model_dir: Path, eval_split):
    n = _n_items(eval_split)
    results = _check_outputs(hf_run, n)
    assert results["model"]["backend"] == "transformers"
    assert results["answers"]["with_reference"] == n  # the split carries references: the one-shot protocol
    assert results["this_invocation"]["asked"] == n and results["this_invocation"]["items_per_second"] > 0
    rc = main(["--model", str(tiny_model_dir), "--split", str(eval_split), "--out", str(hf_run),
               "--batch-size", "4", "--dtype", "float32", *COMMON])
    assert rc == 0
    again = json.loads((hf_run / RESULTS_JSON).read_text())
    assert again["this_invocation"]["asked"] == 0 and again["this_invocation"]["already_answered"] == n
    assert again["inspection"] == results["inspection"]


def test_gguf_backend_sees_the_same_prompts_as_its_hf_original(tiny_gguf_dir: Path, hf_run: Path, eval_split, tmp_path):
    out = tmp_path / "eval-gguf"
    rc = main(["--model", str(tiny_gguf_dir), "--split", str(eval_split), "--out", str(out), *COMMON])
    assert rc == 0
    results = _check_outputs(out, _n_items(eval_split))
    assert results["model"]["backend"] == "gguf" and results["model"]["prompt_version"] == "multi-stage-v1"
    gguf = {r.key: r for r in read_responses(out / RESPONSES_NAME)[0]}
    hf = {r.key: r for r in read_responses(hf_run / RESPONSES_NAME)[0]}
    assert gguf.keys() == hf.keys()
    for key, r in gguf.items():  # same text, same grid pixels: the same prompt length, image tokens included
        assert (r.prompt_tokens, r.grid, r.reference) == (hf[key].prompt_tokens, hf[key].grid, hf[key].reference)


def test_cli_names_bad_inputs(tiny_model_dir: Path, eval_split: Path, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--split", str(eval_split), "--out", str(tmp_path / "o")]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert main(["--model", str(tiny_model_dir), "--split", str(tmp_path / "x.jsonl"), "--out", str(tmp_path)]) == 2
    assert "split manifest not found" in capsys.readouterr().err
    assert main(["--model", str(tiny_model_dir), "--split", str(eval_split), "--out", str(tmp_path),
                 "--top-p", "0"]) == 2
    assert "--top-p" in capsys.readouterr().err


def test_an_adapters_run_record_sets_prompt_version_and_pixel_budget(tiny_model_dir: Path, tmp_path):
    from adfm.export.tiny import make_tiny_adapter
    from adfm.trainer.evaluation.backends import TransformersBackend

    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "lora")
    (adapter / "adfm_run.json").write_text(json.dumps({
        "base_model": str(tiny_model_dir), "prompt_version": "one-stage-v1",
        "min_pixels": 112 * 112, "max_pixels": 168 * 168,
    }))
    backend = TransformersBackend(adapter, dtype="float32")  # the adapter alone: its record names the base
    info = backend.info
    assert (info.path, info.adapter) == (tiny_model_dir, adapter)
    assert (info.prompt_version, info.min_pixels, info.max_pixels) == ("one-stage-v1", 112 * 112, 168 * 168)
    assert info.sources["prompt_version"].endswith("adfm_run.json")
    assert "+lora@" in info.model_id
    grid = backend.grid_for(256, 256)
    assert (grid.width, grid.height) == (168, 168)
    size = backend.loaded.processor.image_processor.size  # the processor agrees with the grid
    assert (size["shortest_edge"], size["longest_edge"]) == (112 * 112, 168 * 168)
    backend.close()
