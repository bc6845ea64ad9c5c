"""Station config: every error names the file, the key and why; paths resolve next to the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from adfm.appliance.config.station import ConfigError, check_resources, load_config, parse_config, read_config
from tests.appliance_fakes import make_model_dir

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict | str, name: str = "station.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def good(tmp_path: Path) -> dict:
    make_model_dir(tmp_path / "model")
    (tmp_path / "recordings").mkdir(exist_ok=True)
    Image.new("RGB", (64, 48)).save(tmp_path / "ref.png")
    return {
        "station": "line1",
        "state_dir": "state",
        "model": {"dir": "model"},
        "products": [{"name": "washer", "reference": "ref.png"}],
        "cameras": [{"id": "cam0", "url": "replay:recordings", "product": "washer"}],
    }


def problems_of(fn, *args) -> list[str]:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    return info.value.problems


def test_example_config_is_valid_and_shipped_with_the_package():
    shipped = REPO / "appliance" / "station.example.yaml"
    assert (REPO / "systemd" / "station.example.yaml").resolve() == shipped.resolve()
    config = read_config(shipped)
    assert config.station == "line1-press3" and config.gate.mode == "off"
    assert config.cameras[0].camera_config().url == "v4l2:/dev/video0"
    from adfm.appliance.system.install import example_config

    assert example_config() == shipped.read_text()


def test_relative_paths_resolve_next_to_the_config(tmp_path):
    config = load_config(write(tmp_path, good(tmp_path)))
    assert config.model.dir == tmp_path / "model"
    assert config.products[0].reference == tmp_path / "ref.png"
    assert config.cameras[0].camera_config().url == f"replay:{tmp_path / 'recordings'}"
    assert config.journal_dir == tmp_path / "state" and config.journal_dir.is_dir()
    assert config.product_for("cam0").name == "washer"


def test_form_errors_name_file_key_and_value(tmp_path):
    data = good(tmp_path)
    data["model"]["n_ctx"] = 10
    data["cameras"][0]["url"] = "webcam:0"
    data["cameras"].append({"id": "cam0", "url": "usb:1"})
    data["retention"] = {"days": -1, "bogus": 1}
    path = write(tmp_path, data)
    problems = problems_of(read_config, path)
    text = "\n".join(problems)
    assert f"{path}: model.n_ctx: Input should be greater than or equal to 512 (got 10)" in text
    assert f"{path}: cameras.0.url: unsupported camera url 'webcam:0'" in text
    assert f"{path}: retention.days:" in text and f"{path}: retention.bogus: Extra inputs" in text


def test_cross_field_errors(tmp_path):
    data = good(tmp_path)
    data["cameras"].append({"id": "cam0", "url": "usb:1"})
    assert "camera ids must be unique; repeated: cam0" in problems_of(parse_config, data)[0]
    data = good(tmp_path)
    data["cameras"][0]["product"] = "bolt"
    assert "camera 'cam0': product 'bolt' is not in products (washer)" in problems_of(parse_config, data)[0]
    data = good(tmp_path)
    data["gate"] = {"mode": "screen"}
    assert "gate: gate mode 'screen' needs path" in problems_of(parse_config, data)[0]


def test_off_loopback_bus_needs_curve_or_insecure(tmp_path):
    data = good(tmp_path)
    data["bus"] = {"publish": "tcp://*:5560"}
    [problem] = problems_of(parse_config, data)
    assert "bus: tcp://*:5560 is reachable from other machines" in problem and "insecure: true" in problem
    data["bus"]["insecure"] = True
    assert parse_config(data).bus.publish == ["tcp://*:5560"]


def test_bare_yaml_off_means_gate_off(tmp_path):
    data = good(tmp_path)
    path = write(tmp_path, yaml.safe_dump(data) + "gate:\n  mode: off\n")
    assert read_config(path).gate.mode == "off"


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, "station: a\nmodel: [unclosed\n")
    [problem] = problems_of(read_config, path)
    assert problem.startswith(f"{path}:3:1: not valid YAML")
    missing = tmp_path / "missing.yaml"
    assert problems_of(read_config, missing)[0].startswith(f"{missing}: cannot read")
    assert "top level must be a mapping" in problems_of(read_config, write(tmp_path, "- a\n- b\n", "l.yaml"))[0]


def test_resources_are_checked(tmp_path):
    data = good(tmp_path)
    data["model"]["prompt_version"] = "one-stage-v1"
    data["cameras"][0]["url"] = "replay:nowhere"
    (tmp_path / "ref.png").write_bytes(b"not an image")
    data["bus"] = {"curve": {"server_secret": "keys/server.key_secret", "authorized_clients": "keys/clients"}}
    path = write(tmp_path, data)
    text = "\n".join(problems_of(load_config, path))
    assert f"{path}: model.prompt_version: 'one-stage-v1' differs from 'multi-stage-v1'" in text
    assert f"{path}: products.0.reference: {tmp_path / 'ref.png'} is not a readable image" in text
    assert f"{path}: cameras.0.url: {tmp_path / 'nowhere'} does not exist" in text
    assert f"{path}: bus.curve: {tmp_path / 'keys' / 'clients'}: folder of authorized client keys not found" in text


def test_aravis_camera_on_a_machine_without_aravis_is_named(tmp_path, monkeypatch):
    import adfm.camera.aravis as aravis

    monkeypatch.setattr(aravis, "aravis_available", lambda: "Aravis is not available: apt-get install …")
    data = good(tmp_path)
    data["cameras"][0]["url"] = "aravis:serial=21234567"
    problems = check_resources(parse_config(data, "s.yaml", tmp_path), "s.yaml")
    assert "s.yaml: cameras.0.url: Aravis is not available: apt-get install …" in problems
    monkeypatch.setattr(aravis, "aravis_available", lambda: None)
    assert not any("cameras.0" in p for p in check_resources(parse_config(data, "s.yaml", tmp_path), "s.yaml"))


def test_missing_model_manifest_is_named(tmp_path):
    data = good(tmp_path)
    (tmp_path / "model" / "manifest.json").unlink()
    problems = check_resources(parse_config(data, "s.yaml", tmp_path), "s.yaml")
    assert any(p.startswith("s.yaml: model.dir:") and "no manifest" in p for p in problems)


def test_state_dir_defaults_to_systemds_state_directory(tmp_path, monkeypatch):
    data = good(tmp_path)
    del data["state_dir"]
    config = parse_config(data, "s.yaml", tmp_path)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "var"))
    assert config.journal_dir == tmp_path / "var"
    monkeypatch.delenv("STATE_DIRECTORY")
    with pytest.raises(ConfigError, match="STATE_DIRECTORY"):
        _ = config.journal_dir


def test_context_and_answer_length_default_to_the_manifest_and_must_fit(tmp_path):
    from adfm.appliance.config.station import model_limits
    from adfm.manifest import read_manifest, write_manifest

    data = good(tmp_path)
    manifest = read_manifest(tmp_path / "model").model_copy(update={"max_tokens": 600, "prompt_tokens": 280})
    write_manifest(manifest, tmp_path / "model")
    config = load_config(write(tmp_path, data))
    limits = model_limits(config, manifest)
    # washer has a reference: 2 images × 64 tokens + 280 + 2 × 6 ("washer") + 600 = 1020 → 1024
    assert (limits.max_tokens, limits.n_ctx, limits.problems) == (600, 1024, [])

    data["model"]["n_ctx"] = 1000
    path = write(tmp_path, data)
    problems = problems_of(load_config, path)
    assert problems == [
        f"{path}: model.n_ctx: 1000 tokens cannot hold product 'washer': 2 image(s) × 64 tokens + 292 prompt "
        "tokens + 600 answer tokens = 1020; raise n_ctx to at least 1020 (or leave it out to size it from the "
        "manifest), or lower model.max_tokens"
    ]
    data["model"]["max_tokens"] = 256
    assert model_limits(load_config(write(tmp_path, data)), manifest).max_tokens == 256

    write_manifest(manifest.model_copy(update={"use_reference": False}), tmp_path / "model")
    problems = problems_of(load_config, write(tmp_path, data))
    assert any("products.washer.reference: the model was trained without a reference image" in p for p in problems)


def test_a_model_trained_with_a_reference_warns_when_a_product_has_none(tmp_path):
    from adfm.appliance.config.station import model_limits
    from adfm.manifest import read_manifest, write_manifest

    data = good(tmp_path)
    manifest = read_manifest(tmp_path / "model").model_copy(update={"use_reference": True})
    write_manifest(manifest, tmp_path / "model")
    assert model_limits(load_config(write(tmp_path, data)), manifest).warnings == []
    del data["products"][0]["reference"]
    limits = model_limits(load_config(write(tmp_path, data)), manifest, "s.yaml")
    assert limits.problems == []  # it runs …
    assert limits.warnings == [  # … but not as it was trained, and says so
        "s.yaml: products.washer.reference: the model was trained with a normal reference image before each "
        "part (manifest use_reference true) but none is configured, so it sees prompts it was not trained on; "
        "set a reference image of a good part for the product"
    ]
    unrecorded = manifest.model_copy(update={"use_reference": None})
    assert model_limits(load_config(write(tmp_path, data)), unrecorded).warnings == []
