"""The training view: split manifest → lazy `datasets.Dataset` rows that GRPO and the rewards read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adfm.geometry import ModelGrid
from adfm.protocol import format_response
from adfm.trainer import rewards
from adfm.trainer.data import training_view as tv
from adfm.trainer.data.boxes import pseudo_boxes
from adfm.trainer.data.records import Sample, write_manifest
from adfm.trainer.data.training_view import REWARD_COLUMNS, TrainingViewError, ViewOptions, training_view

TINY = ViewOptions(min_pixels=112 * 112, max_pixels=224 * 224)


@pytest.fixture(scope="module")
def split(synthetic_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training manifest over the synthetic MVTec layout: test images, pseudo-boxes from their masks."""
    samples = []
    for img in sorted(synthetic_mvtec.glob("*/test/*/*.png")):
        cat, _, defect, _ = img.parts[-4:]
        anomalous = defect != "good"
        mask = synthetic_mvtec / cat / "ground_truth" / defect / f"{img.stem}_mask.png"
        samples.append(
            Sample(
                id=f"synthetic/{cat}/test/{defect}/{img.stem}",
                image=str(img),
                dataset="mvtec",
                category=cat,
                split="train",
                label="anomalous" if anomalous else "normal",
                defect_type=defect,
                masks=[str(mask)] if anomalous else [],
                boxes=pseudo_boxes(np.asarray(Image.open(mask))) if anomalous else None,
                reference=str(synthetic_mvtec / cat / "train" / "good" / "000.png"),
            )
        )
    return write_manifest(samples, tmp_path_factory.mktemp("view") / "train.jsonl")


def test_rows_carry_prompt_images_and_reward_columns(split: Path):
    ds = training_view(split, TINY)
    assert len(ds) == 16
    row = next(ds[i] for i in range(len(ds)) if ds[i]["label"] == "anomalous")
    for col in (*REWARD_COLUMNS, "prompt", "images", "image", "reference_image", "id"):
        assert col in row
    # 256×256 originals on the tiny grid: 224×224
    assert (row["orig_width"], row["orig_height"]) == (256, 256)
    assert (row["grid_width"], row["grid_height"]) == (224, 224)
    ref, query = row["images"]
    assert query.size == (224, 224) and ref.size == (224, 224)
    assert row["image"] is query and row["reference_image"] is ref
    # the prompt has two image slots (reference, query) and names the product
    user = row["prompt"][1]["content"]
    assert [b["type"] for b in user] == ["image", "image", "text"]
    assert row["category"] in user[-1]["text"]
    assert row["prompt_version"] == "multi-stage-v1"
    assert len(row["gt_boxes"]) >= 1


def test_query_pixels_are_the_grid_resize_of_the_file(split: Path):
    ds = training_view(split, TINY)
    row = ds[3]
    original = Image.open(row["image_path"]).convert("RGB")
    expected = ModelGrid.for_image(*original.size, min_pixels=112 * 112, max_pixels=224 * 224).resize(original)
    assert np.array_equal(np.asarray(row["image"]), np.asarray(expected))


def test_view_is_lazy(split: Path):
    tv.load_on_grid.cache_clear()
    ds = training_view(split, TINY)
    assert tv.load_on_grid.cache_info().currsize == 0  # building decoded nothing
    _ = ds[0]
    assert tv.load_on_grid.cache_info().currsize == 2  # query + reference of one row
    assert tv.label_counts(ds) == {"normal": 8, "anomalous": 8}
    assert tv.load_on_grid.cache_info().currsize == 2  # counting labels decoded nothing more


def test_rewards_read_view_columns_like_trl(split: Path):
    """A perfect answer written on the grid scores r_cls=1, r_format=1 and r_loc≈1+α through the view's columns."""
    ds = training_view(split, TINY)
    rows = [ds[i] for i in range(len(ds))]
    anomalous = next(r for r in rows if r["label"] == "anomalous")
    grid = ModelGrid(anomalous["orig_width"], anomalous["orig_height"], anomalous["grid_width"],
                     anomalous["grid_height"])
    answer = format_response(True, grid.to_grid(anomalous["gt_boxes"]).tolist())
    cols = {k: [anomalous[k]] for k in REWARD_COLUMNS}
    assert rewards.classification_reward([answer], **cols) == [1.0]
    assert rewards.format_reward([answer], **cols) == [1.0]
    # format_response rounds grid coordinates to integers, so GIoU is just under 1
    assert rewards.localization_reward([answer], **cols)[0] == pytest.approx(2.0, abs=0.1)


def test_one_stage_and_no_reference(split: Path):
    ds = training_view(split, ViewOptions(prompt_version="one-stage-v1", min_pixels=112 * 112,
                                          max_pixels=224 * 224, use_reference=False, limit=3))
    assert len(ds) == 3
    row = ds[0]
    assert len(row["images"]) == 1 and row["reference_image"] is None
    assert row["prompt_version"] == "one-stage-v1"
    assert "<rethink>" not in row["prompt"][1]["content"][-1]["text"]


def test_errors_name_the_problem(split: Path, tmp_path: Path):
    with pytest.raises(TrainingViewError, match="not found"):
        training_view(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="unknown prompt version"):
        training_view(split, ViewOptions(prompt_version="nope"))

    samples = [Sample.model_validate_json(line) for line in split.read_text().splitlines()]
    missing = samples[0].model_copy(update={"image": str(tmp_path / "gone.png")})
    with pytest.raises(TrainingViewError, match=r"gone\.png"):
        training_view([missing])

    corrupt_path = tmp_path / "corrupt.png"
    corrupt_path.write_bytes(b"not a png")
    with pytest.raises(TrainingViewError, match=r"not a readable image.*corrupt\.png"):
        training_view([samples[0].model_copy(update={"image": str(corrupt_path)})])

    anomalous = next(s for s in samples if s.anomalous)
    no_boxes = anomalous.model_copy(update={"boxes": None})
    with pytest.raises(TrainingViewError, match="has no boxes"):
        training_view([no_boxes], ViewOptions(require_boxes=True))
    assert training_view([no_boxes], TINY)[0]["gt_boxes"] is None  # fine for classification-only presets

    wrong_size = anomalous.model_copy(update={"width": 300, "height": 200})
    with pytest.raises(TrainingViewError, match="300x200"):
        training_view([wrong_size])

    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(split.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(TrainingViewError, match=r"bad\.jsonl:2"):
        training_view(bad_line)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrainingViewError, match="no samples"):
        training_view(empty)


def test_truncated_image_fails_when_read_naming_the_file(split: Path, tmp_path: Path):
    samples = [Sample.model_validate_json(line) for line in split.read_text().splitlines()]
    good = Path(samples[0].image).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    ds = training_view([samples[0].model_copy(update={"image": str(truncated)})], TINY)
    with pytest.raises(TrainingViewError, match=r"truncated\.png"):
        _ = ds[0]
