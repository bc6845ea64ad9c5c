"""The screening gate's runtime: a fast ONNX Runtime anomaly scorer in front of the VLM.

A gate (trained by `adfm-train gate`) is two files side by side:

- `gate.onnx`: one graph, RGB pixels (float32, 0–255, N×3×H×W at the gate's input size) in,
  `score` (N: the image anomaly score) and `heatmap` (N×H×W: higher = more anomalous) out.
  Normalization, features, the distance to normal patches, smoothing and the image score are
  all inside the graph, so the line computes exactly what training calibrated.
- `gate.json` (`metadata_path(onnx)`): what the graph needs from outside (input size, resize,
  channel order), the calibrated threshold and how it was chosen, the heat map's display range,
  and the sha256 of the graph it belongs to — a metadata file of another gate is refused.

Preprocessing lives here once (`preprocess`); the trainer fits on pixels made by this function,
so the line's resize and the training resize cannot drift apart. This module imports no torch:
the appliance extra has none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..files import write_atomic
from ..manifest import sha256_file
from .gate_bank import PATCH_OUTPUT

METADATA_FORMAT = "adfm-gate"
METADATA_VERSION = 1
INPUT_NAME = "image"
SCORE_OUTPUT = "score"
MAP_OUTPUT = "heatmap"
#: Written files are readable by the service's own user (mkstemp would leave them 0600).
FILE_MODE = 0o644
#: Opacity of the hottest colour over the part's image in an overlay.
OVERLAY_ALPHA = 0.75


class GateError(RuntimeError):
    """A gate that must not be used, or an image it cannot score; the message names the file/value."""


class Calibration(BaseModel):
    """How the threshold was chosen, and what it did on the calibration images."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["recall", "normal_quantile"] = Field(
        description="'recall': at a target recall on held-out anomalies; "
        "'normal_quantile': at a quantile of held-out normal scores"
    )
    target: float = Field(gt=0, le=1, description="the target recall, or the normal-score quantile")
    n_normal: int = Field(ge=0, description="held-out normal images scored")
    n_anomalous: int = Field(ge=0, description="anomalous images scored")
    recall: float | None = Field(None, description="share of calibration anomalies at or above the threshold")
    normal_flag_rate: float | None = Field(
        None, description="share of held-out normal images at or above the threshold (sent to the VLM)"
    )
    normal_quantile_threshold: float | None = Field(
        None, description="the normal-quantile threshold, for comparison, when normals were held out"
    )


class GateMetadata(BaseModel):
    """The metadata JSON written next to a gate's ONNX graph."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["adfm-gate"] = METADATA_FORMAT
    format_version: int = METADATA_VERSION
    method: str = Field(description="the scoring method, e.g. 'patch-knn-random-features'")
    onnx_file: str = Field(description="file name of the graph this metadata belongs to")
    onnx_sha256: str = Field(min_length=64, max_length=64)
    input_name: str = INPUT_NAME
    score_output: str = SCORE_OUTPUT
    map_output: str = MAP_OUTPUT
    input_height: int = Field(gt=0)
    input_width: int = Field(gt=0)
    resize: Literal["area"] = Field("area", description="OpenCV INTER_AREA resize to the input size")
    channel_order: Literal["RGB"] = "RGB"
    pixel_range: tuple[float, float] = (0.0, 255.0)
    normalization_mean: tuple[float, float, float] = Field(
        description="per-channel mean subtracted inside the graph (recorded, not applied by the caller)"
    )
    normalization_std: tuple[float, float, float]
    threshold: float = Field(description="score ≥ threshold is suspicious")
    calibration: Calibration
    heatmap_range: tuple[float, float] = Field(
        description="heat map values drawn as the coldest and hottest colour (see trainer/gate/calibrate.py)"
    )
    model: dict[str, Any] = Field(default_factory=dict, description="the method's settings")
    training: dict[str, Any] = Field(default_factory=dict, description="data, counts, device, duration")
    adfm_version: str = ""
    created_at: datetime | None = None

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != METADATA_VERSION:
            raise ValueError(f"gate metadata version {v} is not readable (this adfm reads {METADATA_VERSION})")
        return v

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"threshold must be a finite number, got {v}")
        return v

    @model_validator(mode="after")
    def _ordered_range(self) -> GateMetadata:
        lo, hi = self.heatmap_range
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"heatmap_range must be two finite numbers, low < high; got {self.heatmap_range}")
        return self

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the graph's input."""
        return self.input_width, self.input_height


