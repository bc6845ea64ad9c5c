"""The one sample record every dataset adapter produces, and split manifests (JSONL) of them.

A manifest line is one `Sample` as JSON. Paths are absolute, so a manifest names exactly the files
it was made from; training, evaluation and the gate read the same records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adfm.files import write_atomic

Label = Literal["normal", "anomalous"]
SplitName = Literal["train", "test", "val"]


class Sample(BaseModel):
    """One image of a dataset: where it is, what it shows, and the ground truth for it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="stable id: '<dataset>/<category>/<split>/<defect>/<stem>'")
    image: str = Field(description="absolute path of the image file")
    dataset: str
    category: str
    split: SplitName
    label: Label
    defect_type: str = Field("good", description="'good' for normal images")
    masks: list[str] = Field(default_factory=list, description="absolute mask paths, combined by OR")
    boxes: list[list[float]] | None = Field(
        None, description="pseudo-boxes xyxy in original-image pixels; None until computed"
    )
    width: int | None = None
    height: int | None = None
    reference: str | None = Field(None, description="a normal training image of the same category")
    extra: dict[str, Any] = Field(default_factory=dict, description="dataset-specific fields (e.g. MMAD)")

    @field_validator("boxes")
    @classmethod
    def _four_numbers(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None:
            for b in v:
                if len(b) != 4:
                    raise ValueError(f"box {b} must have 4 numbers (x1, y1, x2, y2)")
        return v

    @property
    def anomalous(self) -> bool:
        return self.label == "anomalous"


def write_manifest(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples as JSONL atomically (temporary file, then rename)."""
    return write_atomic(path, "".join(s.model_dump_json() + "\n" for s in samples))


def iter_manifest(path: str | Path) -> Iterator[Sample]:
    """Read a manifest lazily; a bad line raises ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split manifest not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Sample.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError) as exc:
                raise ValueError(f"{path}:{lineno}: not a valid sample record: {exc}") from exc


def read_manifest(path: str | Path) -> list[Sample]:
    return list(iter_manifest(path))
