"""`adfm-train variance`: zero-variance shares under r_cls, r_cls + r_count, r_cls + r_loc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adfm.protocol import format_response
from adfm.trainer import cli
from adfm.trainer.reward_variance import SampledResponses, analyse, read_responses, write_responses

SIZE = {"orig_width": 200, "orig_height": 200, "grid_width": 200, "grid_height": 200}
GT = [[50.0, 50.0, 100.0, 100.0]]


def _records() -> list[SampledResponses]:
    yes_exact = format_response(True, [[50, 50, 100, 100]])
    yes_shifted = format_response(True, [[60, 60, 110, 110]])
    yes_two = format_response(True, [[50, 50, 100, 100], [150, 150, 180, 180]])
    no = format_response(False, [])
    no_one_box = format_response(False, [[10, 10, 30, 30]])
    return [
        # all right, boxes differ: binary reward has zero variance, r_count separates 1 vs 2 boxes, r_loc all
        SampledResponses(id="a", label="anomalous", gt_boxes=GT, responses=[yes_exact, yes_shifted, yes_two], **SIZE),
        # all right, same count, different places: only r_loc separates them
        SampledResponses(id="b", label="anomalous", gt_boxes=GT, responses=[yes_exact, yes_shifted], **SIZE),
        # identical responses: zero variance under every scheme
        SampledResponses(id="c", label="anomalous", gt_boxes=GT, responses=[yes_exact, yes_exact], **SIZE),
        # normal, all say no, one proposes a region: r_focus separates them (count and loc alike)
        SampledResponses(id="d", label="normal", gt_boxes=[], responses=[no, no_one_box], **SIZE),
        # normal, right and wrong answers: every scheme has variance
        SampledResponses(id="e", label="normal", gt_boxes=[], responses=[no, yes_exact], **SIZE),
    ]


def test_analysis_counts_zero_variance_groups():
    result = analyse(_records())
    s = result["schemes"]
    assert result["samples"] == 5
    assert s["r_cls"]["zero_variance_samples"] == 4  # a, b, c, d
    assert s["r_cls+r_count"]["zero_variance_samples"] == 2  # b, c
    assert s["r_cls+r_loc"]["zero_variance_samples"] == 1  # c
    assert s["r_cls"]["zero_variance_share"] == pytest.approx(0.8)
    assert s["r_cls+r_loc"]["zero_variance_by_label"] == {"normal": 0, "anomalous": 1}
    assert result["labels"] == {"anomalous": 3, "normal": 2}
    assert result["responses_per_sample"] == [2, 3]


def test_rescore_stored_responses_writes_json_and_png(tmp_path: Path):
    stored = write_responses(_records(), tmp_path / "in" / "sampled_responses.jsonl")
    assert [r.id for r in read_responses(stored)] == ["a", "b", "c", "d", "e"]
    out = tmp_path / "out"
    assert cli.main(["variance", "--responses", str(stored), "--out", str(out)]) == 0
    report = json.loads((out / "variance.json").read_text())
    assert report["schemes"]["r_cls+r_loc"]["zero_variance_samples"] == 1
    assert report["source"] == {"responses": str(stored)}
    png = (out / "variance.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000


def test_bad_inputs_are_clear_errors(tmp_path: Path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "label": "normal"}\n')
    assert cli.main(["variance", "--responses", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert cli.main(["variance", "--responses", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["variance", "--out", str(tmp_path / "o")]) == 2
    assert "--model and --split" in capsys.readouterr().err


@pytest.mark.slow
def test_variance_samples_a_model(tiny_model_dir: Path, tmp_path: Path):
    from adfm.trainer.config import SyntheticSection
    from adfm.trainer.synthetic_split import build_synthetic_split

    split = build_synthetic_split(
        SyntheticSection(root=tmp_path / "syn", normal_per_category=1, anomalous_per_category=1,
                         categories=["washer"], image_size=128)
    )
    out = tmp_path / "var"
    code = cli.main(["variance", "--model", str(tiny_model_dir), "--split", str(split), "--num-samples", "2",
                     "--num-generations", "2", "--max-new-tokens", "6", "--dtype", "float32",
                     "--min-pixels", str(112 * 112), "--max-pixels", str(112 * 112), "--no-reference",
                     "--out", str(out)])
    assert code == 0
    records = read_responses(out / "sampled_responses.jsonl")
    assert len(records) == 2 and all(len(r.responses) == 2 for r in records)
    assert {r.label for r in records} == {"normal", "anomalous"}
    report = json.loads((out / "variance.json").read_text())
    assert report["samples"] == 2 and set(report["schemes"]) == {"r_cls", "r_cls+r_count", "r_cls+r_loc"}
    # the stored responses re-score to the same report without the model
    again = tmp_path / "again"
    assert cli.main(["variance", "--responses", str(out / "sampled_responses.jsonl"), "--out", str(again)]) == 0
    assert json.loads((again / "variance.json").read_text())["schemes"] == report["schemes"]
