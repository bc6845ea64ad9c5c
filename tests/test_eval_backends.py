"""Choosing and describing a backend from a model directory, without loading weights."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adfm.manifest import FileEntry, ModelManifest, sha256_file, write_manifest
from adfm.trainer.evaluation.backends import (
    BackendError,
    GenerationSettings,
    GgufBackend,
    _item_seed,
    detect_kind,
    open_backend,
    resolve_hf_paths,
)


def _checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _adapter(path: Path, base: str | None = None, record: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    if record is not None:
        (path / "adfm_run.json").write_text(json.dumps(record))
    return path


def test_kind_is_told_by_the_directory(tmp_path):
    assert detect_kind(_checkpoint(tmp_path / "hf")) == "transformers"
    assert detect_kind(_adapter(tmp_path / "lora")) == "transformers"
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "manifest.json").write_text("{}")
    assert detect_kind(tmp_path / "gguf") == "gguf"
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="neither an exported GGUF model"):
        detect_kind(tmp_path / "empty")
    with pytest.raises(BackendError, match="model directory not found"):
        detect_kind(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BackendError, match="not a directory"):
        detect_kind(tmp_path / "file")


def test_an_adapter_given_as_model_finds_its_base(tmp_path):
    base = _checkpoint(tmp_path / "base")
    by_record = _adapter(tmp_path / "a1", base="elsewhere/not-local", record={"base_model": str(base)})
    assert resolve_hf_paths(by_record, None) == (base, by_record)
    by_config = _adapter(tmp_path / "a2", base=str(base))
    assert resolve_hf_paths(by_config, None) == (base, by_config)
    remote = _adapter(tmp_path / "a3", base="Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.raises(BackendError, match=r"not a local checkpoint directory.*--adapter"):
        resolve_hf_paths(remote, None)
    with pytest.raises(BackendError, match="give the base checkpoint as --model"):
        resolve_hf_paths(by_config, by_record)
    assert resolve_hf_paths(base, by_record) == (base, by_record)


def test_generation_settings_are_checked():
    assert GenerationSettings().greedy
    assert not GenerationSettings(temperature=0.7).greedy
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"temperature": float("nan")}, {"top_p": 0.0}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)


def test_item_seeds_depend_on_the_item_not_the_order():
    assert _item_seed(0, ("a", "inspect")) == _item_seed(0, ("a", "inspect"))
    assert _item_seed(0, ("a", "inspect")) != _item_seed(0, ("b", "inspect"))
    assert _item_seed(0, ("a", "inspect")) != _item_seed(1, ("a", "inspect"))


def _gguf_dir(path: Path) -> Path:
    path.mkdir()
    files = []
    for name, role in (("model.gguf", "model"), ("mmproj.gguf", "mmproj")):
        (path / name).write_bytes(b"GGUF" + name.encode())
        size = (path / name).stat().st_size
        files.append(FileEntry(path=name, role=role, sha256=sha256_file(path / name), size=size))
    write_manifest(ModelManifest(files=files, base_model="b@0", prompt_version="multi-stage-v1", min_pixels=12544,
                                 max_pixels=50176, adfm_version="0", created_at=datetime.now(UTC)), path)
    return path


def test_gguf_refuses_a_pixel_budget_other_than_its_manifests(tmp_path):
    model = _gguf_dir(tmp_path / "gguf")
    with pytest.raises(BackendError, match="--max-pixels 100352 differs from the manifest's 50176"):
        GgufBackend(model, max_pixels=100352)
    with pytest.raises(BackendError, match="adapter merged at export"):
        open_backend(model, tmp_path / "lora")
    with pytest.raises(BackendError, match="is a gguf model directory, not one for the transformers backend"):
        open_backend(model, backend="transformers")
    (model / "model.gguf").write_bytes(b"changed")
    with pytest.raises(BackendError, match=r"model\.gguf: size"):
        GgufBackend(model)


def test_gguf_context_fits_two_images_the_prompt_and_the_answer(tiny_gguf_dir: Path):
    from adfm.manifest import read_manifest

    manifest = read_manifest(tiny_gguf_dir)
    n = GgufBackend.context_for(manifest, 512)
    assert manifest.prompt_tokens is not None  # counted at export with the model's tokenizer
    assert n % 256 == 0 and n >= 2 * 64 + manifest.prompt_tokens + 512 + 256


def test_gguf_refuses_a_context_that_cannot_hold_a_query(tiny_gguf_dir: Path):
    with pytest.raises(BackendError, match=r"--n-ctx 256 cannot hold a query: 2 image\(s\) × 64 tokens \+ \d+ prompt"):
        GgufBackend(tiny_gguf_dir, n_ctx=256, max_new_tokens=512)
