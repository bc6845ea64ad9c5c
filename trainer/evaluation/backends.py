"""The two ways `adfm-eval` runs a model: transformers (HF checkpoint + LoRA) and llama.cpp (GGUF).

Both answer the same `Query` objects — chat messages with image slots and the images already on
their model grid — so an exported model and its HF original see identical prompts and pixels and
are read by the same parser. Inspection prompts come from `adfm.protocol.build_messages`; the GGUF
backend hands them to `GgufVlm.generate`, which renders that same function's messages.

- transformers: loaded through `adfm.trainer.modeling` (local directories only, optional LoRA
  adapter), batched and left-padded, greedy by default or sampled with a seed, vision special
  tokens suppressed, images passed with `do_resize=False` (they are on the grid already). The
  checkpoint's own sampling defaults (repetition penalty, top-k) are overridden so that decoding
  is the llama.cpp backend's: greedy, or softmax(logits / temperature) (+ top-p).
- gguf: `adfm.runtime.vlm.GgufVlm` on a model directory with a manifest (hashes checked); one
  query at a time, greedy or sampled with a per-item seed (no top-p: it samples the full softmax).

What a backend needs to know about the model — prompt version, pixel budget, whether it was
trained with a reference image, its longest answer — comes from the model itself: the adapter's
`adfm_run.json` (written by `adfm-train`) or the GGUF manifest; options given on the command line
override it.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adfm.geometry import GRID_FACTOR, ModelGrid
from adfm.manifest import (
    MANIFEST_NAME,
    ManifestError,
    adapter_identity,
    checkpoint_identity,
    context_needed,
    load_model_dir,
    read_run_record,
)
from adfm.protocol import DEFAULT_PROMPT_VERSION, attach_images, get_prompt_version

if TYPE_CHECKING:
    from PIL import Image

BackendKind = Literal["transformers", "gguf"]
#: Answer length when neither the command line nor the model's record says.
DEFAULT_MAX_NEW_TOKENS = 512
#: Context beyond the inspection prompt's for MMAD's multiple-choice questions (question + options).
QUESTION_SLACK_TOKENS = 256


class BackendError(RuntimeError):
    """A model that cannot be evaluated; the message names the directory or file and why."""


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are decoded: greedy (temperature 0) or sampled with a seed."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Query:
    """One prompt: messages with `{"type": "image"}` slots and the grid images that fill them.

    `inspection` is (prompt version, product) when the messages are `build_messages`' inspection
    prompt; the GGUF backend then lets `GgufVlm` render it from the same function.
    """

    key: tuple[str, str]
    messages: list[dict[str, Any]]
    images: list[Image.Image]
    inspection: tuple[str, str | None] | None = None


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool
    seconds: float


@dataclass(frozen=True)
class ModelInfo:
    """What evaluation needs to know about a model, and where each value came from."""

    kind: BackendKind
    model_id: str
    prompt_version: str
    min_pixels: int
    max_pixels: int
    path: Path
    adapter: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)
    #: From the training record: the longest answer trained, whether a reference image was shown.
    max_tokens: int | None = None
    use_reference: bool | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "use_reference": self.use_reference,
            "backend": self.kind,
            "model_id": self.model_id,
            "path": str(self.path),
            "adapter": str(self.adapter) if self.adapter else None,
            "prompt_version": self.prompt_version,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "sources": dict(self.sources),
        }


class Backend(ABC):
    """A loaded model that answers queries; `info` says what it is."""

    info: ModelInfo
    batch_size: int = 1

    def grid_for(self, width: int, height: int) -> ModelGrid:
        """The grid an image of this size is resized onto before the model sees it."""
        return ModelGrid.for_image(width, height, min_pixels=self.info.min_pixels, max_pixels=self.info.max_pixels)

    @abstractmethod
    def answer(self, queries: Sequence[Query], settings: GenerationSettings) -> list[Answer]:
        """Answers in query order."""

    @abstractmethod
    def close(self) -> None:
        """Free the model."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackendError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BackendError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def detect_kind(model: Path) -> BackendKind:
    """`gguf` for an exported model directory (manifest.json), `transformers` for a checkpoint or adapter."""
    if not model.exists():
        raise BackendError(f"model directory not found: {model} (adfm evaluates local models only)")
    if not model.is_dir():
        raise BackendError(f"model path is not a directory: {model}")
    if (model / MANIFEST_NAME).is_file():
        return "gguf"
    if (model / "config.json").is_file() or (model / "adapter_config.json").is_file():
        return "transformers"
    raise BackendError(
        f"{model}: neither an exported GGUF model ({MANIFEST_NAME}) nor a transformers checkpoint "
        "(config.json) nor a LoRA adapter (adapter_config.json)"
    )


