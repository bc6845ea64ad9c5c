"""A tiny random-weight Qwen2.5-VL checkpoint, built offline.

No weights can be downloaded on the build machines, so tests, the demo and CPU benchmarks build a
model with Qwen2.5-VL's architecture and conventions at toy size: a byte-level BPE tokenizer
trained here with Qwen2's pre-tokenizer and special tokens, a Qwen-style chat template, the real
processor classes and a random-weight model. It saves like a real checkpoint, so every loader in
adfm reads it through the same code as a real one.

Sizes: hidden width 256 (a multiple of 256, so k-quants apply to real tensors at export), two
decoder layers, a two-block vision tower.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from adfm.geometry import GRID_FACTOR
from adfm.protocol import _SYSTEM, PROMPT_VERSIONS, format_response

#: Qwen2's pre-tokenizer split pattern (contractions, letters, single digits, punctuation runs,
#: newlines, spaces) — the pattern llama.cpp knows as the `qwen2` pre-tokenizer.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Qwen's special tokens, in their canonical order (ids follow the learned vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen chat format: `<|im_start|>role\n…<|im_end|>\n`, images as vision_start/image_pad/vision_end.
#: Accepts HF image blocks and OpenAI-style image_url blocks (llama.cpp renders the latter).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

#: Small pixel budget for the tiny model: 112×112 … 224×224 (16–64 visual tokens per image).
TINY_MIN_PIXELS = 4 * GRID_FACTOR * 4 * GRID_FACTOR
TINY_MAX_PIXELS = 8 * GRID_FACTOR * 8 * GRID_FACTOR


def _corpus(seed: int) -> list[str]:
    """Text the tokenizer learns merges from: the project's prompts and answers, plus plain prose."""
    rng = random.Random(seed)
    texts = [_SYSTEM]
    for pv in PROMPT_VERSIONS.values():
        for product in ("part", "washer", "tile", "pill", "fabric", "bottle", "screw"):
            texts += [pv.user_text(product), pv.user_text(product, reference=True)]
    words = ["scratch", "spot", "crack", "missing", "piece", "dent", "stain", "contamination", "region",
             "normal", "defect", "the", "a", "of"]
    for _ in range(400):
        boxes = [
            sorted(rng.sample(range(0, 224), 2)) + sorted(rng.sample(range(0, 224), 2))
            for _ in range(rng.randint(0, 3))
        ]
        boxes = [[b[0], b[2], b[1], b[3]] for b in boxes]
        version = rng.choice(list(PROMPT_VERSIONS))
        texts.append(
            format_response(
                bool(boxes), boxes, [rng.choice(words) for _ in boxes], version,
                think=" ".join(rng.choice(words) for _ in range(8)),
                rethink=" ".join(rng.choice(words) for _ in range(8)),
            )
        )
    return texts


def build_tokenizer(vocab_size: int = 2048, seed: int = 0):
    """Train a byte-level BPE tokenizer with Qwen2's pre-tokenizer and Qwen's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_qwen25vl(
    path: str | Path,
    *,
    hidden_size: int = 256,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    vision_depth: int = 2,
    vision_hidden_size: int = 128,
    vision_heads: int = 2,
    vocab_size: int = 2048,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    seed: int = 0,
) -> Path:
    """Write a random-weight Qwen2.5-VL checkpoint directory at `path` and return it.

    The directory loads offline with `AutoModelForImageTextToText.from_pretrained(path)` and
    `AutoProcessor.from_pretrained(path)`. Same seed, same weights and tokenizer.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    head_dim = hidden_size // num_heads
    if head_dim % 8:
        raise ValueError(f"head dim {head_dim} must be a multiple of 8 for the multimodal rope sections")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(vocab_size=vocab_size, seed=seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model_vocab = -(-len(tokenizer) // 64) * 64

    # Multimodal rope splits head_dim/2 frequencies into (temporal, height, width) as 1:1.5:1.5,
    # the same proportions as the released models' [16, 24, 24] at head dim 128.
    half = head_dim // 2
    t_sec = half // 4
    hw_sec = (half - t_sec) // 2
    mrope = [t_sec, hw_sec, half - t_sec - hw_sec]

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": model_vocab,
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_heads": vision_heads,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [vision_depth - 1],
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(path, safe_serialization=True)

    # the image and the video processor share Qwen2.5-VL's patching and the CLIP normalisation
    pixels = {
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
    }
    image_processor = Qwen2VLImageProcessor(**pixels)
    video_processor = Qwen2VLVideoProcessor(**pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    (path / "adfm_tiny.json").write_text(
        json.dumps({"kind": "adfm-tiny-qwen25vl", "seed": seed, "min_pixels": min_pixels,
                    "max_pixels": max_pixels, "random_weights": True}, indent=2)
    )
    return path
