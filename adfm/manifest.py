"""The exported model directory's manifest: what `adfm-export` wrote and what the line checks.

A model directory holds `manifest.json`, a GGUF language model and a GGUF multimodal projector.
The appliance and the GGUF evaluation backend load a directory only through `load_model_dir`, which
refuses files that do not match their recorded size and sha256.

The manifest also carries the training run's record (`adfm_run.json`, written by `adfm-train` next to
every adapter and read by `adfm-export`): prompt version, pixel budget, whether a normal reference
image was shown, the longest answer trained. Readers take their defaults from it, and
`context_needed` says how many llama.cpp context tokens one inspection takes with them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .files import write_atomic
from .geometry import GRID_FACTOR
from .protocol import prompt_text

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
#: What `adfm-train` writes next to every adapter (and its run directory): the run's record.
RUN_RECORD = "adfm_run.json"
#: Fields of a run record that decide how the model must be prompted and read.
RUN_FIELDS = ("prompt_version", "min_pixels", "max_pixels", "use_reference", "max_completion_tokens")
#: Chat-template tokens around the prompt text (role markers, newlines, the assistant turn), an upper
#: bound used only when a manifest does not record its prompt's token count.
TEMPLATE_TOKEN_BOUND = 48


class ManifestError(RuntimeError):
    """A model directory that must not be loaded; the message says which file and why."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file name relative to the model directory")
    role: str = Field(description="'model' (language model GGUF) or 'mmproj' (vision projector GGUF)")
    sha256: str
    size: int = Field(ge=0)
    quant: str = Field("", description="quantization type, e.g. q4_k_m, f16")


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest_version: int = MANIFEST_VERSION
    files: list[FileEntry]
    base_model: str = Field(description="base checkpoint identity: directory name and config hash")
    adapter: str | None = Field(None, description="LoRA adapter identity, None when exported as is")
    prompt_version: str
    min_pixels: int = Field(gt=0)
    max_pixels: int = Field(gt=0)
    adfm_version: str
    created_at: datetime
    verification: dict = Field(default_factory=dict, description="what the export's check measured")
    use_reference: bool | None = Field(
        None, description="training showed a normal reference image before the query (None: not recorded)"
    )
    max_tokens: int | None = Field(
        None, gt=0, description="longest answer, in tokens, the model was trained to give (None: not recorded)"
    )
    prompt_tokens: int | None = Field(
        None, gt=0, description="text tokens of the longest prompt (reference form, product 'part'), images excluded"
    )
    training: dict[str, Any] | None = Field(
        None, description="the adapter's run record: preset, rewards, pixel budget, prompt, where it was read"
    )

    def file(self, role: str) -> FileEntry:
        for f in self.files:
            if f.role == role:
                return f
        raise ManifestError(f"manifest lists no file with role {role!r}")

    @property
    def model_id(self) -> str:
        """Short identity of this exported model, recorded with every result."""
        return f"{Path(self.file('model').path).stem}@{self.file('model').sha256[:12]}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: PEFT's adapter weight files, in the order PEFT itself prefers them.
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def checkpoint_identity(base_dir: str | Path) -> str:
    """A base checkpoint's identity: directory name and config hash (recorded in manifests and results)."""
    base_dir = Path(base_dir)
    return f"{base_dir.resolve().name}@{sha256_file(base_dir / 'config.json')[:12]}"