def _run_record(adapter: Path | None) -> tuple[dict[str, Any], Path | None]:
    """The adapter's adfm_run.json (in the adapter directory or its run directory), if any."""
    try:
        return read_run_record(adapter)
    except ValueError as exc:
        raise BackendError(str(exc)) from exc


def resolve_hf_paths(model: Path, adapter: Path | None) -> tuple[Path, Path | None]:
    """(base checkpoint, adapter). `--model` may name the adapter itself: its run record or
    adapter_config.json then names the base checkpoint, which must be a local directory."""
    if (model / "config.json").is_file():
        return model, adapter
    if adapter is not None:
        raise BackendError(
            f"{model} has no config.json: give the base checkpoint as --model and the adapter as --adapter"
        )
    record, where = _run_record(model)
    base = record.get("base_model")
    origin = str(where)
    if not base:
        cfg = _read_json(model / "adapter_config.json")
        base = cfg.get("base_model_name_or_path")
        origin = str(model / "adapter_config.json")
    if not base or not (Path(base) / "config.json").is_file():
        raise BackendError(
            f"{model} is a LoRA adapter whose base checkpoint {base!r} (from {origin}) is not a local "
            "checkpoint directory; give it with --model BASE --adapter ADAPTER"
        )
    return Path(base), model


def _processor_budget(processor: Any, where: Path) -> tuple[int, int]:
    """The processor's own pixel budget, read the way the export reads it (one definition)."""
    from ..modeling import image_processor_pixel_budget

    try:
        return image_processor_pixel_budget(processor)
    except ValueError as exc:
        raise BackendError(f"{where}: {exc}") from exc


def _check_budget(min_pixels: int, max_pixels: int, where: str) -> None:
    if min_pixels <= 0 or max_pixels <= 0 or min_pixels > max_pixels:
        raise BackendError(f"{where}: invalid pixel budget {min_pixels}..{max_pixels}")
    if max_pixels < GRID_FACTOR * GRID_FACTOR:
        raise BackendError(f"{where}: max_pixels {max_pixels} is below one {GRID_FACTOR}x{GRID_FACTOR} cell")


def _hf_model_id(base: Path, adapter: Path | None) -> str:
    """Identity recorded with every answer: checkpoint name + config hash (+ adapter name + weights hash)."""
    ident = checkpoint_identity(base)
    return ident if adapter is None else f"{ident}+{adapter_identity(adapter)}"