@dataclass(frozen=True)
class GateResult:
    """The gate's word on one image.

    `heatmap` is float32, H×W of the scored image (the graph's map resized back), higher = more
    anomalous; `display_range` is the (low, high) that `save_heatmap` draws coldest and hottest,
    the same for every part, so a cold map really means a normal-looking part.
    """

    score: float
    heatmap: np.ndarray
    threshold: float
    suspicious: bool
    display_range: tuple[float, float] = (0.0, 1.0)
    bank_sha256: str | None = None  # the memory bank that scored it (changes when the line learns)


def metadata_path(onnx_path: str | Path) -> Path:
    """The metadata JSON of a gate graph: `gate.onnx` → `gate.json`."""
    return Path(onnx_path).with_suffix(".json")


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """The image as H×W×3 uint8 RGB; gray (H×W or H×W×1) is repeated, RGBA loses its alpha."""
    if not isinstance(image, np.ndarray):
        raise GateError(f"the gate scores numpy images, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise GateError(f"the gate scores uint8 images (0–255), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise GateError(f"the gate scores H×W×3 RGB (or gray) images, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise GateError(f"the image has no pixels (shape {image.shape})")
    return image[..., :3]


def preprocess(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """One RGB image → the graph's 3×H×W float32 input (area resize, values kept in 0–255)."""
    import cv2

    rgb = as_rgb_uint8(image)
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(np.ascontiguousarray(rgb), (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


class GateSession:
    """An ONNX Runtime session of a gate graph: batches of preprocessed images in, scores and maps out.

    The trainer calibrates through this class too, so calibration sees the graph the line runs.
    `threads` bounds ONNX Runtime's intra-op threads (the line PC shares its cores with llama.cpp).
    """

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise GateError(f"{self.path}: gate model not found")
        opts = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise GateError(f"threads must be ≥ 1, got {threads}")
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise GateError(f"{self.path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
        inputs = self.session.get_inputs()
        outputs = {o.name for o in self.session.get_outputs()}
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise GateError(
                f"{self.path}: a gate graph has one input {INPUT_NAME!r}; "
                f"this one has {[i.name for i in inputs]}"
            )
        missing = {SCORE_OUTPUT, MAP_OUTPUT} - outputs
        if missing:
            raise GateError(f"{self.path}: a gate graph has outputs {SCORE_OUTPUT!r} and {MAP_OUTPUT!r}; "
                            f"missing {sorted(missing)}")
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            raise GateError(f"{self.path}: input {INPUT_NAME!r} must be N×3×H×W with a fixed H, W; got {shape}")
        self.input_height, self.input_width = int(shape[2]), int(shape[3])
        self.has_patch_output = PATCH_OUTPUT in outputs

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the graph takes."""
        return self.input_width, self.input_height

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores N, maps N×H×W) of a preprocessed N×3×H×W float32 batch."""
        score, heat = self.session.run([SCORE_OUTPUT, MAP_OUTPUT], {INPUT_NAME: batch})
        return np.asarray(score, dtype=np.float32).reshape(-1), np.asarray(heat, dtype=np.float32).reshape(
            batch.shape[0], self.input_height, self.input_width
        )

    def patch_features(self, batch: np.ndarray) -> np.ndarray:
        """Every patch's feature (N×hw×C) of a preprocessed batch: what the bank holds for good parts."""
        if not self.has_patch_output:
            raise GateError(f"{self.path}: this gate graph has no {PATCH_OUTPUT!r} output (trained by an adfm "
                            "before the line could learn); train it again with adfm-train gate")
        (feats,) = self.session.run([PATCH_OUTPUT], {INPUT_NAME: batch})
        return np.asarray(feats, dtype=np.float32)

    def score_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, maps at the input size) of RGB images of any size."""
        if not images:
            return np.zeros(0, np.float32), np.zeros((0, self.input_height, self.input_width), np.float32)
        batch = np.stack([preprocess(im, self.input_width, self.input_height) for im in images])
        return self.run(batch)


def read_metadata(path: str | Path) -> GateMetadata:
    """Read and validate a gate metadata JSON; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise GateError(f"{path}: gate metadata not found (written by adfm-train gate next to the .onnx)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateError(f"{path}: not readable as JSON ({exc})") from exc
    try:
        return GateMetadata.model_validate(data)
    except ValidationError as exc:
        raise GateError(f"{path}: not a valid gate metadata file: {exc}") from exc


def write_metadata(meta: GateMetadata, path: str | Path) -> Path:
    """Write the metadata JSON atomically (temporary file, then rename)."""
    path = Path(path)
    write_atomic(path, meta.model_dump_json(indent=2) + "\n", mode=FILE_MODE)
    return path


class Gate:
    """A loaded gate: `score(image)` gives the score, the heat map and the threshold's word."""

    def __init__(self, session: GateSession, metadata: GateMetadata) -> None:
        if session.input_size != metadata.input_size:
            raise GateError(
                f"{session.path}: the graph takes {session.input_width}x{session.input_height} images but "
                f"its metadata says {metadata.input_width}x{metadata.input_height}"
            )
        self.session = session
        self.metadata = metadata

    @classmethod
    def load(cls, onnx_path: str | Path, *, threads: int | None = None, check_hash: bool = True) -> Gate:
        """Open a gate graph and its metadata; refuses a missing, corrupt or mismatched pair."""
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise GateError(f"{onnx_path}: gate model not found")
        meta = read_metadata(metadata_path(onnx_path))
        if check_hash:
            digest = sha256_file(onnx_path)
            if digest != meta.onnx_sha256:
                raise GateError(
                    f"{onnx_path}: sha256 {digest[:12]}… does not match its metadata "
                    f"{metadata_path(onnx_path)} ({meta.onnx_sha256[:12]}…, written for {meta.onnx_file}); "
                    "the files belong to different gates"
                )
        return cls(GateSession(onnx_path, threads=threads), meta)

    @property
    def path(self) -> Path:
        return self.session.path

    @property
    def threshold(self) -> float:
        return self.metadata.threshold

    @property
    def bank_sha256(self) -> str | None:
        """Hash of the memory bank (`gate_bank.bank_digest`), None for gates trained before it was recorded."""
        value = self.metadata.model.get("bank_sha256")
        return value if isinstance(value, str) else None

    @property
    def model_id(self) -> str:
        """Short identity of this gate, for logs and results."""
        return f"{self.path.stem}@{self.metadata.onnx_sha256[:12]}"

    def _result(self, score: float, heat: np.ndarray, shape: tuple[int, int]) -> GateResult:
        import cv2

        h, w = shape
        if heat.shape != (h, w):
            heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
        return GateResult(
            score=float(score),
            heatmap=np.ascontiguousarray(heat, dtype=np.float32),
            threshold=self.threshold,
            suspicious=bool(score >= self.threshold),
            display_range=self.metadata.heatmap_range,
            bank_sha256=self.bank_sha256,
        )

    def score(self, image_rgb: np.ndarray) -> GateResult:
        """Score one RGB uint8 image (H×W×3, or gray); the heat map comes back at H×W."""
        rgb = as_rgb_uint8(image_rgb)
        scores, maps = self.session.score_images([rgb])
        if not np.isfinite(scores[0]):
            raise GateError(f"{self.path}: the gate produced a non-finite score ({scores[0]})")
        return self._result(float(scores[0]), maps[0], rgb.shape[:2])

    def score_batch(self, images: Sequence[np.ndarray]) -> list[GateResult]:
        """Score several images in one graph run (evaluation); same results as `score` one by one."""
        rgbs = [as_rgb_uint8(im) for im in images]
        scores, maps = self.session.score_images(rgbs)
        return [self._result(float(s), m, im.shape[:2]) for s, m, im in zip(scores, maps, rgbs, strict=True)]


def render_heatmap(result: GateResult, image: np.ndarray | None = None) -> np.ndarray:
    """The heat map as an RGB uint8 picture (inferno colours over the gate's fixed display range);
    over `image` when given (the scored image, same H×W), each pixel as opaque as it is hot."""
    import cv2

    lo, hi = result.display_range
    heat = np.asarray(result.heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"a heat map is H×W, got shape {heat.shape}")
    span = hi - lo if hi > lo else 1.0
    level = np.clip((heat - lo) / span, 0.0, 1.0)
    level = np.nan_to_num(level, nan=1.0)  # a broken value is shown hot, never hidden
    bgr = cv2.applyColorMap(np.round(level * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if image is not None:
        base = as_rgb_uint8(image)
        if base.shape[:2] != heat.shape:
            raise ValueError(f"image is {base.shape[1]}x{base.shape[0]} but the heat map is "
                             f"{heat.shape[1]}x{heat.shape[0]}")
        alpha = (OVERLAY_ALPHA * level)[..., None]  # cold pixels leave the part as it is
        rgb = np.round(base * (1.0 - alpha) + rgb * alpha).astype(np.uint8)
    return rgb


def save_heatmap(
    result: GateResult, path: str | Path, image: np.ndarray | None = None, max_side: int | None = 1024
) -> Path:
    """Write the heat map as a PNG an operator can look at (see `render_heatmap`); atomic.

    `max_side` shrinks large maps (a 5 MP camera's map adds nothing over 1024 px but disk).
    """
    import cv2

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the heat map is written as PNG; give a .png path")
    rgb = render_heatmap(result, image)
    h, w = rgb.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        f = max_side / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: the heat map could not be encoded as PNG")
    write_atomic(path, png.tobytes(), mode=FILE_MODE)
    return path


