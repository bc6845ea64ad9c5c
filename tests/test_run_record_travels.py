"""A training run's record travels with the model: adfm-train → adfm-export → manifest → line and adfm-eval.

Trains the tiny model one GRPO step with `cls-one-stage`, a non-default pixel budget, no reference
image and a short answer length; exports it with no flags; then checks that the manifest, the
appliance's grid and context, and adfm-eval all use the training values.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tests.conftest import HAS_LLAMA

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAS_LLAMA, reason="needs llama-cpp-python")]

MIN_PIXELS, MAX_PIXELS = 8 * 784, 36 * 784  # the tiny processor's own budget is 12544..50176
ANSWER_TOKENS = 12


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from adfm.trainer import cli

    root = tmp_path_factory.mktemp("run-record")
    code = cli.main([
        "--model", str(tiny_model_dir), "--output-dir", str(root / "run"), "--preset", "cls-one-stage",
        "--max-steps", "1",
        "--set", f"data.synthetic.root={root / 'syn'}",
        "--set", "data.synthetic.categories=[washer]",
        "--set", "data.synthetic.normal_per_category=1",
        "--set", "data.synthetic.anomalous_per_category=1",
        "--set", "data.synthetic.image_size=128",
        "--set", f"data.min_pixels={MIN_PIXELS}",
        "--set", f"data.max_pixels={MAX_PIXELS}",
        "--set", "data.use_reference=false",
        "--set", f"grpo.max_completion_length={ANSWER_TOKENS}",
        "--set", "grpo.num_generations=2",
        "--set", "grpo.per_device_train_batch_size=2",
        "--set", "rewards.alpha=0.5",
    ])
    assert code == 0
    return root


@pytest.fixture(scope="module")
def exported(trained_run: Path, tiny_model_dir: Path) -> Path:
    from adfm.export import cli

    out = trained_run / "export"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        rc = cli.main(["--base", str(tiny_model_dir), "--adapter", str(trained_run / "run" / "final"),
                       "--out", str(out)])
    assert rc == 0, log.getvalue()
    assert "warning" not in log.getvalue()
    return out


def test_the_adapter_records_the_run(trained_run: Path):
    record = json.loads((trained_run / "run" / "final" / "adfm_run.json").read_text())
    assert record["preset"] == "cls-one-stage" and record["prompt_version"] == "one-stage-v1"
    assert (record["min_pixels"], record["max_pixels"]) == (MIN_PIXELS, MAX_PIXELS)
    assert record["use_reference"] is False and record["max_completion_tokens"] == ANSWER_TOKENS
    assert record["rewards"] == {"terms": ["classification", "format"], "alpha": 0.5, "random_sigma": 0.1,
                                 "random_seed": 0}


def test_the_manifest_carries_the_training_values(exported: Path):
    from adfm.manifest import load_model_dir

    manifest = load_model_dir(exported)
    assert manifest.prompt_version == "one-stage-v1"
    assert (manifest.min_pixels, manifest.max_pixels) == (MIN_PIXELS, MAX_PIXELS)
    assert manifest.use_reference is False and manifest.max_tokens == ANSWER_TOKENS
    assert manifest.prompt_tokens is not None and manifest.prompt_tokens > 50
    assert manifest.training["preset"] == "cls-one-stage"
    assert manifest.training["sources"]["max_pixels"].endswith("adfm_run.json")


def test_the_appliance_uses_the_training_grid_and_sizes_its_context(exported: Path, tmp_path: Path):
    from adfm.appliance.config.station import parse_config
    from adfm.geometry import ModelGrid
    from adfm.manifest import read_manifest
    from adfm.runtime.vlm import GgufVlm

    with GgufVlm(exported) as vlm:
        grid = vlm.grid_for(1920, 1080)
    expected = ModelGrid.for_image(1920, 1080, MIN_PIXELS, MAX_PIXELS)
    assert (grid.width, grid.height) == (expected.width, expected.height)
    assert grid.width * grid.height <= MAX_PIXELS

    from adfm.appliance.config.station import model_limits

    manifest = read_manifest(exported)
    station = {"station": "s1", "state_dir": str(tmp_path / "state"), "model": {"dir": str(exported)},
               "cameras": [{"id": "cam1", "url": f"folder:{tmp_path}"}]}
    limits = model_limits(parse_config(station), manifest)
    assert limits.max_tokens == ANSWER_TOKENS and not limits.problems
    assert limits.n_ctx >= 36 + manifest.prompt_tokens + ANSWER_TOKENS
    # a context too small for the image, the prompt and the answer is refused, naming what it needs
    small = {**station, "model": {"dir": str(exported), "n_ctx": 512, "max_tokens": 1024}}
    problems = model_limits(parse_config(small), manifest, "station.yaml").problems
    assert len(problems) == 1 and problems[0].startswith("station.yaml: model.n_ctx: 512 tokens cannot hold")
    assert "1024 answer tokens" in problems[0]
    # a reference image for a model trained without one is refused
    reference = tmp_path / "ref.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(reference)
    with_ref = {**station, "products": [{"name": "washer", "reference": str(reference)}]}
    problems = model_limits(parse_config(with_ref), manifest).problems
    assert any("trained without a reference image" in p for p in problems)


def test_adfm_eval_uses_the_training_values(exported: Path, trained_run: Path, tiny_model_dir: Path):
    from adfm.trainer.config import SyntheticSection
    from adfm.trainer.evaluation.backends import TransformersBackend
    from adfm.trainer.evaluation.vlm_eval import EvalConfig, evaluate
    from adfm.trainer.synthetic_split import build_synthetic_split

    split = build_synthetic_split(
        SyntheticSection(root=trained_run / "syn-test", categories=["washer"], normal_per_category=1,
                         anomalous_per_category=1, image_size=128), "test")
    results = evaluate(EvalConfig(model=exported, split=split, out=trained_run / "eval", progress=False,
                                  plots=False))
    run = results["run"]
    assert run["prompt_version"] == "one-stage-v1"
    assert (run["min_pixels"], run["max_pixels"]) == (MIN_PIXELS, MAX_PIXELS)
    assert run["max_new_tokens"] == ANSWER_TOKENS
    assert run["reference"] == "off"  # the split has references; the model was trained without them
    assert results["answers"]["with_reference"] == 0 and results["answers"]["answered"] == 2

    backend = TransformersBackend(trained_run / "run" / "final", dtype="float32")  # the adapter itself
    info = backend.info
    backend.close()
    assert (info.prompt_version, info.min_pixels, info.max_pixels) == ("one-stage-v1", MIN_PIXELS, MAX_PIXELS)
    assert (info.max_tokens, info.use_reference) == (ANSWER_TOKENS, False)


def test_a_flag_overrides_the_record_only_with_a_printed_warning(trained_run: Path, tiny_model_dir: Path):
    from adfm.export import cli
    from adfm.manifest import load_model_dir

    out = trained_run / "export-override"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        rc = cli.main(["--base", str(tiny_model_dir), "--adapter", str(trained_run / "run" / "final"),
                       "--out", str(out), "--max-pixels", str(50176), "--no-verify"])
    assert rc == 0, log.getvalue()
    assert f"warning: --max-pixels 50176 overrides the training record's max_pixels {MAX_PIXELS}" in log.getvalue()
    manifest = load_model_dir(out)
    assert manifest.max_pixels == 50176 and manifest.training["sources"]["max_pixels"] == "command line"
    assert manifest.prompt_version == "one-stage-v1"  # the rest still follows the record