class TransformersBackend(Backend):
    """A local HF checkpoint (+ LoRA adapter) run with `generate`, batched and left-padded."""

    def __init__(
        self,
        model: str | Path,
        adapter: str | Path | None = None,
        *,
        prompt_version: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        batch_size: int = 8,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        device_map: str | None = None,
    ) -> None:
        from adfm.offline import force_offline

        from ..modeling import ModelLoadError, load_model, vision_token_ids

        force_offline()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        base, adapter_path = resolve_hf_paths(Path(model), Path(adapter) if adapter else None)
        record, record_path = _run_record(adapter_path)
        sources: dict[str, str] = {}

        def pick(name: str, given: Any, default: Any = None) -> Any:
            if given is not None:
                sources[name] = "command line"
                return given
            if record.get(name) is not None:
                sources[name] = str(record_path)
                return record[name]
            sources[name] = "default"
            return default

        version = pick("prompt_version", prompt_version, DEFAULT_PROMPT_VERSION)
        get_prompt_version(version)
        lo, hi = pick("min_pixels", min_pixels), pick("max_pixels", max_pixels)
        try:
            loaded = load_model(
                base, adapter_path, dtype=dtype, attn_implementation=attn_implementation,
                device_map=device_map, min_pixels=lo, max_pixels=hi,
            )
        except ModelLoadError as exc:
            raise BackendError(str(exc)) from exc
        if lo is None or hi is None:
            plo, phi = _processor_budget(loaded.processor, base)
            if lo is None:
                lo, sources["min_pixels"] = plo, f"{base} processor"
            if hi is None:
                hi, sources["max_pixels"] = phi, f"{base} processor"
        _check_budget(int(lo), int(hi), str(base))
        self.loaded = loaded
        self.batch_size = batch_size
        self.suppress = vision_token_ids(loaded.tokenizer, getattr(loaded.model, "config", None))
        self.info = ModelInfo(
            kind="transformers",
            model_id=_hf_model_id(base, adapter_path),
            prompt_version=version,
            min_pixels=int(lo),
            max_pixels=int(hi),
            path=base,
            adapter=adapter_path,
            sources=sources,
            max_tokens=pick("max_completion_tokens", None),
            use_reference=pick("use_reference", None),
        )
        loaded.model.eval()

    def _eos_ids(self) -> list[int]:
        eos = self.loaded.model.generation_config.eos_token_id
        if eos is None:
            eos = self.loaded.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else [int(e) for e in eos]

    def answer(self, queries: Sequence[Query], settings: GenerationSettings) -> list[Answer]:
        import torch

        if not queries:
            return []
        processor, model = self.loaded.processor, self.loaded.model
        texts = [
            processor.apply_chat_template(
                attach_images(q.messages, q.images), tokenize=False, add_generation_prompt=True
            )
            for q in queries
        ]
        inputs = processor(
            text=texts, images=[list(q.images) for q in queries], padding=True, return_tensors="pt", do_resize=False
        ).to(model.device)
        eos_ids = self._eos_ids()
        pad = self.loaded.tokenizer.pad_token_id
        # The checkpoint's generation_config may carry sampling defaults (Qwen's: repetition_penalty
        # 1.05, top_k 1) that generate() applies unless overridden; they are, so both backends decode
        # alike: greedy, or plain softmax(logits / temperature) with top-p.
        sampling: dict[str, Any] = {"num_beams": 1, "repetition_penalty": 1.0}
        if settings.greedy:
            sampling["do_sample"] = False
        else:
            sampling.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        if not settings.greedy:  # reproducible for the same batch (same items, same batch size)
            torch.manual_seed(_item_seed(settings.seed, queries[0].key))
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=settings.max_new_tokens,
                suppress_tokens=self.suppress,
                eos_token_id=eos_ids,
                pad_token_id=pad if pad is not None else eos_ids[0],
                **sampling,
            )
        seconds = (time.perf_counter() - start) / len(queries)
        n_prompt = inputs["input_ids"].shape[1]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        answers = []
        for i, row in enumerate(out[:, n_prompt:].tolist()):
            end = next((j for j, t in enumerate(row) if t in eos_ids), None)
            body = row if end is None else row[:end]
            answers.append(
                Answer(
                    text=processor.tokenizer.decode(body, skip_special_tokens=True),
                    prompt_tokens=int(prompt_lengths[i]),
                    completion_tokens=len(body),
                    finished=end is not None,
                    seconds=seconds,
                )
            )
        return answers

    def close(self) -> None:
        self.loaded = None  # type: ignore[assignment]


def _item_seed(seed: int, key: tuple[str, str]) -> int:
    """A per-item seed: the same item gets the same draw whatever the order or resume point."""
    return zlib.crc32(f"{seed}/{key[0]}/{key[1]}".encode())


