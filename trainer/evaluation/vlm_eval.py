"""`adfm-eval --model … --split …`: ask a VLM every item of a split, store the answers, score them.

Items are a sample's inspection prompt (`adfm.protocol.build_messages`, the protocol the model was
trained on) and, for MMAD samples, each of its multiple-choice questions. Every image is resized
onto the backend's model grid by `adfm.geometry.ModelGrid` before the backend sees it; the normal
reference image goes first when the split carries one (the single normal reference protocol).

Answers are appended to `responses.jsonl` as they come (a rerun skips what is answered), then
scored into `results.json`, `results.md` and PNG plots in the output directory.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adfm.geometry import ModelGrid
from adfm.protocol import build_messages

from ..data.imageio import DataFileError, load_rgb
from ..data.records import Sample, iter_manifest
from ..data.training_view import product_name
from .backends import (
    DEFAULT_MAX_NEW_TOKENS,
    Answer,
    Backend,
    BackendError,
    GenerationSettings,
    ModelInfo,
    Query,
    open_backend,
)
from .mmad import (
    SUBTASKS,
    MmadQuestion,
    build_question_messages,
    canonical_subtask,
    is_mmad_sample,
    mmad_questions,
)
from .responses import (
    INSPECT,
    RESPONSES_NAME,
    ResponseRecord,
    ResponseWriter,
    check_run,
    latest_by_key,
    read_responses,
    run_fingerprint,
    set_aside,
)
from .vlm_metrics import inspection_metrics, mmad_metrics

log = logging.getLogger("adfm.eval")

ReferenceMode = Literal["auto", "on", "off"]
#: The run's settings, next to its answers (says what changed when a rerun is refused).
RUN_NAME = "run.json"
#: Decoded grid images kept while items of the same sample follow each other.
IMAGE_CACHE = 8


class EvalError(ValueError):
    """An evaluation that cannot run; the message names the file, field or value."""


class EvalConfig(BaseModel):
    """One VLM evaluation run: model, split, protocol, decoding, output."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="HF checkpoint or LoRA adapter directory, or exported GGUF directory")
    adapter: Path | None = Field(None, description="LoRA adapter on top of an HF checkpoint")
    split: Path = Field(description="split manifest (JSONL of Sample records) from adfm-data split")
    out: Path = Field(description="output directory: responses.jsonl, results.json, results.md, plots")
    backend: Literal["auto", "transformers", "gguf"] = "auto"
    prompt_version: str | None = Field(None, description="None: the model's recorded prompt version")
    min_pixels: int | None = Field(None, gt=0)
    max_pixels: int | None = Field(None, gt=0)
    reference: ReferenceMode = Field(
        "auto",
        description="auto: show the sample's normal reference when it has one, unless the model was trained "
        "without references; on: require it; off: never",
    )
    inspect: bool = Field(True, description="ask the inspection prompt (binary + localization)")
    mmad: bool = Field(True, description="ask MMAD samples' multiple-choice questions")
    subtasks: list[str] | None = Field(None, description="MMAD subtasks to ask; None: all")
    limit: int | None = Field(None, ge=1, description="only the first N samples of the split")
    batch_size: int = Field(8, ge=1, description="queries per generate call (transformers)")
    max_new_tokens: int | None = Field(
        None, ge=1, description="None: the model's recorded answer length (as trained), else 512"
    )
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    device_map: str | None = None
    n_ctx: int | None = Field(None, ge=256, description="llama.cpp context; None: fits two images + the answer")
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int = 0
    fresh: bool = Field(False, description="set an existing responses.jsonl aside and start over")
    plots: bool = True
    progress: bool = True

    @field_validator("subtasks")
    @classmethod
    def _known_subtasks(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        names = [canonical_subtask(s) for s in v]
        unknown = [s for s in names if s not in SUBTASKS]
        if unknown or not names:
            raise ValueError(f"unknown MMAD subtasks {unknown}; known: {', '.join(SUBTASKS)}")
        return names

    @model_validator(mode="after")
    def _something_to_ask(self) -> EvalConfig:
        if not self.inspect and not self.mmad:
            raise ValueError("nothing to ask: both the inspection prompt and MMAD questions are turned off")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")
        return self

    @property
    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, self.temperature, self.top_p, self.seed
        )

    def for_model(self, info: ModelInfo) -> EvalConfig:
        """This config with the model's recorded defaults filled in: the answer length it was trained
        with, and no references under `auto` for a model trained without them."""
        update: dict[str, Any] = {}
        if self.max_new_tokens is None:
            update["max_new_tokens"] = info.max_tokens or DEFAULT_MAX_NEW_TOKENS
        if self.reference == "auto" and info.use_reference is False:
            update["reference"] = "off"
        return self.model_copy(update=update)


