"""The training view: a split manifest as a `datasets.Dataset` ready for TRL's GRPOTrainer.

Each row carries what GRPO and the rewards need:
- `prompt`: the conversational prompt of `adfm.protocol.build_messages` (image slots, then text);
- `images`: the normal reference (when used) then the query image, already resized onto the model
  grid, so the processor leaves them as they are and box coordinates map back exactly
  (`image` and `reference_image` hold the same two images by name);
- the reward columns (`REWARD_COLUMNS`): label, ground-truth boxes in original-image pixels,
  original and grid sizes, prompt version.

Only the sample records and image sizes (read from file headers when the view is built, which also
catches missing and unreadable files up front) sit in memory; pixels are decoded and resized when a
row is read, with a small cache because GRPO reads each prompt once per generation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from adfm.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ModelGrid
from adfm.protocol import DEFAULT_PROMPT_VERSION, build_messages, get_prompt_version

from .. import rewards
from .imageio import DataFileError, image_size, load_rgb
from .records import Sample, iter_manifest

#: Columns the reward functions read, as TRL passes them (one value per completion).
REWARD_COLUMNS = (
    rewards.LABEL,
    rewards.GT_BOXES,
    rewards.ORIG_WIDTH,
    rewards.ORIG_HEIGHT,
    rewards.GRID_WIDTH,
    rewards.GRID_HEIGHT,
    rewards.PROMPT_VERSION,
)

#: Decoded, resized images kept per process (GRPO reads each prompt num_generations times in a row).
IMAGE_CACHE_SIZE = 64


class TrainingViewError(ValueError):
    """A split that cannot be trained on; the message names the file, sample and field."""


@dataclass(frozen=True)
class ViewOptions:
    """How samples become rows: prompt version, pixel budget, reference use, box requirement."""

    prompt_version: str = DEFAULT_PROMPT_VERSION
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    use_reference: bool = True
    require_boxes: bool = False
    limit: int | None = None


def _image_size(path: str, what: str) -> tuple[int, int]:
    """Read an image's size from its header (cheap); a clear error for a missing or unreadable file."""
    try:
        return image_size(path, decode=False)
    except DataFileError as exc:
        raise TrainingViewError(f"{what}: not a readable image: {path} ({exc.reason})") from exc


def _row(sample: Sample, options: ViewOptions, sizes: dict[str, tuple[int, int]], where: str) -> dict[str, Any]:
    what = f"{where}: sample {sample.id!r}"
    width, height = sizes.get(sample.image) or _image_size(sample.image, what)
    sizes[sample.image] = (width, height)
    if (sample.width, sample.height) != (None, None) and (sample.width, sample.height) != (width, height):
        raise TrainingViewError(
            f"{what}: record says {sample.width}x{sample.height} but {sample.image} is {width}x{height}; "
            "its boxes were made for another image — rebuild the split"
        )
    try:
        grid = ModelGrid.for_image(width, height, options.min_pixels, options.max_pixels)
    except ValueError as exc:
        raise TrainingViewError(f"{what}: {exc}") from exc
    if sample.anomalous and sample.boxes is None and options.require_boxes:
        raise TrainingViewError(
            f"{what}: anomalous sample has no boxes, and this preset rewards localization; "
            "compute pseudo-boxes for the split with adfm-data, or choose a classification-only preset"
        )
    gt_boxes = sample.boxes if sample.boxes is not None else ([] if not sample.anomalous else None)
    reference, ref_grid = "", (0, 0, 0, 0)
    if options.use_reference and sample.reference:
        rw, rh = sizes.get(sample.reference) or _image_size(sample.reference, f"{what} (reference)")
        sizes[sample.reference] = (rw, rh)
        try:
            rg = ModelGrid.for_image(rw, rh, options.min_pixels, options.max_pixels)
        except ValueError as exc:
            raise TrainingViewError(f"{what} (reference {sample.reference}): {exc}") from exc
        reference, ref_grid = sample.reference, (rw, rh, rg.width, rg.height)
    return {
        "id": sample.id,
        "image_path": sample.image,
        "reference_path": reference,
        "reference_grid": list(ref_grid),
        "category": sample.category,
        "defect_type": sample.defect_type,
        rewards.LABEL: sample.label,
        rewards.GT_BOXES: gt_boxes,
        rewards.ORIG_WIDTH: width,
        rewards.ORIG_HEIGHT: height,
        rewards.GRID_WIDTH: grid.width,
        rewards.GRID_HEIGHT: grid.height,
        rewards.PROMPT_VERSION: options.prompt_version,
    }