class GgufBackend(Backend):
    """An exported model directory (GGUF language model + mmproj + manifest) run with llama.cpp."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        prompt_version: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        max_new_tokens: int | None = None,
        check_hashes: bool = True,
    ) -> None:
        model_dir = Path(model_dir)
        try:
            manifest = load_model_dir(model_dir, check_hashes=check_hashes)
        except ManifestError as exc:
            raise BackendError(str(exc)) from exc
        for name, given in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if given is not None and given != getattr(manifest, name):
                raise BackendError(
                    f"{model_dir}: --{name.replace('_', '-')} {given} differs from the manifest's "
                    f"{getattr(manifest, name)}; the projector was exported for the manifest's budget"
                )
        version = prompt_version or manifest.prompt_version
        get_prompt_version(version)
        answer = max_new_tokens or manifest.max_tokens or DEFAULT_MAX_NEW_TOKENS
        need = self.context_for(manifest, answer, version)
        if n_ctx is None:
            n_ctx = need
        elif n_ctx < need:
            fit = context_needed(manifest, images=2, max_tokens=answer, prompt_version=version)
            raise BackendError(
                f"{model_dir}: --n-ctx {n_ctx} cannot hold a query: {fit.describe()} (+ {QUESTION_SLACK_TOKENS} for "
                f"question text) = {need}; raise --n-ctx or lower --max-new-tokens"
            )
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise BackendError("the GGUF backend needs llama-cpp-python (pip install 'adfm[appliance]')")
        from adfm.runtime.vlm import GgufVlm

        try:
            self.vlm = GgufVlm(
                model_dir, n_ctx=n_ctx, n_threads=n_threads, check_hashes=False, n_gpu_layers=n_gpu_layers
            )
        except (RuntimeError, ValueError, FileNotFoundError) as exc:
            raise BackendError(f"{model_dir}: {exc}") from exc
        self.batch_size = 1
        self.info = ModelInfo(
            kind="gguf",
            model_id=manifest.model_id,
            prompt_version=version,
            min_pixels=manifest.min_pixels,
            max_pixels=manifest.max_pixels,
            path=model_dir,
            sources={
                "prompt_version": "command line" if prompt_version else str(model_dir / MANIFEST_NAME),
                "min_pixels": str(model_dir / MANIFEST_NAME),
                "max_pixels": str(model_dir / MANIFEST_NAME),
            },
            max_tokens=manifest.max_tokens,
            use_reference=manifest.use_reference,
        )
        self.n_ctx = n_ctx

    @staticmethod
    def context_for(manifest: Any, max_new_tokens: int, prompt_version: str | None = None) -> int:
        """A context that holds two images at the budget's top, the prompt text (with room for
        MMAD's questions) and the answer, rounded up to 256."""
        fit = context_needed(manifest, images=2, max_tokens=max_new_tokens, prompt_version=prompt_version)
        return int(math.ceil((fit.total + QUESTION_SLACK_TOKENS) / 256) * 256)

    def answer(self, queries: Sequence[Query], settings: GenerationSettings) -> list[Answer]:
        if not settings.greedy and settings.top_p < 1:
            raise BackendError("the GGUF backend samples from the full softmax; top-p sampling needs top_p 1")
        out = []
        for q in queries:
            seed = _item_seed(settings.seed, q.key)
            try:
                if q.inspection is not None:
                    version, product = q.inspection
                    gen = self.vlm.generate(
                        q.images, prompt_version=version, product=product,
                        max_tokens=settings.max_new_tokens, temperature=settings.temperature, seed=seed,
                    )
                else:
                    gen = self.vlm.generate(
                        q.images, messages=q.messages,
                        max_tokens=settings.max_new_tokens, temperature=settings.temperature, seed=seed,
                    )
            except ValueError as exc:
                raise BackendError(f"sample {q.key[0]!r} ({q.key[1]}): {exc}") from exc
            out.append(Answer(gen.text, gen.prompt_tokens, gen.completion_tokens, gen.finished, gen.seconds))
        return out

    def close(self) -> None:
        self.vlm.close()


def open_backend(
    model: str | Path,
    adapter: str | Path | None = None,
    *,
    backend: str = "auto",
    **options: Any,
) -> Backend:
    """Open the right backend for a model path; `options` are the backend's keyword arguments."""
    model = Path(model)
    if backend not in ("auto", "transformers", "gguf"):
        raise BackendError(f"unknown backend {backend!r}; choose auto, transformers or gguf")
    kind = detect_kind(model)
    if backend != "auto" and backend != kind:
        raise BackendError(f"{model} is a {kind} model directory, not one for the {backend} backend")
    if kind == "gguf":
        if adapter is not None:
            raise BackendError(
                f"{model}: a GGUF model has its adapter merged at export; --adapter is for HF checkpoints"
            )
        keep = ("prompt_version", "min_pixels", "max_pixels", "n_ctx", "n_threads", "n_gpu_layers",
                "max_new_tokens", "check_hashes")
        return GgufBackend(model, **{k: v for k, v in options.items() if k in keep})
    keep = ("prompt_version", "min_pixels", "max_pixels", "batch_size", "dtype", "attn_implementation",
            "device_map")
    return TransformersBackend(model, adapter, **{k: v for k, v in options.items() if k in keep})