def adapter_identity(adapter_dir: str | Path) -> str:
    """A LoRA adapter's identity: directory name and weights hash."""
    adapter_dir = Path(adapter_dir)
    weights = next((adapter_dir / n for n in ADAPTER_WEIGHT_FILES if (adapter_dir / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{adapter_dir}: no adapter weights ({' or '.join(ADAPTER_WEIGHT_FILES)})")
    return f"{adapter_dir.resolve().name}@{sha256_file(weights)[:12]}"


def read_run_record(adapter_dir: str | Path | None) -> tuple[dict[str, Any], Path | None]:
    """An adapter's run record (in the adapter directory, else its run directory) and where it was.

    ({}, None) without an adapter or a record; a record that is not a JSON object is an error.
    """
    if adapter_dir is None:
        return {}, None
    adapter_dir = Path(adapter_dir)
    for candidate in (adapter_dir / RUN_RECORD, adapter_dir.parent / RUN_RECORD):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{candidate}: cannot read the run record: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"{candidate}: a run record must be a JSON object, got {type(data).__name__}")
            return data, candidate
    return {}, None


def image_tokens(max_pixels: int) -> int:
    """Most visual tokens one image can take under a pixel budget (one per 28×28 grid cell)."""
    return max(1, max_pixels // (GRID_FACTOR * GRID_FACTOR))


@dataclass(frozen=True)
class ContextNeed:
    """Context tokens one inspection takes: images at the budget's top, the prompt, the answer."""

    images: int
    tokens_per_image: int
    prompt_tokens: int
    answer_tokens: int
    prompt_counted: bool  # False: the prompt's size is an upper bound (the manifest did not record it)

    @property
    def total(self) -> int:
        return self.images * self.tokens_per_image + self.prompt_tokens + self.answer_tokens

    def describe(self) -> str:
        how = "" if self.prompt_counted else " (upper bound)"
        return (
            f"{self.images} image(s) × {self.tokens_per_image} tokens + {self.prompt_tokens} prompt tokens{how} "
            f"+ {self.answer_tokens} answer tokens = {self.total}"
        )


def context_needed(
    manifest: ModelManifest, *, images: int, max_tokens: int, product: str | None = None,
    prompt_version: str | None = None,
) -> ContextNeed:
    """The context one inspection needs with this model: `images` images, a `max_tokens` answer.

    The prompt is the manifest's counted `prompt_tokens` plus the product name's bytes (byte-level
    BPE never makes more tokens than bytes); an older manifest without the count gets an upper
    bound from the prompt text's bytes.
    """
    version = prompt_version or manifest.prompt_version
    name_bytes = len(product.strip().encode("utf-8")) if product and product.strip() else 0
    uses = 2 if images > 1 else 1  # the product is named twice in the reference form
    if manifest.prompt_tokens is not None:
        prompt, counted = manifest.prompt_tokens + uses * name_bytes, True
    else:
        text = prompt_text(version, product=product, reference=images > 1)
        prompt, counted = len(text.encode("utf-8")) + TEMPLATE_TOKEN_BOUND + 4 * images, False
    return ContextNeed(images, image_tokens(manifest.max_pixels), prompt, max_tokens, counted)


def read_manifest(model_dir: str | Path) -> ModelManifest:
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest; export the model with adfm-export")
    try:
        return ModelManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ManifestError(f"{path}: not a valid adfm manifest: {exc}") from exc


def load_model_dir(model_dir: str | Path, check_hashes: bool = True) -> ModelManifest:
    """Read and check a model directory: every listed file present, right size, right sha256."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ManifestError(f"model directory not found: {model_dir}")
    manifest = read_manifest(model_dir)
    for role in ("model", "mmproj"):
        manifest.file(role)
    for entry in manifest.files:
        f = model_dir / entry.path
        if not f.is_file():
            raise ManifestError(f"{f}: listed in {MANIFEST_NAME} but missing")
        size = f.stat().st_size
        if size != entry.size:
            raise ManifestError(f"{f}: size {size} bytes, manifest says {entry.size}")
        if check_hashes:
            digest = sha256_file(f)
            if digest != entry.sha256:
                raise ManifestError(f"{f}: sha256 {digest[:16]}… does not match the manifest's {entry.sha256[:16]}…")
    return manifest


def write_manifest(manifest: ModelManifest, model_dir: str | Path) -> Path:
    """Write manifest.json atomically (temporary file, then rename)."""
    # readable by the station's service user like the GGUF files beside it (a temp file alone is 0600)
    return write_atomic(Path(model_dir) / MANIFEST_NAME, manifest.model_dump_json(indent=2), mode=0o644)
