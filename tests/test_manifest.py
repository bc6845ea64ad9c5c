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
