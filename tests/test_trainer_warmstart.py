"""The warm start's data and recipe: short targets that parse, boxes snapped near the masks, fresh parts
rendered as the station sees them, perception labels on the model grid, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adfm.geometry import ModelGrid, iou
from adfm.protocol import parse_response
from tests.conftest import needs_torch

pytestmark = needs_torch

SMALL = {"test_per_class": 2, "perception_steps": 1, "steps_per_stage": (1, 1, 1), "final_steps": 1,
         "batch_size": 2}


def _mask_box(path: str) -> list[float]:
    ys, xs = np.nonzero(np.asarray(Image.open(path)))
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    from adfm.trainer.warmstart import WarmStartSpec, test_split

    spec = WarmStartSpec(**SMALL)
    return spec, test_split(spec, tmp_path_factory.mktemp("warm-data"))


def test_target_answers_are_short_parse_and_their_snapped_boxes_sit_on_the_masks(held_out):
    from adfm.trainer.data.records import iter_manifest
    from adfm.trainer.warmstart import BOX_QUANTUM, target_answer, task_view

    spec, split = held_out
    masks = {s.id: s.masks for s in iter_manifest(split)}
    view = task_view(split, spec)
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
            assert answer == "<think>normal []</think><rethink>normal []</rethink><answer>no</answer>"
            continue
        assert parsed.think.startswith(row["defect_type"]) and len(answer) <= 200, answer
        grid_boxes = json.loads(answer[answer.index("["):answer.index("]</think>") + 1])
        assert all(v % BOX_QUANTUM == 0 for b in grid_boxes for v in b["bbox_2d"])  # snapped to half a patch
        truth = _mask_box(masks[row["id"]][0])
        (box,) = parsed.boxes
        assert float(iou([box], [truth])[0, 0]) > 0.5, (box, truth)
        assert parsed.labels == [row["defect_type"]]
    assert seen == {"normal": 2, "anomalous": 2}


def test_snap_box_rounds_to_the_quantum_inside_the_grid_and_never_empties():
    from adfm.trainer.warmstart import snap_box

    assert snap_box([10.2, 3.4, 30.0, 17.0], 7, 112, 112) == [7, 0, 28, 14]
    assert snap_box([50.0, 50.0, 51.0, 52.0], 7, 112, 112) == [49, 49, 56, 56]  # one quantum at least
    assert snap_box([108.0, 109.0, 112.0, 112.0], 7, 112, 112) == [105, 105, 112, 112]
    # a grid that is no multiple of the quantum: every corner stays on the quantum
    assert snap_box([109.0, 111.0, 112.0, 112.0], 5, 112, 112) == [105, 105, 110, 110]
    assert snap_box([50.0, 108.0, 61.0, 112.0], 5, 112, 112) == [50, 105, 60, 110]


def test_fresh_parts_are_on_the_grid_with_perception_labels_where_the_defect_is():
    from adfm.trainer.warmstart import WarmStartSpec, render_part

    spec = WarmStartSpec(**SMALL)
    rng = np.random.default_rng(3)
    normal = render_part(spec, rng, None, 1.4)
    assert normal.image.size == (112, 112) and not normal.defective and not normal.block_defect.any()
    assert normal.truth_box is None and "<answer>no</answer>" in normal.answer
    part = render_part(spec, rng, "missing", 1.4)
    assert part.defective and part.block_defect.shape == (16, 16) and part.block_defect.any()
    x1, y1, x2, y2 = (v * 112 / 256 for v in part.truth_box)
    rows, cols = np.nonzero(part.block_defect)
    # the flagged 7-px blocks are the ones inside the defect's box (on the grid), up to the resize's blur
    assert abs(rows.min() * 7 - y1) < 7 and abs((rows.max() + 1) * 7 - y2) < 7
    assert abs(cols.min() * 7 - x1) < 7 and abs((cols.max() + 1) * 7 - x2) < 7
    assert part.block_defect.sum() < 64


def test_held_out_split_is_drawn_apart_from_each_scale(held_out, tmp_path):
    from adfm.trainer.data.records import iter_manifest
    from adfm.trainer.warmstart import test_split

    spec, split = held_out
    small = test_split(spec, tmp_path, 1.0)
    assert small.parent.parent.name == "test-x1"
    area = {p: np.mean([(np.asarray(Image.open(s.masks[0])) > 0).sum() for s in iter_manifest(p)
                        if s.label == "anomalous"]) for p in (split, small)}
    assert area[split] > area[small]


def test_spec_rejects_a_mismatched_curriculum():
    from adfm.trainer.warmstart import WarmStartSpec

    with pytest.raises(ValueError, match="steps_per_stage has 2 entries for 3 defect scales"):
        WarmStartSpec(steps_per_stage=(1, 1))


def test_scores_go_through_the_parser_and_geometry():
    from adfm.trainer.warmstart_eval import score_answers

    base = {"orig_width": 256, "orig_height": 256, "grid_width": 112, "grid_height": 112,
            "prompt_version": "multi-stage-v1"}
    rows = [{**base, "label": "anomalous", "gt_boxes": [[64.0, 64.0, 128.0, 128.0]]},
            {**base, "label": "anomalous", "gt_boxes": [[64.0, 64.0, 128.0, 128.0]]},
            {**base, "label": "normal", "gt_boxes": []}]
    box = '[{"bbox_2d": [28, 28, 56, 56], "label": "spot"}]'  # grid pixels: [64, 64, 128, 128] on the image
    answers = [f"<think>spot {box}</think><rethink>spot {box}</rethink><answer>yes</answer>",
               "<think>normal []</think><rethink>normal []</rethink><answer>no</answer>",
               "<think>normal []</think><answer>no</answer>"]  # right, but out of format
    s = score_answers(rows, answers)
    assert s["accuracy"] == pytest.approx(2 / 3) and s["format_rate"] == pytest.approx(2 / 3)
    assert (s["true_positive"], s["false_negative"], s["true_negative"]) == (1, 1, 1)
    assert s["iou50_defective"] == 0.5 and s["mean_best_iou_defective"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_warmstart_command_trains_saves_and_reuses(tmp_path, capsys):
    """The command end to end at toy size (one step per stage): a loadable checkpoint, scores, then the cache."""
    from adfm.trainer import cli, warmstart

    out = tmp_path / "warm"
    argv = ["warmstart", "--out", str(out), "--perception-steps", "2", "--steps-per-stage", "1", "1", "1",
            "--final-steps", "1", "--batch-size", "2", "--test-per-class", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "built in" in printed and printed.strip().splitlines()[-1] == str(out / "model")
    assert "held-out x1.4 (4 parts, greedy)" in printed
    record = json.loads((out / warmstart.RECORD).read_text())
    assert [s["stage"] for s in record["stages"]] == [
        "perception", "sft stage 0 (defects ×2.5)", "sft stage 1 (defects ×1.8)", "sft stage 2 (defects ×1.4)",
        "final"]
    assert record["stages"][0]["steps"] == 2 and all(s["steps"] == 1 for s in record["stages"][1:])
    assert record["held_out"]["x1.4"]["samples"] == 4 and record["cpu_seconds"] > 0
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    assert json.loads((out / "model" / "adfm_tiny.json").read_text())["warm_start"] is True
    assert cli.main(argv) == 0
    assert "reused" in capsys.readouterr().out


def test_sft_batches_are_mostly_defective_and_never_one_class():
    from adfm.trainer.warmstart import WarmStartSpec, batch_kinds

    kinds = batch_kinds(16, WarmStartSpec().defective_share, ("spot", "missing"))
    assert kinds.count(None) == 4 and kinds.count("spot") == kinds.count("missing") == 6
    assert batch_kinds(2, 0.99, ("spot",)) == [None, "spot"] and batch_kinds(4, 0.01, ("spot",)).count(None) == 3
    with pytest.raises(ValueError, match="defective_share"):
        WarmStartSpec(defective_share=1.0)
