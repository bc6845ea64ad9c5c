"""Settings of a gate training run, validated up front so a bad value fails before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from adfm.config import ConfigError, StrictModel

#: Both feature extractors give a stride-8 patch grid: input sides are multiples of this.
STRIDE = 8
#: Without anomalous images the threshold is this quantile of held-out normal scores: low on purpose
#: (about 10% of good parts go to the VLM) because nothing tells how many defects a higher one lets pass.
CONSERVATIVE_NORMAL_QUANTILE = 0.90


class GateConfigError(ConfigError):
    """A gate run that cannot start; the message names the setting or the file."""


class GateTrainConfig(StrictModel):
    """What `adfm-train gate` does. The defaults fit 400 normal images at 256×256 within two minutes
    on a 2-core CPU. Bank 2,048 searched in 64 principal directions against the former bank 4,096
    searched exactly (bench/gate_throughput.py, one run): image AUROC −0.006 on the brick proxy,
    +0.011 grass, +0.047 gravel, ±0 on the synthetic station, at about half the time per frame.
    `bank_size`, `search_dim` and `long_side` are the knobs."""

    data: Path = Field(description="split manifest (.jsonl) or dataset root (generic folder layout or any known)")
    out: Path = Field(description="the gate's .onnx file; the metadata JSON and training manifest go beside it")
    layout: str | None = Field(None, description="force the dataset layout instead of detecting it")
    categories: list[str] = Field(default_factory=list, description="only these categories (default: all)")
    long_side: int = Field(256, ge=32, le=2048, description="input long side; the short side keeps the images' aspect")
    input_size: tuple[int, int] | None = Field(None, description="(width, height) of the input, overrides long_side")
    backbone: Literal["pretrained", "random"] = Field(
        "pretrained", description="ImageNet EfficientNet-Lite0 features, or seeded random convolutions"
    )
    width: int = Field(16, ge=4, le=256, description="random backbone: channels of its first convolution")
    bank_size: int = Field(2048, ge=16, le=65536, description="normal patch features kept (greedy coreset)")
    max_candidates: int = Field(
        100_000, ge=1000, description="patches sampled from the images for the coreset (the coreset time grows with it)"
    )
    projection_dim: int = Field(64, ge=4, description="random projection used only to pick the coreset")
    search_dim: int | None = Field(
        64, ge=0, description="search the nearest bank row in the bank's leading principal directions "
        "(faster per frame; the distance stays exact); 0 searches all feature channels (exact nearest row)"
    )
    smoothing_sigma: float = Field(1.0, ge=0.0, le=8.0, description="Gaussian smoothing of the patch map, in cells")
    holdout: float = Field(0.2, gt=0.0, lt=1.0, description="share of the normal training images held out")
    target_recall: float = Field(0.95, gt=0.0, le=1.0, description="recall on held-out anomalies the threshold keeps")
    normal_quantile: float = Field(
        CONSERVATIVE_NORMAL_QUANTILE, gt=0.0, lt=1.0,
        description="without anomalies: the threshold is this quantile of held-out normal scores",
    )
    seed: int = Field(0, ge=0, description="hold-out choice, coreset start and the random backbone's filters")
    batch_size: int = Field(16, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="ONNX Runtime threads for calibration")
    progress: bool = True

    @field_validator("out")
    @classmethod
    def _onnx_suffix(cls, v: Path) -> Path:
        if v.suffix.lower() != ".onnx":
            raise ValueError(f"the gate is written as .onnx; got {v}")
        return v

    @field_validator("input_size")
    @classmethod
    def _multiple_of_stride(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None:
            w, h = v
            if w < 32 or h < 32 or w % STRIDE or h % STRIDE:
                raise ValueError(f"input size sides must be ≥ 32 and multiples of {STRIDE}; got {w}x{h}")
        return v

    @model_validator(mode="after")
    def _bank_fits(self) -> GateTrainConfig:
        if self.bank_size > self.max_candidates:
            raise ValueError(f"bank_size {self.bank_size} exceeds max_candidates {self.max_candidates}")
        return self


def input_size_for(long_side: int, image_sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(width, height) with the given long side and the images' median aspect, sides multiples of 8."""
    if not image_sizes:
        raise GateConfigError("no image sizes to derive the gate's input size from")
    aspects = sorted(w / h for w, h in image_sizes)
    aspect = aspects[len(aspects) // 2]
    short = long_side / aspect if aspect >= 1 else long_side * aspect

    def snap(v: float) -> int:
        return max(32, round(v / STRIDE) * STRIDE)

    long_px, short_px = snap(long_side), snap(short)
    return (long_px, short_px) if aspect >= 1 else (short_px, long_px)