@dataclass(frozen=True)
class Item:
    """One question to one sample, and the normal reference shown with it (None: the query alone)."""

    sample: Sample
    question: str
    task: str
    mmad: MmadQuestion | None = None
    reference: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.sample.id, self.question)

    def answered_by(self, record: ResponseRecord) -> bool:
        """Whether a stored answer is this item's: same image and reference (a rebuilt split may reuse ids)."""
        return record.key == self.key and record.image == self.sample.image and record.reference == self.reference


def load_split(path: Path, limit: int | None = None) -> list[Sample]:
    """The split's samples (first `limit`); duplicate ids are refused (answers are keyed by id)."""
    try:
        samples = list(iter_manifest(path))
    except FileNotFoundError as exc:
        raise EvalError(str(exc)) from exc
    except ValueError as exc:  # iter_manifest names the file and line
        raise EvalError(str(exc)) from exc
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise EvalError(f"{path}: the split has no samples")
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise EvalError(f"{path}: sample id {s.id!r} appears twice; answers are stored by sample id")
        seen.add(s.id)
    return samples


def plan_items(samples: Sequence[Sample], cfg: EvalConfig) -> tuple[list[Item], list[str]]:
    """Every item to ask, in split order, and problems with questions that cannot be asked."""
    items: list[Item] = []
    problems: list[str] = []
    for s in samples:
        if cfg.reference == "on" and not s.reference:
            problems.append(f"sample {s.id!r}: no normal reference in the split, and --reference on requires one")
            continue
        reference = s.reference if cfg.reference != "off" and s.reference else None
        if cfg.inspect:
            items.append(Item(s, INSPECT, INSPECT, reference=reference))
        if cfg.mmad and is_mmad_sample(s):
            questions, bad = mmad_questions(s)
            problems.extend(bad)
            for q in questions:
                if cfg.subtasks is None or q.subtask in cfg.subtasks:
                    items.append(Item(s, q.key, q.subtask, q, reference))
    return items, problems


class GridImages:
    """Images decoded as RGB and resized onto the backend's grid, a few kept for the next items."""

    def __init__(self, backend: Backend, size: int = IMAGE_CACHE) -> None:
        self.backend = backend
        self.size = size
        self._cache: OrderedDict[str, tuple[Any, ModelGrid]] = OrderedDict()

    def get(self, path: str, expect: tuple[int | None, int | None] = (None, None)) -> tuple[Any, ModelGrid]:
        hit = self._cache.get(path)
        if hit is None:
            img = load_rgb(path)
            try:
                grid = self.backend.grid_for(*img.size)
            except ValueError as exc:
                raise DataFileError(path, str(exc)) from exc
            hit = (grid.resize(img), grid)
            self._cache[path] = hit
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(path)
        img, grid = hit
        if expect != (None, None) and expect != (grid.orig_width, grid.orig_height):
            raise DataFileError(
                path,
                f"the split records {expect[0]}x{expect[1]} but the file is {grid.orig_width}x{grid.orig_height}; "
                "its boxes were made for another image — rebuild the split",
            )
        return hit


def build_query(item: Item, images: GridImages, prompt_version: str) -> tuple[Query, ModelGrid]:
    """The query of an item (messages, grid images with the reference first) and the query's grid."""
    s = item.sample
    query_img, grid = images.get(s.image, (s.width, s.height))
    shown = [images.get(item.reference)[0], query_img] if item.reference else [query_img]
    if item.mmad is None:
        product = product_name(s.category)
        messages = build_messages(prompt_version, product=product, reference=item.reference is not None)
        return Query(item.key, messages, shown, inspection=(prompt_version, product)), grid
    messages = build_question_messages(item.mmad, reference=item.reference is not None)
    return Query(item.key, messages, shown), grid


