"""Load the base Qwen2.5-VL checkpoint and merge a LoRA adapter into its weights (peft).

Everything is local: a missing directory or file is a clear error, never a hub lookup. An adapter
trained on another base is refused before any weight is changed: its recorded base must not be a
different checkpoint, every adapter tensor must land on a module of this base, with its shape.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adfm.manifest import ADAPTER_WEIGHT_FILES, adapter_identity, checkpoint_identity, sha256_file

from .errors import ExportError

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class MergedModel:
    """The model to export (LoRA merged when one was given), its processor and identities."""

    model: Any  # transformers Qwen2_5_VLForConditionalGeneration, eval mode, no adapter layers
    processor: Any  # Qwen2_5_VLProcessor of the base: tokenizer, chat template, image settings
    base_dir: Path
    adapter_dir: Path | None
    base_identity: str
    adapter_identity: str | None

    @property
    def config(self) -> Any:
        return self.model.config


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


def check_base_dir(base_dir: str | Path) -> Path:
    """A local Qwen2.5-VL checkpoint: config, weights, tokenizer and image processor present."""
    base = Path(base_dir)
    if not base.is_dir():
        raise ExportError(f"base model directory not found: {base}")
    config_path = base / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{base}: no config.json; is this a Hugging Face checkpoint directory?")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"{config_path}: model_type {model_type!r} is not supported; adfm exports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if not any(base.glob("*.safetensors")) and not any(base.glob("pytorch_model*.bin")):
        raise ExportError(f"{base}: no weights (*.safetensors or pytorch_model*.bin)")
    if not (base / "tokenizer.json").is_file():
        raise ExportError(f"{base}: no tokenizer.json (a fast byte-level BPE tokenizer is needed for GGUF)")
    if not (base / "preprocessor_config.json").is_file() and not (base / "processor_config.json").is_file():
        raise ExportError(f"{base}: no preprocessor_config.json or processor_config.json (image processor)")
    return base


#: Files adfm writes beside a checkpoint it built with random weights (the tiny model, benchmark shapes).
RANDOM_WEIGHT_MARKERS = ("adfm_tiny.json", "adfm_bench_model.json")


def random_weight_marker(base_dir: str | Path) -> Path | None:
    """The marker file saying `base_dir` holds random weights, or None for a real checkpoint.

    Random logits are nearly flat, so quantization flips many near-ties: such a model is no guide to
    quantized bounds, and the export's verification skips them for it (with a note).
    """
    for name in RANDOM_WEIGHT_MARKERS:
        path = Path(base_dir) / name
        if path.is_file():
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("random_weights") is True:
                    return path
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                continue
    return None


def check_adapter_dir(adapter_dir: str | Path, base: Path) -> Path:
    """A local LoRA adapter made for this base (as far as its recorded base tells)."""
    adapter = Path(adapter_dir)
    if not adapter.is_dir():
        raise ExportError(f"adapter directory not found: {adapter}")
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise ExportError(f"{adapter}: no adapter_config.json; is this a PEFT adapter directory?")
    if not any((adapter / n).is_file() for n in ADAPTER_WEIGHT_FILES):
        raise ExportError(f"{adapter}: no adapter weights ({' or '.join(ADAPTER_WEIGHT_FILES)})")
    config = _read_json(config_path)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ExportError(f"{config_path}: peft_type {config.get('peft_type')!r}; only LoRA adapters merge")
    recorded = config.get("base_model_name_or_path")
    if recorded:
        recorded_dir = Path(str(recorded))
        if not recorded_dir.is_absolute():
            recorded_dir = (adapter / recorded_dir) if (adapter / recorded_dir).is_dir() else recorded_dir
        same_dir = recorded_dir.is_dir() and recorded_dir.resolve() == base.resolve()
        if (
            not same_dir
            and (recorded_dir / "config.json").is_file()
            and sha256_file(recorded_dir / "config.json") != sha256_file(base / "config.json")
        ):
            raise ExportError(
                f"{config_path}: the adapter was trained on {recorded_dir}, whose config.json differs "
                f"from the base {base}; it is an adapter for another base model"
            )
    return adapter


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def _apply_adapter(model: Any, adapter: Path) -> Any:
    """Attach the adapter's weights, refusing any that do not fit this base, and merge them."""
    from peft import PeftConfig, PeftModel, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    try:
        peft_config = PeftConfig.from_pretrained(str(adapter))
    except (ValueError, TypeError, OSError) as exc:
        raise ExportError(f"{adapter / 'adapter_config.json'}: not a usable LoRA config: {exc}") from exc
    peft_config.inference_mode = True
    try:
        with warnings.catch_warnings():  # transformers' deprecation notes about peft's own calls
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = PeftModel(model, peft_config)
    except ValueError as exc:  # e.g. "Target modules {...} not found in the base model"
        raise ExportError(f"{adapter}: the adapter does not fit base model: {exc}") from exc
    weights = load_peft_weights(str(adapter), device="cpu")
    try:
        result = set_peft_model_state_dict(peft_model, weights)
    except RuntimeError as exc:  # size mismatch: the adapter was made for another architecture size
        first = str(exc).split("\n\t")[:3]
        raise ExportError(
            f"{adapter}: adapter weights do not match the base model's shapes (an adapter for another "
            f"base?): {' '.join(first)}"
        ) from exc
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    missing = [k for k in result.missing_keys if "lora_" in k]
    if unexpected or missing:
        sample = (unexpected or missing)[:3]
        raise ExportError(
            f"{adapter}: {len(unexpected)} adapter tensors have no module in the base model and "
            f"{len(missing)} adapter modules have no weights (an adapter for another base?), e.g. {sample}"
        )
    return peft_model.merge_and_unload()


def load_merged(
    base_dir: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    dtype: str = "float32",
) -> MergedModel:
    """Load the base (and merge the adapter); float32 by default so the merge itself adds no rounding."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = check_base_dir(base_dir)
    adapter = check_adapter_dir(adapter_dir, base) if adapter_dir is not None else None
    torch_dtype = _torch_dtype(dtype)
    try:
        processor = AutoProcessor.from_pretrained(str(base), local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(
            str(base), dtype=torch_dtype, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ExportError(f"{base}: cannot load the checkpoint: {exc}") from exc
    model.eval()
    if adapter is not None:
        model = _apply_adapter(model, adapter).eval()
    return MergedModel(
        model=model,
        processor=processor,
        base_dir=base,
        adapter_dir=adapter,
        base_identity=checkpoint_identity(base),
        adapter_identity=adapter_identity(adapter) if adapter is not None else None,
    )


def save_merged(merged: MergedModel, out_dir: str | Path) -> Path:
    """Save the merged HF checkpoint with the base's processor and chat template (for HF evaluation)."""
    import shutil

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; save the merged checkpoint to a new directory")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.model.save_pretrained(str(tmp), safe_serialization=True)
        merged.processor.save_pretrained(str(tmp))
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.replace(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"cannot save the merged checkpoint to {out}: {exc}") from exc
    return out
