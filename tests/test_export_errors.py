"""Bad inputs and failures: clear errors naming the file or value, nothing left under final names."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from adfm.export import ExportError, export_model
from adfm.export.files import OutputDir
from adfm.manifest import load_model_dir

QUIET = {"progress": lambda line: None}


def _final_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_missing_base_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"base model directory not found: .*nowhere"):
        export_model(tmp_path / "nowhere", tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


def test_base_of_another_model_type_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "llama"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ExportError, match=r"model_type 'llama' is not supported"):
        export_model(base, tmp_path / "out", **QUIET)


def test_bad_options_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="quant 'q3_k' is not one of"):
        export_model(tmp_path, tmp_path / "out", quant="q3_k", **QUIET)
    with pytest.raises(ExportError, match="agreement_floor must be within"):
        export_model(tmp_path, tmp_path / "out", agreement_floor=1.5, **QUIET)
    with pytest.raises(ExportError, match="unknown prompt version 'v9'"):
        export_model(tmp_path, tmp_path / "out", prompt_version="v9", **QUIET)
    with pytest.raises(ExportError, match="mmproj type 'q4_k_m'"):
        export_model(tmp_path, tmp_path / "out", mmproj_type="q4_k_m", **QUIET)


def test_stale_partial_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".model-f16.gguf.partial").write_bytes(b"half")
    (tmp_path / "keep.txt").write_text("not ours")
    OutputDir(tmp_path)
    assert _final_files(tmp_path) == ["keep.txt"]


@pytest.mark.needs_torch
def test_missing_adapter_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"adapter directory not found: .*no-adapter"):
        export_model(tiny_model_dir, tmp_path / "out", adapter_dir=tmp_path / "no-adapter", **QUIET)
    empty = tmp_path / "empty-adapter"
    empty.mkdir()
    with pytest.raises(ExportError, match=r"no adapter_config\.json"):
        export_model(tiny_model_dir, tmp_path / "out", adapter_dir=empty, **QUIET)


@pytest.mark.needs_torch
def test_adapter_recorded_for_another_base_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-base"
    other.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 4
    (other / "config.json").write_text(json.dumps(config))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(other), "r": 8, "target_modules": ["q_proj"]})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ExportError, match="adapter for another base model"):
        export_model(tiny_model_dir, tmp_path / "out", adapter_dir=adapter, **QUIET)
    assert _final_files(tmp_path / "out") == []


@pytest.mark.slow
@pytest.mark.needs_torch
def test_adapter_with_other_shapes_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An adapter trained on a wider model: its tensors cannot land on this base."""
    import torch
    from safetensors.torch import load_file, save_file

    from adfm.export.tiny import make_tiny_adapter

    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "somewhere/else"  # trained on a machine we cannot see
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    weights = load_file(adapter / "adapter_model.safetensors")
    widened = {k: torch.cat([v, v], dim=1) if "lora_A" in k else v for k, v in weights.items()}
    save_file(widened, adapter / "adapter_model.safetensors")
    with pytest.raises(ExportError, match="do not match the base model's shapes"):
        export_model(tiny_model_dir, tmp_path / "out", adapter_dir=adapter, quant="f16", **QUIET)
    assert _final_files(tmp_path / "out") == []


@pytest.mark.slow
@pytest.mark.needs_torch
def test_not_enough_space_stops_before_writing(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil as shutil_module
    from types import SimpleNamespace

    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=1000))
    with pytest.raises(ExportError, match="not enough disk space"):
        export_model(tiny_model_dir, tmp_path / "out", quant="f16", **QUIET)
    assert _final_files(tmp_path / "out") == []


@pytest.mark.slow
@pytest.mark.needs_torch
@pytest.mark.needs_llama
def test_disk_full_mid_write_keeps_the_previous_export(
    tiny_model_dir: Path, tiny_gguf_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """ENOSPC while writing a GGUF: a clear error, no partial files, the old export still loads."""
    from adfm.export import gguf_common

    out = tmp_path / "model"
    shutil.copytree(tiny_gguf_dir, out)
    before = _final_files(out)
    real_encode = gguf_common.encode
    calls = {"n": 0}

    def encode_until_full(tensor):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_encode(tensor)

    monkeypatch.setattr(gguf_common, "encode", encode_until_full)
    with pytest.raises(ExportError, match="disk full while writing the language model"):
        export_model(tiny_model_dir, out, quant="q8_0", **QUIET)
    assert _final_files(out) == before  # no .partial left, nothing replaced
    assert load_model_dir(out).file("model").quant == "q4_k_m"


def test_save_merged_never_overwrites_a_directory(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "precious.txt").write_text("keep")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export_model(tmp_path, tmp_path / "out", save_merged=taken, **QUIET)
    assert (taken / "precious.txt").read_text() == "keep"
