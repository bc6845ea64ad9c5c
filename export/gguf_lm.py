"""Write the language model half of Qwen2.5-VL as a GGUF that stock llama.cpp loads (`qwen2vl`).

Metadata and tensor names come from the `gguf` package (constants, TensorNameMap); the facts about
what llama.cpp expects (architecture `qwen2vl`, M-RoPE sections padded to four, a byte-level BPE
vocabulary with the `qwen2` pre-tokenizer) were read from its loader. The pre-tokenizer is set
here rather than detected by hashing, and the export's verification checks that llama.cpp then
tokenizes the project's prompts exactly as the HF tokenizer does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError
from .gguf_common import PlannedTensor, as_float32, new_writer, state_items, write_streamed
from .merge import MergedModel

#: llama.cpp's name for Qwen2's pre-tokenizer split regex, which Qwen2.5-VL's tokenizer uses.
QWEN2_PRE_TOKENIZER = "qwen2"
LM_TYPES = ("f32", "f16")
SUPPORTED_ROPE_TYPES = ("default", "mrope")


def text_config(model: Any) -> Any:
    cfg = model.config
    return getattr(cfg, "text_config", cfg)


def _rope(tc: Any) -> tuple[float, list[int]]:
    params = getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ExportError(f"config rope type {rope_type!r} is not supported (expected one of {SUPPORTED_ROPE_TYPES})")
    theta = params.get("rope_theta", getattr(tc, "rope_theta", None))
    sections = list(params.get("mrope_section") or [])
    if theta is None or not sections:
        raise ExportError("config lacks rope_theta or mrope_section; not a Qwen2.5-VL text config")
    head_dim = tc.hidden_size // tc.num_attention_heads
    if sum(sections) * 2 != head_dim:
        raise ExportError(f"mrope_section {sections} does not cover head dim {head_dim} (sum × 2 must equal it)")
    return float(theta), [*sections, 0, 0, 0, 0][:4]


def vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and GGUF token types for ids 0..vocab_size-1 (holes become unused pads)."""
    import gguf

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ExportError(f"tokenizer has id {max(vocab.values())} but the model's vocab_size is {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _check_tokenizer(base_dir: Path) -> None:
    """Only a byte-level BPE tokenizer maps onto llama.cpp's `gpt2` tokenizer model."""
    import json

    data = json.loads((base_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model_type = (data.get("model") or {}).get("type")
    if model_type != "BPE":
        raise ExportError(f"{base_dir / 'tokenizer.json'}: tokenizer model {model_type!r}; Qwen2.5-VL uses BPE")
    if "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        raise ExportError(f"{base_dir / 'tokenizer.json'}: not a byte-level BPE pre-tokenizer")


def plan_tensors(model: Any, out_type: str) -> list[PlannedTensor]:
    """Every language-model tensor with its GGUF name and type; an unmapped tensor is an error."""
    import gguf

    tc = text_config(model)
    tied = bool(getattr(tc, "tie_word_embeddings", False) or getattr(model.config, "tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2VL, tc.num_hidden_layers)
    weight_type = gguf.GGMLQuantizationType.F16 if out_type == "f16" else gguf.GGMLQuantizationType.F32
    planned = []
    for name, value in state_items(model):
        if name.startswith("visual."):
            continue
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd as the output matrix when output.weight is absent
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"cannot map language-model tensor {name!r} to a GGUF name")
        qtype = weight_type if value.dim() >= 2 else gguf.GGMLQuantizationType.F32
        planned.append(PlannedTensor(gguf_name, qtype, tuple(value.shape), lambda v=value: as_float32(v)))
    return planned


def write_language_model(
    merged: MergedModel,
    path: Path,
    out_type: str = "f16",
    on_tensor: Callable[[str], None] | None = None,
) -> int:
    """Write the language model GGUF to `path`; returns the number of tensors written."""
    import gguf

    if out_type not in LM_TYPES:
        raise ExportError(f"language model type {out_type!r} is not one of {LM_TYPES}")
    model = merged.model
    tc = text_config(model)
    theta, sections = _rope(tc)
    _check_tokenizer(merged.base_dir)
    tokenizer = merged.processor.tokenizer
    chat_template = getattr(merged.processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
    if not chat_template:
        raise ExportError(f"{merged.base_dir}: the processor has no chat template")
    tensors = plan_tensors(model, out_type)

    w = new_writer(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2VL])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"adfm {merged.base_dir.name}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if out_type == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_block_count(tc.num_hidden_layers)
    w.add_context_length(tc.max_position_embeddings)
    w.add_embedding_length(tc.hidden_size)
    w.add_feed_forward_length(tc.intermediate_size)
    w.add_head_count(tc.num_attention_heads)
    w.add_head_count_kv(tc.num_key_value_heads)
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_sections(sections)
    w.add_layer_norm_rms_eps(float(tc.rms_norm_eps))

    tokens, types = vocabulary(tokenizer, tc.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(QWEN2_PRE_TOKENIZER)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(merged.base_dir, load_merges=True, n_vocab=tc.vocab_size)
    if not special.merges:
        raise ExportError(f"{merged.base_dir / 'tokenizer.json'}: no BPE merges found")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ExportError(f"{merged.base_dir}: the tokenizer has no eos token")
    special.special_token_ids["eos"] = int(eos)
    if tokenizer.pad_token_id is not None:
        special.special_token_ids["pad"] = int(tokenizer.pad_token_id)
    # Qwen's tokenizer adds no BOS/EOS around a prompt; say so, or llama.cpp would add them.
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.chat_template = chat_template
    special.add_to_gguf(w, quiet=True)

    write_streamed(w, tensors, on_tensor)
    return len(tensors)


def language_model_nbytes(model: Any, out_type: str) -> int:
    """Bytes the language model's tensors take in `out_type` (for the free-space check)."""
    per = 2 if out_type == "f16" else 4
    return sum(
        int(np.prod(v.shape)) * (per if v.dim() >= 2 else 4)
        for n, v in state_items(model)
        if not n.startswith("visual.")
    )
