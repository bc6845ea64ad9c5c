"""`export_model`: base (+ LoRA) → merged HF model → GGUF language model + mmproj → quantized → verified.

Every file is written under a temporary name in the output directory and renamed only after the
verification passed; the manifest is written last. A failure at any step (bad input, full disk,
failed verification, interruption) leaves nothing under the final names.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

import adfm
from adfm.config import StrictModel, validation_problems
from adfm.manifest import (
    MANIFEST_NAME,
    RUN_RECORD,
    FileEntry,
    ManifestError,
    ModelManifest,
    read_manifest,
    read_run_record,
    sha256_file,
    write_manifest,
)
from adfm.protocol import DEFAULT_PROMPT_VERSION, build_messages, get_prompt_version

from .errors import ExportError
from .files import OutputDir, check_free_space, writing
from .quantize import APPROX_BITS, FLOAT_TYPES, QUANT_TYPES

MMPROJ_CHOICES = ("f16", "q8_0")
DEFAULT_AGREEMENT_FLOOR = 0.8
STEPS = 7


class ExportConfig(StrictModel):
    """Everything one export needs: types are checked on construction (`from_values` turns a type
    error into an ExportError), `check` names the field and value that are wrong."""

    base_dir: Path
    out_dir: Path
    adapter_dir: Path | None = None
    quant: str = "q4_k_m"
    mmproj_type: str = "f16"
    # None: the adapter's run record (adfm_run.json), else the default / the base processor's budget.
    # A value given here that differs from the record overrides it with a printed warning.
    prompt_version: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    use_reference: bool | None = None
    max_tokens: int | None = None
    verify: bool = True
    verify_tokens: int = 16
    agreement_floor: float = DEFAULT_AGREEMENT_FLOOR
    verify_images: list[Path] = Field(default_factory=list)
    dtype: str = "float32"
    device: str = "cpu"
    n_threads: int | None = None
    save_merged: Path | None = None

    @classmethod
    def from_values(cls, **values: Any) -> ExportConfig:
        """The config, or an ExportError naming each field whose value has the wrong type."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ExportError("; ".join(validation_problems("export", exc))) from None

    def check(self) -> ExportConfig:
        if self.quant not in QUANT_TYPES:
            raise ExportError(f"quant {self.quant!r} is not one of {', '.join(QUANT_TYPES)}")
        if self.mmproj_type not in MMPROJ_CHOICES:
            raise ExportError(f"mmproj type {self.mmproj_type!r} is not one of {', '.join(MMPROJ_CHOICES)}")
        if self.prompt_version is not None:
            try:
                get_prompt_version(self.prompt_version)
            except ValueError as exc:
                raise ExportError(str(exc)) from exc
        for name in ("min_pixels", "max_pixels", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ExportError(f"{name} must be positive, got {value}")
        if self.verify_tokens < 1:
            raise ExportError(f"verify_tokens must be at least 1, got {self.verify_tokens}")
        if not 0.0 <= self.agreement_floor <= 1.0:
            raise ExportError(f"agreement_floor must be within [0, 1], got {self.agreement_floor}")
        if self.n_threads is not None and self.n_threads < 1:
            raise ExportError(f"n_threads must be at least 1, got {self.n_threads}")
        for path in self.verify_images:
            if not path.exists():
                raise ExportError(f"verification image not found: {path}")
        if self.save_merged is not None and self.save_merged.exists() and (
            not self.save_merged.is_dir() or any(self.save_merged.iterdir())
        ):
            raise ExportError(f"{self.save_merged} already exists and is not empty; choose a new directory to save to")
        return self


class Progress:
    """Numbered step lines with timings, to stderr by default."""

    def __init__(self, sink: Callable[[str], None] | None = None, total: int = STEPS) -> None:
        self.sink = sink or (lambda line: print(line, file=sys.stderr, flush=True))
        self.total = total
        self.n = 0

    @contextmanager
    def step(self, title: str) -> Iterator[Callable[[str], None]]:
        self.n += 1
        self.sink(f"[{self.n}/{self.total}] {title} …")
        start = time.perf_counter()
        yield lambda note: self.sink(f"      {note}")
        self.sink(f"      done in {time.perf_counter() - start:.1f} s")

    def skip(self, title: str, why: str) -> None:
        self.n += 1
        self.sink(f"[{self.n}/{self.total}] {title}: skipped ({why})")


def processor_pixel_budget(processor: Any) -> tuple[int, int]:
    """The base image processor's (min_pixels, max_pixels)."""
    from adfm.trainer.modeling import image_processor_pixel_budget

    try:
        return image_processor_pixel_budget(processor)
    except ValueError as exc:
        raise ExportError(f"{exc}; pass --min-pixels/--max-pixels") from exc


@dataclass
class TrainedSettings:
    """How the model was trained to be prompted and read, and where each value came from."""

    prompt_version: str
    min_pixels: int | None
    max_pixels: int | None
    use_reference: bool | None
    max_tokens: int | None
    record: dict[str, Any]
    record_path: Path | None
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def training(self) -> dict[str, Any] | None:
        """What the manifest keeps of the run record (None when the adapter has none)."""
        if self.record_path is None:
            return None
        keep = ("kind", "adfm_version", "preset", "prompt_version", "min_pixels", "max_pixels", "use_reference",
                "max_completion_tokens", "rewards", "start_adapter")
        out = {k: self.record[k] for k in keep if k in self.record}
        out["record"] = str(self.record_path)
        out["sources"] = dict(self.sources)
        return out


#: ExportConfig field, run record field, command-line flag.
_RECORDED = (
    ("prompt_version", "prompt_version", "--prompt-version"),
    ("min_pixels", "min_pixels", "--min-pixels"),
    ("max_pixels", "max_pixels", "--max-pixels"),
    ("use_reference", "use_reference", "--use-reference/--no-use-reference"),
    ("max_tokens", "max_completion_tokens", "--max-tokens"),
)


def trained_settings(cfg: ExportConfig) -> TrainedSettings:
    """The adapter's run record, with the export's explicit values laid over it (each with a warning).

    Pixel budget values still None afterwards come from the base processor (after the merge).
    """
    try:
        record, where = read_run_record(cfg.adapter_dir)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    warnings: list[str] = []
    for name, key, flag in _RECORDED:
        given, recorded = getattr(cfg, name), record.get(key)
        if given is not None:
            values[name], sources[name] = given, "command line"
            if recorded is not None and recorded != given:
                warnings.append(
                    f"{flag} {given} overrides the training record's {key} {recorded} ({where}); the line will "
                    "prompt the model differently from how it was trained"
                )
        elif recorded is not None:
            values[name], sources[name] = recorded, str(where)
        else:
            values[name] = None
    if values["prompt_version"] is None:
        values["prompt_version"], sources["prompt_version"] = DEFAULT_PROMPT_VERSION, "default"
    try:
        get_prompt_version(values["prompt_version"])
    except ValueError as exc:
        raise ExportError(f"{sources['prompt_version']}: {exc}") from exc
    for name in ("min_pixels", "max_pixels", "max_tokens"):
        v = values[name]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ExportError(f"{sources[name]}: {name} must be a positive integer, got {v!r}")
    if values["use_reference"] is not None and not isinstance(values["use_reference"], bool):
        raise ExportError(f"{sources['use_reference']}: use_reference must be true or false")
    return TrainedSettings(**values, record=record, record_path=where, sources=sources, warnings=warnings)


def prompt_token_count(processor: Any, prompt_version: str) -> int:
    """Text tokens of the longest inspection prompt (reference form, product 'part'), images excluded:
    the manifest records it so the line can size its context exactly."""
    messages = build_messages(prompt_version, product="part", reference=True)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokenizer = processor.tokenizer
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return sum(1 for t in tokenizer(text, add_special_tokens=False)["input_ids"] if t != pad)


def _file_entry(path: Path, final_name: str, role: str, quant: str) -> FileEntry:
    return FileEntry(path=final_name, role=role, sha256=sha256_file(path), size=path.stat().st_size, quant=quant)


def _old_files(out: Path) -> set[str]:
    try:
        return {f.path for f in read_manifest(out).files}
    except ManifestError:
        return set()


def _release_hf_model(merged: Any) -> None:
    """Free the merged HF weights once nothing needs them, so the peak memory of an export is the
    larger of the HF model and the GGUF files llama.cpp maps, not their sum."""
    import gc

    merged.model = None
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _verify(
    cfg: ExportConfig,
    merged: Any,
    manifest: ModelManifest,
    pairs: list[tuple[Path, Path, str, bool, str, str]],
    note: Callable[[str], None],
) -> dict[str, Any]:
    """Compare each (model, mmproj, label, float check?, LM type, mmproj type) GGUF pair with the
    merged HF model."""
    from adfm.protocol import VISION_SPECIAL_TOKENS
    from adfm.runtime.vlm import GgufVlm

    from . import verify
    from .merge import random_weight_marker

    cases = (
        verify.load_cases(cfg.verify_images, manifest.min_pixels, manifest.max_pixels)
        if cfg.verify_images
        else verify.default_cases(manifest.min_pixels, manifest.max_pixels)
    )
    marker = random_weight_marker(cfg.base_dir)
    if marker is not None:
        note(f"random-weight model ({marker}): quantized bounds will be reported, not applied")
    tokenizer = merged.processor.tokenizer
    suppress = [tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
    fixed = verify.fixed_answer(tokenizer, manifest.prompt_version)
    if cfg.device != "cpu":
        merged.model.to(cfg.device)
    hf_runs = [
        verify.hf_run(merged, c, prompt_version=manifest.prompt_version, max_new_tokens=cfg.verify_tokens,
                      suppress_tokens=suppress, device=cfg.device, fixed=fixed)
        for c in cases
    ]
    note(f"HF answered {len(cases)} cases ({sum(len(r.tokens) for r in hf_runs)} tokens) and read a "
         f"{len(fixed.tokens)}-token fixed answer to its decision")
    _release_hf_model(merged)  # its answers are kept; llama.cpp's files need the memory now
    checks = []
    for model_path, mmproj_path, label, float_check, quant, mmproj_type in pairs:
        try:
            with GgufVlm.from_files(model_path, mmproj_path, manifest, n_threads=cfg.n_threads) as vlm:
                if list(vlm.suppressed_ids) != suppress:
                    raise ExportError(f"{label}: vision token ids differ between llama.cpp and HF vocabularies")
                if (problem := verify.tokenizer_mismatch(vlm, tokenizer)) is not None:
                    raise ExportError(f"verification failed: {label}: {problem}")
                check = verify.check_gguf(
                    vlm, hf_runs, cases, label=label, float_check=float_check,
                    prompt_version=manifest.prompt_version, agreement_floor=cfg.agreement_floor,
                    quant=quant, mmproj_type=mmproj_type, random_weights=marker is not None,
                    reference=next((c for c in checks if c.float_check), None),
                )
        except (RuntimeError, ValueError, FileNotFoundError) as exc:
            if isinstance(exc, ExportError):
                raise
            raise ExportError(f"verification failed: llama.cpp could not run the exported {label}: {exc}") from exc
        s = check.summary()
        decisions = (
            "no case decided clearly by HF" if s["decision_agreement"] is None
            else f"decision agreement {s['decision_agreement']:.0%} of {s['deciding_cases']} deciding cases"
        )
        if s["near_tie_cases"]:
            decisions += f" ({len(s['near_tie_cases'])} near ties left out)"
        if (rel := s["relative_bounds"]) is not None:
            decisions += (f", allowance relative to the float file: mean KL ≤ {rel['max_mean_kld']:.4g}, "
                          f"{s['far_step_share']:.1%} of steps above {rel['far_step_kld']:.3g} "
                          f"(limit {rel['max_far_step_share']:.0%})")
        note(
            f"{label}: same top token {s['same_top']:.1%} and mean KL divergence {s['mean_kld']:.4f} over "
            f"{s['steps_compared']} steps, {decisions}, free-running prefix ≥ {s['min_free_running_prefix']} tokens, "
            f"relative logit error ≤ {s['max_relative_logit_error']:.2%}, "
            f"image embeddings within {s['max_vision_relative_error']:.2%}"
        )
        for line in check.notes():
            note(f"note: {line}")
        checks.append(check)
    problems = [p for c in checks for p in c.problems()]
    if problems:
        raise ExportError("verification failed: " + "; ".join(problems))
    return {
        "passed": True,
        "cases": len(cases),
        "fixtures": "given images" if cfg.verify_images else "built-in synthetic parts",
        "verify_tokens": cfg.verify_tokens,
        "fixed_answer_tokens": len(fixed.tokens),
        "random_weights": str(marker) if marker is not None else None,
        "checks": [c.summary() for c in checks],
    }


def run_export(cfg: ExportConfig, progress: Progress | None = None) -> ModelManifest:
    """Run an export described by `cfg` (see `export_model`)."""
    from .gguf_lm import language_model_nbytes, write_language_model
    from .gguf_mmproj import mmproj_nbytes, write_mmproj
    from .merge import check_adapter_dir, check_base_dir, load_merged, save_merged
    from .quantize import quantize_model

    cfg.check()
    steps = progress or Progress()
    with steps.step("checking inputs") as note:
        base = check_base_dir(cfg.base_dir)
        if cfg.adapter_dir is not None:
            check_adapter_dir(cfg.adapter_dir, base)
        trained = trained_settings(cfg)
        for warning in trained.warnings:
            note(f"warning: {warning}")
        if trained.record_path is not None:
            note(f"training record {trained.record_path}: preset {trained.record.get('preset')}, "
                 f"prompt {trained.prompt_version}")
        elif cfg.adapter_dir is not None:
            note(f"warning: {cfg.adapter_dir} has no training record ({RUN_RECORD}); prompt version, "
                 "pixel budget and answer length come from flags and defaults")
        out = OutputDir(cfg.out_dir)
    try:
        title = f"merging LoRA {cfg.adapter_dir}" if cfg.adapter_dir else "loading the base model (no adapter)"
        with steps.step(title) as note:
            merged = load_merged(base, cfg.adapter_dir, dtype=cfg.dtype)
            if trained.min_pixels is None or trained.max_pixels is None:
                lo, hi = processor_pixel_budget(merged.processor)
                for name, value in (("min_pixels", lo), ("max_pixels", hi)):
                    if getattr(trained, name) is None:
                        setattr(trained, name, value)
                        trained.sources[name] = f"{cfg.base_dir} processor"
            min_pixels, max_pixels = int(trained.min_pixels), int(trained.max_pixels)  # type: ignore[arg-type]
            prompt_tokens = prompt_token_count(merged.processor, trained.prompt_version)
            if min_pixels > max_pixels:
                raise ExportError(f"min_pixels {min_pixels} exceeds max_pixels {max_pixels}")
            float_type = "f32" if cfg.quant == "f32" else "f16"
            lm_bytes = language_model_nbytes(merged.model, float_type)
            need = lm_bytes + mmproj_nbytes(merged.model, cfg.mmproj_type)
            if cfg.quant not in FLOAT_TYPES:
                need += int(lm_bytes * APPROX_BITS[cfg.quant] / APPROX_BITS[float_type])
            if cfg.verify and cfg.mmproj_type != "f16":
                need += mmproj_nbytes(merged.model, "f16")  # the float check's reference mmproj
            check_free_space(out.path, need)
            note(f"pixel budget {min_pixels}..{max_pixels}; needs about {need / 1e6:.1f} MB on disk")
            if cfg.save_merged is not None:
                save_merged(merged, cfg.save_merged)
                note(f"merged checkpoint saved to {cfg.save_merged}")

        float_name = f"model-{float_type}.gguf"
        model_name = f"model-{cfg.quant}.gguf"
        mmproj_name = f"mmproj-{cfg.mmproj_type}.gguf"
        float_tmp = out.temp(float_name)
        lm_title = f"writing the language model GGUF ({float_type})"
        with steps.step(lm_title) as note, writing(float_tmp, "the language model"):
            note(f"{write_language_model(merged, float_tmp, float_type)} tensors")
        mmproj_tmp = out.temp(mmproj_name)
        with steps.step(f"writing the mmproj GGUF ({cfg.mmproj_type})") as note, writing(mmproj_tmp, "the mmproj"):
            note(f"{write_mmproj(merged, mmproj_tmp, cfg.mmproj_type)} tensors")
            reference_mmproj = mmproj_tmp
            if cfg.verify and cfg.mmproj_type != "f16":
                # the float parity check isolates the conversion: it pairs the float LM with an f16 mmproj
                reference_mmproj = out.temp("mmproj-f16.gguf")
                write_mmproj(merged, reference_mmproj, "f16")
                note("and an f16 mmproj for the float parity check")
        quant_tmp = None
        if cfg.quant in FLOAT_TYPES:
            steps.skip("quantizing", f"{cfg.quant} is the written type")
        else:
            quant_tmp = out.temp(model_name)
            with steps.step(f"quantizing to {cfg.quant}") as note, writing(quant_tmp, "the quantized model"):
                quantize_model(float_tmp, quant_tmp, cfg.quant, cfg.n_threads)
                note(f"{float_tmp.stat().st_size / 1e6:.1f} MB → {quant_tmp.stat().st_size / 1e6:.1f} MB")

        model_tmp = quant_tmp or float_tmp
        manifest = ModelManifest(
            files=[
                _file_entry(model_tmp, model_name, "model", cfg.quant),
                _file_entry(mmproj_tmp, mmproj_name, "mmproj", cfg.mmproj_type),
            ],
            base_model=merged.base_identity,
            adapter=merged.adapter_identity,
            prompt_version=trained.prompt_version,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            adfm_version=adfm.__version__,
            created_at=datetime.now(UTC),
            use_reference=trained.use_reference,
            max_tokens=trained.max_tokens,
            prompt_tokens=prompt_tokens,
            training=trained.training(),
        )
        if cfg.verify:
            with steps.step("verifying against the merged HF model") as note:
                pairs = [(float_tmp, reference_mmproj, f"{float_type} + mmproj f16", True, float_type, "f16")]
                if model_tmp != float_tmp or mmproj_tmp != reference_mmproj:
                    pairs.append((model_tmp, mmproj_tmp, f"{cfg.quant} + mmproj {cfg.mmproj_type}", False,
                                  cfg.quant, cfg.mmproj_type))
                manifest.verification = _verify(cfg, merged, manifest, pairs, note)
        else:
            steps.skip("verifying", "turned off")
            manifest.verification = {"passed": None, "skipped": True}

        with steps.step(f"writing {MANIFEST_NAME}") as note:
            old = _old_files(out.path)
            (out.path / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest while files change
            for name in (model_name, mmproj_name):
                out.commit(name)
            out.discard()  # the float intermediate of a quantized export
            write_manifest(manifest, out.path)
            for stale in old - {model_name, mmproj_name}:
                (out.path / stale).unlink(missing_ok=True)
            note(f"{out.path / MANIFEST_NAME}: model {manifest.model_id}")
        return manifest
    except BaseException:
        out.discard()
        raise


def export_model(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    adapter_dir: str | Path | None = None,
    quant: str = "q4_k_m",
    mmproj_type: str = "f16",
    prompt_version: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    use_reference: bool | None = None,
    max_tokens: int | None = None,
    verify: bool = True,
    verify_tokens: int = 16,
    agreement_floor: float = DEFAULT_AGREEMENT_FLOOR,
    verify_images: Sequence[str | Path] = (),
    dtype: str = "float32",
    device: str = "cpu",
    n_threads: int | None = None,
    save_merged: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelManifest:
    """Export a Qwen2.5-VL checkpoint (+ LoRA adapter) to a verified GGUF model directory.

    Prompt version, pixel budget, reference use and answer length come from the adapter's run
    record (`adfm_run.json`); values given here override it with a warning. Without a record the
    pixel budget is the base processor's. `progress` receives one line per step
    (default: stderr). Raises ExportError with a clear message; nothing is left under final names.
    """
    cfg = ExportConfig.from_values(
        base_dir=Path(base_dir),
        out_dir=Path(out_dir),
        adapter_dir=Path(adapter_dir) if adapter_dir is not None else None,
        quant=quant,
        mmproj_type=mmproj_type,
        prompt_version=prompt_version,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        use_reference=use_reference,
        max_tokens=max_tokens,
        verify=verify,
        verify_tokens=verify_tokens,
        agreement_floor=agreement_floor,
        verify_images=[Path(p) for p in verify_images],
        dtype=dtype,
        device=device,
        n_threads=n_threads,
        save_merged=Path(save_merged) if save_merged is not None else None,
    )
    return run_export(cfg, Progress(progress))
