"""The warm start's data: synthetic task splits whose target answers parse and whose boxes match the masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adfm.geometry import ModelGrid, iou
from adfm.protocol import parse_response
from tests.conftest import needs_torch

pytestmark = needs_torch

SMALL = {"train_per_stage": 4, "test_per_class": 2, "steps_per_stage": (1, 1, 1), "batch_size": 2}


def _mask_box(path: str) -> list[float]:
    ys, xs = np.nonzero(np.asarray(Image.open(path)))
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from adfm.trainer.warmstart import WarmStartSpec, build_splits

    spec = WarmStartSpec(**SMALL)
    trains, test = build_splits(spec, tmp_path_factory.mktemp("warm-data"))
    return spec, trains, test


def test_target_answers_parse_and_their_boxes_match_the_masks(splits):
    from adfm.trainer.data.records import iter_manifest
    from adfm.trainer.warmstart import target_answer, task_view

    spec, trains, _ = splits
    masks = {s.id: s.masks for s in iter_manifest(trains[0])}
    view = task_view(trains[0], spec)
    seen = {"normal": 0, "anomalous": 0}
    for i in range(len(view)):
        row = view[i]
        answer = target_answer(row)
        grid = ModelGrid(row["orig_width"], row["orig_height"], row["grid_width"], row["grid_height"])
        assert (grid.width, grid.height) == (112, 112)
        parsed = parse_response(answer, grid=grid, version=row["prompt_version"])
        assert parsed.format_ok, (answer, parsed.problems)
        anomalous = row["label"] == "anomalous"
        assert parsed.decision is anomalous
        seen[row["label"]] += 1
        if not anomalous:
            assert parsed.boxes == [] and parsed.proposed_boxes == [] and "even" in parsed.think
            continue
        # the boxes the model is taught, read back in original pixels, sit on the drawn defect
        truth = _mask_box(masks[row["id"]][0])
        assert len(parsed.boxes) >= 1 and parsed.proposed_boxes == parsed.boxes
        union = [min(b[0] for b in parsed.boxes), min(b[1] for b in parsed.boxes),
                 max(b[2] for b in parsed.boxes), max(b[3] for b in parsed.boxes)]
        assert float(iou([union], [truth])[0, 0]) > 0.85, (union, truth)
        assert parsed.labels == [row["defect_type"]] * len(parsed.boxes)
        assert row["defect_type"] in parsed.rethink
    assert seen == {"normal": 2, "anomalous": 2}


def test_sft_rows_are_prompt_completion_with_the_grid_image(splits):
    from adfm.trainer.warmstart import sft_rows, target_answer, task_view

    spec, trains, _ = splits
    view = task_view(trains[1], spec)
    rows = view.with_transform(sft_rows)
    plain = view[:2]
    batch = rows[:2]
    assert set(batch) == {"prompt", "completion", "images"}
    for i in range(2):
        assert [m["role"] for m in batch["prompt"][i]] == ["system", "user"]
        (message,) = batch["completion"][i]
        assert message["role"] == "assistant"
        row = {k: plain[k][i] for k in plain}
        assert message["content"][0]["text"] == target_answer(row)
        (image,) = batch["images"][i]  # no reference image: the task's prompts show the part alone
        assert image.size == (112, 112)


def test_curriculum_defects_shrink_and_the_test_split_is_held_out(splits):
    from adfm.trainer.data.records import iter_manifest

    _, trains, test = splits
    areas = []
    for split in trains:
        samples = [s for s in iter_manifest(split) if s.label == "anomalous"]
        areas.append(np.mean([(np.asarray(Image.open(s.masks[0])) > 0).sum() for s in samples]))
    assert areas[0] > areas[1] > areas[2], areas
    test_images = {Path(s.image).read_bytes() for s in iter_manifest(test)}
    train_images = {Path(s.image).read_bytes() for split in trains for s in iter_manifest(split)}
    assert not test_images & train_images


def test_spec_rejects_a_mismatched_curriculum():
    from adfm.trainer.warmstart import WarmStartSpec

    with pytest.raises(ValueError, match="steps_per_stage has 2 entries for 3 defect scales"):
        WarmStartSpec(steps_per_stage=(1, 1))


@pytest.mark.slow
def test_warmstart_command_trains_saves_and_reuses(tmp_path, capsys):
    """The command end to end at toy size (one SFT step per stage): a loadable checkpoint, then the cache."""
    from adfm.trainer import cli, warmstart

    out = tmp_path / "warm"
    argv = ["warmstart", "--out", str(out), "--steps-per-stage", "1", "1", "1", "--train-per-stage", "4",
            "--final-steps", "1"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "built in" in printed and printed.strip().splitlines()[-1] == str(out / "model")
    record = json.loads((out / warmstart.RECORD).read_text())
    scales = warmstart.WarmStartSpec().defect_scales
    assert [s["defect_scale"] for s in record["stages"]] == [*scales, scales[-1]]  # the curriculum, then the last phase
    assert [s.get("final", False) for s in record["stages"]] == [False, False, False, True]
    assert all(s["steps"] == 1 for s in record["stages"])
    assert (out / "curriculum" / "adfm_curriculum.json").is_file()
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert json.loads((out / "model" / "adfm_tiny.json").read_text())["warm_start"] is True
    assert cli.main(argv) == 0
    assert "reused" in capsys.readouterr().out
