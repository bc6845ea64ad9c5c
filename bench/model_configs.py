"""Qwen2.5-VL configurations for speed tests, and random-weight checkpoints built from them offline.

Speed and memory do not depend on weight values, so a random-weight model with a released model's
exact shapes does the same work as the released model. The 7B and 3B values below are written from
the published `config.json` files of Qwen2.5-VL-7B-Instruct and Qwen2.5-VL-3B-Instruct (the 3B file
lists only the vision fields that differ from the vision defaults; those defaults are spelled out
here). `tiny` is the toy size the CPU test runs.

The tokenizer is adfm's tiny test tokenizer (a few hundred tokens; Qwen's special tokens): prompt
text is a few percent of a prompt next to the image tokens, and the model keeps the released vocabulary
size, so the embedding, the LM head and sampling cost what they cost in the released model. Sampled
ids the tokenizer does not know decode to nothing, which the rewards read as an unreadable answer.
"""

from __future__ import annotations

import gc
import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MARKER = "adfm_bench_model.json"


@dataclass(frozen=True)
class VisionSpec:
    """Qwen2.5-VL's vision tower (ViT with window attention, 2×2 patch merger)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    tokens_per_second: int = 2


@dataclass(frozen=True)
class ModelSpec:
    """A Qwen2.5-VL size: language model shapes, the vision tower, and where the values come from."""

    name: str
    source: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    vision: VisionSpec = field(default_factory=VisionSpec)
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 128_000
    #: parameters of the released checkpoint (the total its model page lists: 8.29B, 3.75B); None: not released
    published_parameters: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-vl-7b",
            source="Qwen/Qwen2.5-VL-7B-Instruct config.json (published values)",
            hidden_size=3584,
            num_layers=28,
            num_heads=28,
            num_kv_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
            tie_word_embeddings=False,
            vision=VisionSpec(),
            published_parameters=8_292_166_656,
        ),
        ModelSpec(
            name="qwen2.5-vl-3b",
            source="Qwen/Qwen2.5-VL-3B-Instruct config.json (published values; vision defaults spelled out)",
            hidden_size=2048,
            num_layers=36,
            num_heads=16,
            num_kv_heads=2,
            intermediate_size=11008,
            vocab_size=151936,
            tie_word_embeddings=True,
            vision=VisionSpec(),
            published_parameters=3_754_622_976,
        ),
        ModelSpec(
            name="tiny",
            source="toy size for the CPU test (the tiny test model's proportions)",
            hidden_size=256,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=512,
            vocab_size=1024,
            tie_word_embeddings=False,
            vision=VisionSpec(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                              fullatt_block_indexes=(1,)),
            mrope_section=(8, 12, 12),
            max_position_embeddings=32768,
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model size {name!r}; known: {', '.join(SPECS)}") from None


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    """The ids of the Qwen special tokens the config and generation refer to, from `tokenizer`."""
    names = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
        "eos_token_id": "<|im_end|>",
        "pad_token_id": "<|endoftext|>",
    }
    vocab = tokenizer.get_vocab()
    missing = [tok for tok in names.values() if tok not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks Qwen's special tokens {missing}")
    return {key: int(vocab[tok]) for key, tok in names.items()}


def hf_config(spec: ModelSpec, token_ids: dict[str, int]) -> Any:
    """A transformers `Qwen2_5_VLConfig` with `spec`'s shapes and the given special-token ids."""
    from transformers import Qwen2_5_VLConfig

    if spec.hidden_size % spec.num_heads:
        raise ValueError(f"{spec.name}: hidden_size {spec.hidden_size} is not divisible by {spec.num_heads} heads")
    if sum(spec.mrope_section) * 2 != spec.head_dim:
        raise ValueError(f"{spec.name}: mrope sections {spec.mrope_section} must sum to head_dim/2 = "
                         f"{spec.head_dim // 2}")
    if max(token_ids.values()) >= spec.vocab_size:
        raise ValueError(f"{spec.name}: vocab_size {spec.vocab_size} is smaller than the tokenizer's special ids")
    v = spec.vision
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": spec.vocab_size,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "max_position_embeddings": spec.max_position_embeddings,
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta,
                                "mrope_section": list(spec.mrope_section)},
            "bos_token_id": token_ids["pad_token_id"],
            "eos_token_id": token_ids["eos_token_id"],
            "pad_token_id": token_ids["pad_token_id"],
            "tie_word_embeddings": spec.tie_word_embeddings,
        },
        vision_config={
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size,
            "window_size": v.window_size,
            "out_hidden_size": spec.hidden_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "tokens_per_second": v.tokens_per_second,
            "hidden_act": "silu",
        },
        image_token_id=token_ids["image_token_id"],
        video_token_id=token_ids["video_token_id"],
        vision_start_token_id=token_ids["vision_start_token_id"],
        vision_end_token_id=token_ids["vision_end_token_id"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def _test_tokenizer() -> Any:
    from adfm.trainer.tiny_model import build_tokenizer

    return build_tokenizer()


def count_parameters(spec: ModelSpec) -> int:
    """Unique parameters of a model with `spec`'s shapes, counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    ids = {"image_token_id": 0, "video_token_id": 1, "vision_start_token_id": 2, "vision_end_token_id": 3,
           "eos_token_id": 4, "pad_token_id": 5}
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(hf_config(spec, ids))
    return sum(p.numel() for p in model.parameters())


def build_random_checkpoint(
    spec: ModelSpec,
    path: str | Path,
    *,
    min_pixels: int,
    max_pixels: int,
    dtype: str = "bfloat16",
    device: str | None = None,
    processor_from: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Write a random-weight checkpoint with `spec`'s shapes to `path` (reused when already built alike).

    The processor (tokenizer, chat template, image processor with the given pixel budget) comes from
    adfm's tiny test checkpoint at `processor_from`, or from one built in a temporary directory.
    `device` is where weights are initialised (an accelerator initialises billions of parameters in
    seconds); the files are the same either way.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from adfm.trainer.modeling import load_processor, torch_dtype

    path = Path(path)
    params = {"spec": asdict(spec), "digest": spec.digest(), "dtype": dtype, "seed": seed,
              "min_pixels": min_pixels, "max_pixels": max_pixels, "random_weights": True}
    marker = path / MARKER
    if marker.is_file() and (path / "config.json").is_file():
        try:
            if json.loads(marker.read_text()) == json.loads(json.dumps(params)):  # tuples are lists in JSON
                return path
        except json.JSONDecodeError:
            pass  # a damaged marker: rebuild
    with tempfile.TemporaryDirectory(prefix="adfm-bench-processor-") as tmp:
        source = Path(processor_from) if processor_from is not None else None
        if source is None:
            from adfm.trainer.tiny_model import build_tiny_qwen25vl

            source = build_tiny_qwen25vl(Path(tmp) / "tiny", min_pixels=min_pixels, max_pixels=max_pixels)
        processor = load_processor(source, min_pixels, max_pixels)
        ids = special_token_ids(processor.tokenizer)
        config = hf_config(spec, ids)
        torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch_dtype(dtype))
        model.generation_config = GenerationConfig(
            eos_token_id=[ids["eos_token_id"], ids["pad_token_id"]], pad_token_id=ids["pad_token_id"], do_sample=False
        )
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        processor.save_pretrained(path)
    marker.write_text(json.dumps(params, indent=2))
    return path
