"""Load a local Qwen2.5-VL checkpoint (+ optional LoRA adapter) and its processor — never from the hub.

Training, the reward-variance analysis and the transformers evaluation backend all load models
here, so every loader agrees on dtype, attention implementation, the processor's pixel budget
and which vision special tokens generation must never emit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adfm.offline import force_offline
from adfm.protocol import VISION_SPECIAL_TOKENS

_CONFIG_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")

DTYPES = ("float32", "bfloat16", "float16", "auto")
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


class ModelLoadError(RuntimeError):
    """A model or adapter directory that cannot be loaded; the message names it and says why."""


@dataclass
class LoadedModel:
    """A model ready for generation or training, with the processor that matches it."""

    model: Any
    processor: Any
    path: Path
    adapter: Path | None

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def check_model_dir(path: str | Path) -> Path:
    """A local checkpoint directory with a config.json; otherwise a clear error (no hub fallback)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(
            f"model directory not found: {p} (adfm loads local checkpoints only; copy the weights there)"
        )
    if not p.is_dir():
        raise ModelLoadError(f"model path is not a directory: {p}")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{p} has no config.json: not a transformers checkpoint directory")
    return p


def check_adapter_dir(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"LoRA adapter directory not found: {p}")
    if not (p / "adapter_config.json").is_file():
        raise ModelLoadError(f"{p} has no adapter_config.json: not a PEFT adapter directory")
    return p


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None) -> Any:
    """The checkpoint's processor, its image budget set to adfm's so pre-resized images pass unchanged."""
    from transformers import AutoProcessor

    p = check_model_dir(path)
    try:
        processor = AutoProcessor.from_pretrained(p, local_files_only=True, padding_side="left")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the processor of {p}: {exc}") from exc
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and (min_pixels or max_pixels):
        from transformers.image_utils import SizeDict

        current = image_processor.size
        image_processor.size = SizeDict(
            shortest_edge=int(min_pixels or current["shortest_edge"]),
            longest_edge=int(max_pixels or current["longest_edge"]),
        )
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"
    return processor


def load_model(
    path: str | Path,
    adapter: str | Path | None = None,
    *,
    dtype: str = "bfloat16",
    attn_implementation: str = "sdpa",
    device_map: str | dict | None = None,
    trainable_adapter: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> LoadedModel:
    """Load a local image-text-to-text checkpoint, optionally with a LoRA adapter on top.

    `attn_implementation` defaults to PyTorch SDPA (FlashAttention is not available on every GPU,
    e.g. Blackwell at the paper's time). Nothing is ever fetched from the hub.
    """
    force_offline()
    from transformers import AutoModelForImageTextToText

    p = check_model_dir(path)
    if attn_implementation not in ATTENTION:
        raise ValueError(f"unknown attention implementation {attn_implementation!r}; choose one of {ATTENTION}")
    adapter_path = check_adapter_dir(adapter) if adapter else None
    processor = load_processor(p, min_pixels, max_pixels)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            p,
            dtype=torch_dtype(dtype),
            attn_implementation=attn_implementation,
            device_map=device_map,
            local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the model in {p}: {exc}") from exc
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path, is_trainable=trainable_adapter)
    return LoadedModel(model=model, processor=processor, path=p, adapter=adapter_path)


def vision_token_ids(tokenizer: Any, config: Any = None) -> list[int]:
    """Ids of the vision special tokens known to this tokenizer (and model config), sorted.

    Works for any Qwen-VL tokenizer: tokens it does not know are skipped, and the config's image,
    video and vision start/end ids are added when given.
    """
    ids: set[int] = set()
    unk = getattr(tokenizer, "unk_token_id", None)
    vocab = tokenizer.get_vocab()
    for token in VISION_SPECIAL_TOKENS:
        tid = vocab.get(token)
        if tid is not None and tid != unk:
            ids.add(int(tid))
    if config is not None:
        for name in _CONFIG_TOKEN_IDS:
            tid = getattr(config, name, None)
            if isinstance(tid, int) and tid >= 0:
                ids.add(tid)
    return sorted(ids)


def language_model_lora_pattern(target_modules: list[str] | tuple[str, ...]) -> str:
    """A PEFT `target_modules` regex for the language model's linear layers only.

    Qwen2.5-VL's vision blocks also have gate/up/down projections; anchoring on `language_model`
    keeps the vision tower (and its merger) frozen: adfm's choice (the paper does not say which layers get LoRA).
    """
    if not target_modules:
        raise ValueError("LoRA target_modules must name at least one linear layer (e.g. q_proj)")
    names = "|".join(sorted(set(target_modules)))
    return rf".*language_model\..*\.({names})"


def image_processor_pixel_budget(processor: Any) -> tuple[int, int]:
    """An HF processor's own (min_pixels, max_pixels); ValueError when it records none.

    The export and the evaluation read a base model's budget through this one function."""
    ip = processor.image_processor
    size = getattr(ip, "size", None)
    lo = getattr(size, "shortest_edge", None) if size is not None else None
    hi = getattr(size, "longest_edge", None) if size is not None else None
    if isinstance(size, dict):
        lo, hi = size.get("shortest_edge", lo), size.get("longest_edge", hi)
    lo = lo or getattr(ip, "min_pixels", None)
    hi = hi or getattr(ip, "max_pixels", None)
    if not lo or not hi:
        raise ValueError("the base image processor records no pixel budget")
    return int(lo), int(hi)