@lru_cache(maxsize=IMAGE_CACHE_SIZE)
def load_on_grid(path: str, orig_width: int, orig_height: int, width: int, height: int) -> Image.Image:
    """Decode an image as RGB and resize it onto its model grid (cached per process)."""
    try:
        rgb = load_rgb(path)
    except DataFileError as exc:
        raise TrainingViewError(f"cannot decode image {path}: {exc.reason}") from exc
    return ModelGrid(orig_width, orig_height, width, height).resize(rgb)


def product_name(category: str) -> str:
    """The product noun the prompt uses ('metal_nut' → 'metal nut'; MMAD's 'DS-MVTec/bottle' → 'bottle')."""
    return category.rsplit("/", 1)[-1].replace("_", " ").strip() or "part"


def materialize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The lazy part of the view: decode and resize images, build the conversational prompt."""
    out: dict[str, list[Any]] = {k: list(v) for k, v in batch.items()}
    prompts, images, queries, refs = [], [], [], []
    for i, path in enumerate(batch["image_path"]):
        query = load_on_grid(
            path,
            batch[rewards.ORIG_WIDTH][i],
            batch[rewards.ORIG_HEIGHT][i],
            batch[rewards.GRID_WIDTH][i],
            batch[rewards.GRID_HEIGHT][i],
        )
        ref_path = batch["reference_path"][i]
        ref = load_on_grid(ref_path, *batch["reference_grid"][i]) if ref_path else None
        prompts.append(
            build_messages(
                batch[rewards.PROMPT_VERSION][i],
                product=product_name(batch["category"][i]),
                reference=ref is not None,
            )
        )
        images.append([ref, query] if ref is not None else [query])
        queries.append(query)
        refs.append(ref)
    out["prompt"] = prompts
    out["images"] = images
    out["image"] = queries
    out["reference_image"] = refs
    return out


def _samples(split: str | Path | Iterable[Sample]) -> tuple[list[Sample], str]:
    if isinstance(split, str | Path):
        try:
            return list(iter_manifest(split)), str(split)
        except FileNotFoundError as exc:
            raise TrainingViewError(str(exc)) from exc
        except ValueError as exc:  # a bad line: iter_manifest names file and line
            raise TrainingViewError(str(exc)) from exc
    return list(split), "samples"


def training_view(split: str | Path | Iterable[Sample], options: ViewOptions | None = None):
    """Build the lazy training dataset of a split manifest (or of Sample records).

    Raises `TrainingViewError` naming the manifest, sample and file for a missing manifest, a bad
    record, a missing or unreadable image, a size mismatch, or (with `require_boxes`) an anomalous
    sample without boxes.
    """
    import datasets

    options = options or ViewOptions()
    get_prompt_version(options.prompt_version)  # a clear error for an unknown version
    samples, where = _samples(split)
    if options.limit is not None:
        samples = samples[: options.limit]
    if not samples:
        raise TrainingViewError(f"{where}: the split has no samples")
    sizes: dict[str, tuple[int, int]] = {}
    rows = [_row(s, options, sizes, where) for s in samples]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image_path": datasets.Value("string"),
            "reference_path": datasets.Value("string"),
            "reference_grid": datasets.Sequence(datasets.Value("int64"), length=4),
            "category": datasets.Value("string"),
            "defect_type": datasets.Value("string"),
            rewards.LABEL: datasets.Value("string"),
            rewards.GT_BOXES: datasets.Sequence(datasets.Sequence(datasets.Value("float64"), length=4)),
            rewards.ORIG_WIDTH: datasets.Value("int64"),
            rewards.ORIG_HEIGHT: datasets.Value("int64"),
            rewards.GRID_WIDTH: datasets.Value("int64"),
            rewards.GRID_HEIGHT: datasets.Value("int64"),
            rewards.PROMPT_VERSION: datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_list(rows, features=features)
    return dataset.with_transform(materialize)


def label_counts(dataset: Sequence[Any] | Any) -> dict[str, int]:
    """Normal/anomalous counts of a view, read without decoding any image."""
    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset
    counts: dict[str, int] = {"normal": 0, "anomalous": 0}
    for label in plain[rewards.LABEL]:
        counts[label] = counts.get(label, 0) + 1
    return counts
