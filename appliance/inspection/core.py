"""The inspection core every mode shares: gate scoring, the VLM call with its one retry policy,
the verdict policy, and the one builder of `InspectionResult`.

Free-run and line mode differ only in how parts arrive and when a decision must be made
(docs/architecture.md, "The decision core"); what a part's image becomes — gate score, model
answer, parsed boxes, verdict, result record — is decided here once, so the two modes cannot
drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from adfm.geometry import ModelGrid
from adfm.protocol import ParsedResponse, parse_response
from adfm.schema import Box, DecisionSource, InspectionResult, LineAction, Verdict, utcnow

from .worker import GenerationReply, WorkerFailure, WorkerStartError

#: The part in hand is tried once more after a failed inference (a crash, a hang, a backend error).
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class ModelInfo:
    """What inspection must know of an exported model (from its manifest)."""

    model_id: str
    prompt_version: str
    min_pixels: int
    max_pixels: int

    def grid(self, width: int, height: int) -> ModelGrid:
        return ModelGrid.for_image(width, height, self.min_pixels, self.max_pixels)


@dataclass(frozen=True)
class GenerationOptions:
    """Answer limits for the model: `max_tokens` comes from the manifest unless the config sets it
    (adfm.appliance.config.station.model_limits, the one source of model limits)."""

    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0


@dataclass
class Inference:
    """The VLM's answer to one part, or why there is none."""

    parsed: ParsedResponse | None
    raw: str = ""
    attempts: int = 0
    failures: list[str] = field(default_factory=list)
    start_errors: int = 0  # attempts that failed because the worker could not load the model
    ms: dict[str, float] = field(default_factory=dict)
    grid: ModelGrid | None = None  # the grid the model saw: its boxes' pixels


@dataclass(frozen=True)
class GateScore:
    """The screening gate's word on one image; a failing gate is `suspicious` (never passes unseen)."""

    score: float | None
    suspicious: bool
    result: Any = None  # the gate's full result (heat map), None when it failed
    error: str = ""
    ms: float = 0.0
    bank_sha256: str = ""  # the memory bank that scored it ('' for gates without one)
    threshold: float | None = None  # the gate's threshold, shown beside the score


def ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def score_gate(gate: Any, image: np.ndarray) -> GateScore:
    """Score an image with a loaded gate (`score(image)` → `.score`, `.suspicious`)."""
    t0 = time.perf_counter()
    try:
        scored = gate.score(image)
        bank = getattr(scored, "bank_sha256", None) or ""
        threshold = getattr(scored, "threshold", None)
        return GateScore(float(scored.score), bool(scored.suspicious), scored, ms=ms_since(t0), bank_sha256=bank,
                         threshold=None if threshold is None else float(threshold))
    except Exception as exc:  # the caller raises the `gate` problem; the part goes to the model
        return GateScore(None, True, None, f"screening gate failed: {exc}", ms_since(t0))


def gate_pass_reason(score: float | None) -> str:
    return f"screening gate: score {score:.4f} below its threshold"


def verdict_for(parsed: ParsedResponse | None, failures: list[str] | None = None) -> tuple[Verdict, str]:
    """The decision policy: yes → fail, no → pass, unreadable answer or failed inference → review."""
    if parsed is None:
        return "review", "inference failed: " + " | ".join(failures or ["no answer"])
    if parsed.decision is None:
        why = "; ".join(parsed.problems[:3]) or "no yes/no answer"
        return "review", f"unreadable model answer: {why}"
    if parsed.decision:
        n = len(parsed.boxes)
        return "fail", f"model answered yes ({n} region{'s' if n != 1 else ''})"
    return "pass", "model answered no"


def line_action(verdict: Verdict, failsafe: LineAction) -> LineAction:
    """What the line does with a verdict: pass → pass, fail → reject, review → the fail-safe."""
    return {"pass": "pass", "fail": "reject"}.get(verdict, failsafe)  # type: ignore[return-value]


def model_images(model: ModelInfo, image: np.ndarray, reference: np.ndarray | None) -> tuple[ModelGrid, list]:
    """The images the model sees: the query resized onto its grid, after the product's reference."""
    grid = model.grid(image.shape[1], image.shape[0])
    images = [np.asarray(grid.resize(image))]
    if reference is not None:
        images.insert(0, reference)
    return grid, images