def _batches(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


@dataclass
class RunStats:
    """What this invocation did (not what earlier, resumed invocations did)."""

    asked: int = 0
    skipped_answered: int = 0
    failed: int = 0
    generation_seconds: float = 0.0
    wall_seconds: float = 0.0
    completion_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "already_answered": self.skipped_answered,
            "failed": self.failed,
            "wall_seconds": round(self.wall_seconds, 3),
            "generation_seconds": round(self.generation_seconds, 3),
            "items_per_second": round(self.asked / self.wall_seconds, 4) if self.wall_seconds > 0 else None,
            "completion_tokens_per_second": (
                round(self.completion_tokens / self.generation_seconds, 2) if self.generation_seconds > 0 else None
            ),
        }


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    # rate_noinv: always items/s (tqdm would switch to s/item below one item per second)
    return tqdm(total=total, initial=initial, unit="item", desc="adfm-eval", disable=not enabled,
                dynamic_ncols=True, file=sys.stderr, smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]")


#: When this many items fail before any is answered, the run stops: the model, not the data, is wrong.
FAIL_FAST = 8


def _answer_batch(
    backend: Backend,
    prepared: list[tuple[Item, Query, ModelGrid]],
    settings: GenerationSettings,
    problems: list[str],
    stats: RunStats,
) -> list[tuple[tuple[Item, Query, ModelGrid], Answer]]:
    """(entry, answer) pairs. A failing batch is asked again one item at a time; an item that still
    fails (prompt too long for the context, out of memory) is listed as a problem, not answered."""
    if not prepared:
        return []
    try:
        return list(zip(prepared, backend.answer([q for _, q, _ in prepared], settings), strict=True))
    except (BackendError, ValueError, RuntimeError) as exc:
        if len(prepared) == 1:
            it = prepared[0][0]
            problems.append(f"sample {it.sample.id!r} ({it.question}): {exc}")
            stats.failed += 1
            if stats.asked == 0 and stats.failed >= FAIL_FAST:
                raise EvalError(f"the first {stats.failed} items all failed; the last: {exc}") from exc
            return []
        log.warning("a batch of %d failed (%s); asking its items one by one", len(prepared), exc)
    return [pair for one in prepared for pair in _answer_batch(backend, [one], settings, problems, stats)]


def ask(
    backend: Backend,
    items: Sequence[Item],
    cfg: EvalConfig,
    writer: ResponseWriter,
    fingerprint: str,
    problems: list[str],
    stats: RunStats,
    progress: Callable[[int], None],
) -> None:
    """Ask every item, batch by batch, appending each batch's answers to the responses file."""
    images = GridImages(backend)
    version = backend.info.prompt_version
    settings = cfg.settings
    for batch in _batches(items, backend.batch_size):
        prepared: list[tuple[Item, Query, ModelGrid]] = []
        for it in batch:
            try:
                prepared.append((it, *build_query(it, images, version)))
            except DataFileError as exc:
                problems.append(f"sample {it.sample.id!r} ({it.question}): {exc}")
                stats.failed += 1
        records = []
        for (it, _, grid), a in _answer_batch(backend, prepared, settings, problems, stats):
            records.append(
                ResponseRecord(
                    sample_id=it.sample.id,
                    question=it.question,
                    task=it.task,
                    response=a.text,
                    grid=(grid.orig_width, grid.orig_height, grid.width, grid.height),
                    image=it.sample.image,
                    reference=it.reference,
                    prompt_tokens=a.prompt_tokens,
                    completion_tokens=a.completion_tokens,
                    finished=a.finished,
                    seconds=a.seconds,
                    run=fingerprint,
                )
            )
            stats.generation_seconds += a.seconds
            stats.completion_tokens += a.completion_tokens
        writer.write(records)
        stats.asked += len(records)
        progress(len(batch))


def run_settings(backend: Backend, cfg: EvalConfig) -> dict[str, Any]:
    """Everything that decides an answer; its hash marks every record of this run."""
    info = backend.info
    return {
        "backend": info.kind,
        "model_id": info.model_id,
        "prompt_version": info.prompt_version,
        "min_pixels": info.min_pixels,
        "max_pixels": info.max_pixels,
        "reference": cfg.reference,
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": cfg.seed,
    }


