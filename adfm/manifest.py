"""The exported model directory's manifest: what `adfm-export` wrote and what the line checks.

A model directory holds `manifest.json`, a GGUF language model and a GGUF multimodal projector.
The appliance and the GGUF evaluation backend load a directory only through `load_model_dir`, which
refuses files that do not match their recorded size and sha256.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adfm.files import write_atomic

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


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
    return write_atomic(Path(model_dir) / MANIFEST_NAME, manifest.model_dump_json(indent=2))
