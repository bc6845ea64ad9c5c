"""The model directory manifest: what is written is what is checked; tampering is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adfm.manifest import FileEntry, ManifestError, ModelManifest, load_model_dir, sha256_file, write_manifest


def _model_dir(tmp_path):
    (tmp_path / "model-q4_k_m.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    (tmp_path / "mmproj-f16.gguf").write_bytes(b"GGUF" + b"\1" * 50)
    files = [
        FileEntry(path=p.name, role=role, sha256=sha256_file(p), size=p.stat().st_size, quant=q)
        for p, role, q in [
            (tmp_path / "model-q4_k_m.gguf", "model", "q4_k_m"),
            (tmp_path / "mmproj-f16.gguf", "mmproj", "f16"),
        ]
    ]
    m = ModelManifest(
        files=files, base_model="tiny@123", prompt_version="multi-stage-v1", min_pixels=12544,
        max_pixels=50176, adfm_version="0.1.0", created_at=datetime.now(UTC),
    )
    write_manifest(m, tmp_path)
    return m


def test_round_trip_and_model_id(tmp_path):
    m = _model_dir(tmp_path)
    loaded = load_model_dir(tmp_path)
    assert loaded == m
    assert loaded.model_id.startswith("model-q4_k_m@")


def test_tampered_file_is_refused_naming_it(tmp_path):
    _model_dir(tmp_path)
    p = tmp_path / "mmproj-f16.gguf"
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"mmproj-f16\.gguf: sha256"):
        load_model_dir(tmp_path)


def test_truncated_missing_and_absent_manifest(tmp_path):
    _model_dir(tmp_path)
    (tmp_path / "model-q4_k_m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ManifestError, match="size 4 bytes"):
        load_model_dir(tmp_path)
    (tmp_path / "model-q4_k_m.gguf").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_model_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not a valid adfm manifest"):
        load_model_dir(tmp_path)
    with pytest.raises(ManifestError, match="not found"):
        load_model_dir(tmp_path / "nope")


def test_context_needed_adds_images_prompt_and_answer(tmp_path):
    from adfm.manifest import context_needed

    m = _model_dir(tmp_path).model_copy(update={"prompt_tokens": 300})
    need = context_needed(m, images=2, max_tokens=100)
    assert (need.tokens_per_image, need.prompt_tokens, need.total) == (64, 300, 2 * 64 + 300 + 100)
    assert need.describe() == "2 image(s) × 64 tokens + 300 prompt tokens + 100 answer tokens = 528"
    # a product name adds at most its bytes each time the prompt names it (twice with a reference)
    assert context_needed(m, images=2, max_tokens=100, product="washer").total == 528 + 2 * 6
    assert context_needed(m, images=1, max_tokens=100, product="washer").total == 64 + 300 + 6 + 100
    # without a counted prompt: an upper bound from the prompt text's bytes (never fewer tokens)
    bound = context_needed(m.model_copy(update={"prompt_tokens": None}), images=2, max_tokens=100)
    assert not bound.prompt_counted and bound.prompt_tokens > 600 and "(upper bound)" in bound.describe()


def test_run_record_is_read_from_the_adapter_or_its_run_directory(tmp_path):
    import json

    from adfm.manifest import RUN_RECORD, read_run_record

    assert read_run_record(None) == ({}, None)
    adapter = tmp_path / "run" / "final"
    adapter.mkdir(parents=True)
    assert read_run_record(adapter) == ({}, None)
    (tmp_path / "run" / RUN_RECORD).write_text(json.dumps({"preset": "adfm"}))
    assert read_run_record(adapter) == ({"preset": "adfm"}, tmp_path / "run" / RUN_RECORD)
    (adapter / RUN_RECORD).write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        read_run_record(adapter)