def score(
    samples: Sequence[Sample],
    items: Sequence[Item],
    records: Sequence[ResponseRecord],
    prompt_version: str,
) -> dict[str, Any]:
    """Metrics of the answered items (inspection and MMAD)."""
    by_id = {s.id: s for s in samples}
    wanted = {it.key: it for it in items}
    latest = [r for k, r in latest_by_key(records).items() if k in wanted and wanted[k].answered_by(r)]
    out: dict[str, Any] = {}
    inspected = [r for r in latest if r.question == INSPECT]
    if inspected:
        out["inspection"] = inspection_metrics(by_id, inspected, prompt_version)
    questions = [r for r in latest if r.question != INSPECT]
    if questions:
        out["mmad"] = mmad_metrics(by_id, questions)
    with_reference = sum(1 for r in latest if r.reference)
    out["answers"] = {
        "items": len(wanted),
        "answered": len(latest),
        "unanswered": len(wanted) - len(latest),
        "with_reference": with_reference,
        "truncated": sum(1 for r in latest if not r.finished),
        "mean_completion_tokens": (sum(r.completion_tokens for r in latest) / len(latest)) if latest else None,
    }
    return out


def _read_previous(path: Path) -> dict[str, Any] | None:
    """The settings an earlier run recorded (to say what changed); None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    data.pop("fingerprint", None)
    return data


def evaluate(cfg: EvalConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Run (or resume) an evaluation and write every output; returns the results."""
    from .report import write_json, write_vlm_outputs

    started = time.perf_counter()
    samples = load_split(cfg.split, cfg.limit)
    items, problems = plan_items(samples, cfg)
    if not items:
        raise EvalError(
            f"{cfg.split}: nothing to ask ({len(samples)} samples; inspection "
            f"{'on' if cfg.inspect else 'off'}, MMAD questions {'on' if cfg.mmad else 'off'})"
        )
    own_backend = backend is None
    if backend is None:
        backend = open_backend(
            cfg.model, cfg.adapter, backend=cfg.backend, prompt_version=cfg.prompt_version,
            min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, batch_size=cfg.batch_size, dtype=cfg.dtype,
            attn_implementation=cfg.attn_implementation, device_map=cfg.device_map, n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads, n_gpu_layers=cfg.n_gpu_layers, max_new_tokens=cfg.max_new_tokens,
        )
    try:
        cfg = cfg.for_model(backend.info)
        if cfg.reference == "off":
            items = [replace(it, reference=None) for it in items]
        if backend.info.kind == "gguf" and cfg.temperature > 0 and cfg.top_p < 1:
            raise EvalError("the GGUF backend samples from the full softmax; drop --top-p (or use transformers)")
        cfg.out.mkdir(parents=True, exist_ok=True)
        path = cfg.out / RESPONSES_NAME
        notes: list[str] = []
        if cfg.fresh:
            moved = set_aside(path)
            if moved:
                notes.append(f"earlier answers set aside in {moved}")
        settings = run_settings(backend, cfg)
        fingerprint = run_fingerprint(settings)
        existing, repaired = read_responses(path, repair=True)
        notes.extend(repaired)
        run_file = cfg.out / RUN_NAME
        check_run(existing, fingerprint, path, settings, _read_previous(run_file))
        write_json(run_file, {**settings, "fingerprint": fingerprint})
        answered = latest_by_key(existing)
        pending = [it for it in items if not (it.key in answered and it.answered_by(answered[it.key]))]
        stats = RunStats(skipped_answered=len(items) - len(pending))
        t0 = time.perf_counter()
        with ResponseWriter(path) as writer, _progress_bar(len(items), stats.skipped_answered, cfg.progress) as bar:
            try:
                ask(backend, pending, cfg, writer, fingerprint, problems, stats, bar.update)
            finally:
                stats.wall_seconds = time.perf_counter() - t0
        records, _ = read_responses(path)
        results = {
            "kind": "adfm-eval-vlm",
            "split": str(cfg.split),
            "samples": len(samples),
            "model": backend.info.describe(),
            "run": {**settings, "fingerprint": fingerprint},
            "config": json.loads(cfg.model_dump_json()),
            **score(samples, items, records, backend.info.prompt_version),
            "this_invocation": stats.summary(),
            "problems": problems,
            "notes": notes,
            "seconds": round(time.perf_counter() - started, 3),
        }
        results["outputs"] = write_vlm_outputs(results, cfg.out, plots=cfg.plots, responses=path)
        return results
    finally:
        if own_backend:
            backend.close()
