"""The tiny model + a LoRA adapter through `adfm-export --quant q4_k_m`: files, manifest, GGUF metadata.

The export itself runs once per session (the `tiny_gguf_dir` fixture, built through the CLI).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adfm.manifest import MANIFEST_NAME, load_model_dir, sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.needs_llama, pytest.mark.needs_torch]


def _field(reader, key: str):
    """A scalar or string metadata value from a GGUFReader."""
    f = reader.fields[key]
    part = f.parts[f.data[0]]
    return bytes(part).decode() if part.dtype.kind == "u" and part.dtype.itemsize == 1 else part[0].item()


def test_model_dir_holds_exactly_the_manifest_files(tiny_gguf_dir: Path) -> None:
    manifest = load_model_dir(tiny_gguf_dir)
    names = sorted(p.name for p in tiny_gguf_dir.iterdir())
    assert names == sorted([MANIFEST_NAME, manifest.file("model").path, manifest.file("mmproj").path])
    for entry in manifest.files:
        path = tiny_gguf_dir / entry.path
        assert entry.size == path.stat().st_size
        assert entry.sha256 == sha256_file(path)
    assert manifest.file("model").path == "model-q4_k_m.gguf"
    assert manifest.file("model").quant == "q4_k_m"
    assert manifest.file("mmproj").quant == "f16"


def test_manifest_records_identity_budget_and_prompt(tiny_gguf_dir: Path, tiny_model_dir: Path) -> None:
    manifest = load_model_dir(tiny_gguf_dir)
    tiny = json.loads((tiny_model_dir / "adfm_tiny.json").read_text())
    assert (manifest.min_pixels, manifest.max_pixels) == (tiny["min_pixels"], tiny["max_pixels"])
    assert manifest.prompt_version == "multi-stage-v1"
    assert manifest.base_model.startswith(f"{tiny_model_dir.name}@")
    assert manifest.adapter is not None and manifest.adapter.startswith(f"{tiny_gguf_dir.name}-lora@")
    assert manifest.model_id.startswith("model-q4_k_m@")


def test_verification_recorded_f16_parity_and_same_image_tokens(tiny_gguf_dir: Path) -> None:
    verification = load_model_dir(tiny_gguf_dir).verification
    assert verification["passed"] is True
    checks = {c["kind"]: c for c in verification["checks"]}
    assert [c["pair"] for c in verification["checks"]] == ["f16 + mmproj f16", "q4_k_m + mmproj f16"]
    f16 = checks["float parity"]
    assert f16["passed"] and f16["max_relative_logit_error"] < 0.02
    # the projector's image embeddings match HF's vision tower (measured 0.25 % of their spread)
    assert f16["max_vision_relative_error"] < 0.02
    # f16 reproduces HF greedy decoding; a random model may flip a near-tie late in an answer.
    assert f16["min_free_running_prefix"] >= 8
    assert f16["token_agreement"] >= 0.9
    q4 = checks["quantized bounds"]
    for case in f16["cases"] + q4["cases"]:
        assert case["prompt_match"], case["case"]
        # llama.cpp used as many visual tokens as HF: it did not resize the grid image again
        assert case["image_tokens_hf"] == case["image_tokens_gguf"], case["case"]
    for case in f16["cases"]:
        assert all(m["near_tie"] for m in case["mismatches"]), case
    # every case was also fed the fixed answer up to its decision: more steps than the greedy answers
    assert verification["fixed_answer_tokens"] > 8
    assert q4["steps_compared"] == sum(c["tokens_compared"] for c in q4["cases"]) + 8 * verification[
        "fixed_answer_tokens"]
    # the tiny model is random-weight: the q4_k_m bounds are measured and reported, not applied
    assert verification["random_weights"].endswith("adfm_tiny.json")
    assert q4["bounds"] == {"max_mean_kld": 0.1, "min_same_top": 0.85, "applied": False}
    assert any("random-weight" in n for n in q4["notes"])
    assert f16["same_top"] > q4["same_top"] and f16["mean_kld"] < q4["mean_kld"]


def test_language_model_gguf_is_a_qwen2vl_with_qwen2_pretokenizer(tiny_gguf_dir: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(tiny_gguf_dir / "model-q4_k_m.gguf"))
    assert _field(reader, "general.architecture") == "qwen2vl"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_K
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert "tokenizer.chat_template" in reader.fields


def test_mmproj_gguf_is_a_qwen25vl_merger(tiny_gguf_dir: Path, tiny_model_dir: Path) -> None:
    import gguf

    config = json.loads((tiny_model_dir / "config.json").read_text())
    vision = config["vision_config"]
    reader = gguf.GGUFReader(str(tiny_gguf_dir / "mmproj-f16.gguf"))
    assert _field(reader, "clip.projector_type") == "qwen2.5vl_merger"
    assert _field(reader, "clip.vision.block_count") == vision["depth"]
    assert _field(reader, "clip.vision.n_wa_pattern") == vision["fullatt_block_indexes"][0] + 1
    assert _field(reader, "clip.vision.projection_dim") == config["text_config"]["hidden_size"]
    names = {t.name: t for t in reader.tensors}
    expected = {"v.patch_embd.weight", "v.patch_embd.weight.1", "mm.0.weight", "mm.2.weight", "v.post_ln.weight"}
    assert expected <= set(names)
    # the fused qkv was split into three hidden-sized projections
    assert [int(x) for x in names["v.blk.0.attn_q.weight"].shape] == [vision["hidden_size"], vision["hidden_size"]]