def infer(
    generate: Callable[[list[np.ndarray]], GenerationReply],
    model: ModelInfo,
    image: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    on_failure: Callable[[int, Exception], None] | None = None,
    between: Callable[[], None] | None = None,
) -> Inference:
    """Resize, ask the model (retrying once after a failure), parse. Never raises for a failed
    inference: the failures are in the result (`start_errors` counts attempts the model could
    not even be loaded for). `between` runs after a failed attempt (a stop check, a pause)."""
    out = Inference(parsed=None)
    t0 = time.perf_counter()
    grid, images = model_images(model, image, reference)
    out.grid = grid
    out.ms["resize"] = ms_since(t0)
    reply = None
    t0 = time.perf_counter()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        out.attempts = attempt
        try:
            reply = generate(images)
            break
        except (WorkerFailure, WorkerStartError) as exc:
            out.failures.append(f"attempt {attempt}: {exc}")
            if isinstance(exc, WorkerStartError):
                out.start_errors += 1
            if on_failure is not None:
                on_failure(attempt, exc)
            if between is not None:
                between()
    out.ms["vlm"] = ms_since(t0)
    if reply is None:
        return out
    t0 = time.perf_counter()
    out.raw = reply.text
    out.parsed = parse_response(reply.text, grid, model.prompt_version)
    out.ms["parse"] = ms_since(t0)
    out.ms["model"] = round(reply.seconds * 1000.0, 3)
    return out


def utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, UTC)


def build_result(
    *,
    station: str,
    seq: int,
    part_id: str,
    camera: str,
    frame_number: int,
    captured_at: datetime,
    verdict: Verdict,
    reason: str,
    model: ModelInfo | None,
    inference: Inference | None = None,
    image: tuple[str, int, int] = ("", 0, 0),
    gate_score: float | None = None,
    gate_threshold: float | None = None,
    gate_map: str = "",
    gate_bank: str = "",
    latency: dict[str, float] | None = None,
    problems: list[str] | None = None,
    source: DecisionSource | None = None,
    action: LineAction | None = None,
    revision: int = 0,
    decided_at: datetime | None = None,
    triggered_at: datetime | None = None,
    deadline_ms: float | None = None,
    recipe: str = "",
) -> InspectionResult:
    """The one way a result is made, whatever the mode: `image` is (journal path, width, height)."""
    parsed = inference.parsed if inference is not None else None
    boxes = [Box.from_xyxy(b, lab) for b, lab in zip(parsed.boxes, parsed.labels, strict=True)] if parsed else []
    return InspectionResult(
        station=station,
        seq=seq,
        part_id=part_id,
        camera=camera,
        frame_number=frame_number,
        captured_at=captured_at,
        verdict=verdict,
        reason=reason,
        decision=parsed.decision if parsed else None,
        boxes=boxes,
        think=parsed.think if parsed else "",
        rethink=parsed.rethink if parsed else "",
        answer=parsed.answer if parsed else "",
        raw_response=inference.raw if inference else "",
        format_ok=parsed.format_ok if parsed else False,
        problems=[*(parsed.problems if parsed else []), *(inference.failures if inference else []),
                  *(problems or [])],
        prompt_version=model.prompt_version if model else "",
        model_id=model.model_id if model else "",
        image_path=image[0],
        image_width=image[1],
        image_height=image[2],
        gate_score=gate_score,
        gate_threshold=gate_threshold,
        gate_map_path=gate_map,
        gate_bank_sha256=gate_bank,
        grid_width=inference.grid.width if inference is not None and inference.grid is not None else 0,
        grid_height=inference.grid.height if inference is not None and inference.grid is not None else 0,
        latency_ms=dict(latency or {}),
        attempts=inference.attempts if inference else 0,
        revision=revision,
        decision_source=source,
        action=action,
        decided_at=decided_at or utcnow(),
        triggered_at=triggered_at,
        deadline_ms=deadline_ms,
        recipe=recipe,
    )


def load_reference(path: Any, model: ModelInfo) -> np.ndarray:
    """A product's golden reference image, RGB, resized onto its model grid once at start-up."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return np.asarray(model.grid(rgb.shape[1], rgb.shape[0]).resize(rgb))
