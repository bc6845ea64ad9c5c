"""Line PCs with a GPU: the station config's GPU fields, the refusal to run a GPU config on a
llama.cpp that cannot use one, and the path of the settings from the config through the inference
worker into GgufVlm and llama.cpp's own parameters.

This machine's llama-cpp-python is a CPU build, so the refusal is tested for real; a GPU build is
stood in for only at llama.cpp's boundary (whether it reports GPU offload, and its backend list).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from adfm.appliance.cli import main
from adfm.appliance.config.station import ConfigError, load_config, parse_config
from adfm.runtime import gpu
from tests.appliance_fakes import ListCamera, ScriptedBackend, station_dict, write_script
from tests.conftest import HAS_LLAMA

needs_cpu_build = pytest.mark.skipif(
    not HAS_LLAMA or gpu.gpu_offload_problem() is None,
    reason="needs llama-cpp-python built for the CPU only (this machine's build)",
)


def write_station(tmp_path: Path, **model) -> Path:
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(station_dict(tmp_path, model=model)))
    return path


def problems_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return "\n".join(info.value.problems)


# ---- the config fields ---------------------------------------------------------------------------


def test_gpu_fields_default_to_the_cpu_and_the_projector_follows_the_layers(tmp_path):
    m = parse_config(station_dict(tmp_path)).model
    assert (m.n_gpu_layers, m.mmproj_gpu, m.projector_on_gpu, m.uses_gpu, m.gpu_devices) == (0, None, False, False,
                                                                                                "nvidia")
    m = parse_config(station_dict(tmp_path, model={"n_gpu_layers": -1})).model
    assert m.projector_on_gpu and m.uses_gpu
    m = parse_config(station_dict(tmp_path, model={"n_gpu_layers": 20, "mmproj_gpu": False})).model
    assert not m.projector_on_gpu and m.uses_gpu
    m = parse_config(station_dict(tmp_path, model={"mmproj_gpu": True})).model
    assert m.n_gpu_layers == 0 and m.projector_on_gpu and m.uses_gpu
    kwargs = m.backend_kwargs(tmp_path / "model", 4096)
    assert kwargs == {"model_dir": str(tmp_path / "model"), "n_ctx": 4096, "n_threads": None, "check_hashes": False,
                      "n_gpu_layers": 0, "mmproj_gpu": True}


@pytest.mark.parametrize(("model", "key"), [({"n_gpu_layers": -2}, "model.n_gpu_layers"),
                                            ({"n_gpu_layers": "all"}, "model.n_gpu_layers"),
                                            ({"mmproj_gpu": "maybe"}, "model.mmproj_gpu"),
                                            ({"gpu_devices": "cuda"}, "model.gpu_devices")])
def test_bad_gpu_values_are_named(tmp_path, model, key):
    with pytest.raises(ConfigError) as info:
        parse_config(station_dict(tmp_path, model=model), "station.yaml")
    assert any(p.startswith(f"station.yaml: {key}") for p in info.value.problems), info.value.problems


# ---- the refusal on this machine's CPU build -----------------------------------------------------


@needs_cpu_build
def test_a_cpu_build_refuses_a_config_that_asks_for_the_gpu(tmp_path):
    assert load_config(write_station(tmp_path)).model.n_gpu_layers == 0  # the CPU config loads as before
    path = write_station(tmp_path, n_gpu_layers=-1)
    text = problems_of(path)
    assert f"{path}: model.n_gpu_layers: -1 asks for the GPU" in text
    assert "built without GPU support" in text and "CPU (1 device)" in text
    command = gpu.install_command("cuda")
    assert command in text and 'CMAKE_ARGS="-DGGML_CUDA=on"' in command
    assert f"{sys.executable} -m pip install --force-reinstall --no-deps --no-cache-dir" in command
    assert f"--no-binary llama-cpp-python llama-cpp-python=={gpu.llama_cpp_version()}" in command
    # the projector alone on the GPU is refused too, under its own name
    text = problems_of(write_station(tmp_path, mmproj_gpu=True))
    assert "model.mmproj_gpu: true asks for the GPU" in text and "model.n_gpu_layers" in text  # the way back


@needs_cpu_build
def test_run_and_check_exit_2_naming_the_file_the_field_and_the_fix(tmp_path, capsys):
    path = write_station(tmp_path, n_gpu_layers=12)
    for command in ("run", "check"):
        assert main([command, "--config", str(path)]) == 2  # RestartPreventExitStatus: not restarted
        err = capsys.readouterr().err
        assert f"{path}: model.n_gpu_layers: 12 asks for the GPU" in err and "-DGGML_CUDA=on" in err
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())  # nothing opened


@pytest.mark.skipif(not HAS_LLAMA, reason="needs llama-cpp-python")
def test_the_backend_registry_is_read_from_the_loaded_llama_cpp():
    backends = gpu.llama_backends()
    assert backends is not None
    cpu = [b for b in backends if b.name == "CPU"]
    assert cpu and cpu[0].devices >= 1
    assert gpu.describe_backends(backends).startswith("CPU (1 device)")


@pytest.mark.skipif(not HAS_LLAMA, reason="needs llama-cpp-python")
def test_a_gpu_build_that_sees_no_device_points_at_the_driver_and_the_drop_in(tmp_path, monkeypatch):
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    monkeypatch.setattr(gpu, "llama_backends", lambda: [gpu.LlamaBackend("CPU", 1), gpu.LlamaBackend("CUDA", 0)])
    why = gpu.gpu_offload_problem()
    assert why is not None and "built with CUDA and sees no GPU device" in why
    assert "nvidia-smi" in why and "adfm-appliance.service.d/gpu.conf" in why and "pip install" not in why
    text = problems_of(write_station(tmp_path, n_gpu_layers=-1))
    assert "model.n_gpu_layers: -1 asks for the GPU, but llama-cpp-python" in text
    # a build that offloads passes the check
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    assert gpu.gpu_offload_problem() is None
    assert load_config(write_station(tmp_path, n_gpu_layers=-1)).model.uses_gpu


# ---- config → inference worker → backend ---------------------------------------------------------


def recording_backend(**kwargs):
    """A worker factory that writes what it was given, then answers like the scripted backend."""
    Path(os.environ["ADFM_BACKEND_KWARGS"]).write_text(json.dumps(kwargs))
    return ScriptedBackend(**kwargs)


def test_the_service_hands_the_gpu_settings_to_the_worker_backend(tmp_path, monkeypatch):
    from adfm.appliance.service import Service

    record = tmp_path / "kwargs.json"
    monkeypatch.setenv("ADFM_BACKEND_KWARGS", str(record))
    monkeypatch.setenv("ADFM_FAKE_SCRIPT", str(write_script(tmp_path / "script.json", ["no"])))
    config = parse_config(station_dict(tmp_path, model={
        "backend": "tests.test_appliance_gpu:recording_backend", "n_gpu_layers": -1, "mmproj_gpu": False,
        "n_threads": 3}))
    service = Service(config, cameras={"cam0": ListCamera()})
    try:
        service.start()  # the worker's child process builds the backend
    finally:
        service.close()
    got = json.loads(record.read_text())
    assert got["n_gpu_layers"] == -1 and got["mmproj_gpu"] is False and got["n_threads"] == 3
    assert got["model_dir"] == str(tmp_path / "model") and got["check_hashes"] is False
    # a line station builds its recipes' workers from the same settings
    from types import SimpleNamespace

    from adfm.appliance.config.station import ModelLimits
    from adfm.appliance.inspection.core import ModelInfo
    from adfm.appliance.modes.line_station import LineStation

    info = ModelInfo("m", "multi-stage-v1", 3136, 50176)
    vlm = LineStation._vlm_model(SimpleNamespace(cfg=config), info,  # type: ignore[arg-type]
                                 ModelLimits(n_ctx=4096, max_tokens=96, problems=[]), None, tmp_path / "recipe-model")
    spec = vlm.spec
    assert vlm.generation.max_tokens == 96 and spec.kwargs["n_ctx"] == 4096  # the limits from its manifest
    assert spec.factory == "tests.test_appliance_gpu:recording_backend"
    assert spec.kwargs["n_gpu_layers"] == -1 and spec.kwargs["mmproj_gpu"] is False
    assert spec.kwargs["model_dir"] == str(tmp_path / "recipe-model")


def test_the_gguf_backend_passes_them_to_gguf_vlm(monkeypatch):
    import adfm.runtime.vlm as vlm
    from adfm.appliance.inspection.worker import gguf_backend

    seen = {}

    class Recorder:
        def __init__(self, model_dir, **kwargs):
            seen.update(kwargs, model_dir=model_dir)

    monkeypatch.setattr(vlm, "GgufVlm", Recorder)
    gguf_backend("/models/x", n_ctx=2048, n_threads=2, n_gpu_layers=-1, mmproj_gpu=False)
    assert seen == {"model_dir": "/models/x", "n_ctx": 2048, "n_threads": 2, "check_hashes": True,
                    "n_gpu_layers": -1, "mmproj_gpu": False, "min_tokens": 0}
    seen.clear()
    gguf_backend("/models/x")
    assert seen["n_gpu_layers"] == 0 and seen["mmproj_gpu"] is None


# ---- GgufVlm → llama.cpp, on the real tiny model -------------------------------------------------


@pytest.fixture
def llama_params(monkeypatch):
    """What GgufVlm hands llama.cpp: the Llama keyword arguments and the projector's use_gpu."""
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    seen: dict[str, list] = {"n_gpu_layers": [], "use_gpu": []}
    real_llama, real_init = llama_cpp.Llama, mtmd.mtmd_init_from_file

    def llama(*args, **kwargs):
        seen["n_gpu_layers"].append(kwargs["n_gpu_layers"])
        return real_llama(*args, **kwargs)

    def init(path, model, params):
        seen["use_gpu"].append(bool(params.use_gpu))
        return real_init(path, model, params)

    monkeypatch.setattr(llama_cpp, "Llama", llama)
    monkeypatch.setattr(mtmd, "mtmd_init_from_file", init)
    return seen


@pytest.mark.slow
@pytest.mark.needs_llama
@pytest.mark.needs_torch
@needs_cpu_build
def test_gguf_vlm_on_the_cpu_build(tiny_gguf_dir, llama_params):
    from PIL import Image

    from adfm.runtime.vlm import GgufVlm

    with GgufVlm(tiny_gguf_dir, n_ctx=1024) as vlm:  # the CPU default, unchanged
        assert (vlm.n_gpu_layers, vlm.mmproj_gpu) == (0, False)
        image = vlm.grid_for(112, 112).resize(Image.new("RGB", (112, 112), (90, 90, 90)))
        assert vlm.generate([image], max_tokens=2).completion_tokens >= 0
    assert llama_params == {"n_gpu_layers": [0], "use_gpu": [False]}
    for kwargs in ({"n_gpu_layers": -1}, {"mmproj_gpu": True}):
        with pytest.raises(RuntimeError, match=r"ask for the GPU, but the installed llama-cpp-python .* built without"):
            GgufVlm(tiny_gguf_dir, n_ctx=1024, **kwargs)
    assert llama_params == {"n_gpu_layers": [0], "use_gpu": [False]}  # refused before anything loaded


@pytest.mark.slow
@pytest.mark.needs_llama
@pytest.mark.needs_torch
def test_gguf_vlm_places_layers_and_projector_as_asked(tiny_gguf_dir, llama_params, monkeypatch):
    from adfm.runtime.vlm import GgufVlm

    monkeypatch.setattr(gpu, "gpu_offload_problem", lambda: None)  # as a GPU build reports
    for kwargs, expect in [({"n_gpu_layers": -1}, (-1, True)), ({"n_gpu_layers": -1, "mmproj_gpu": False}, (-1, False)),
                           ({"n_gpu_layers": 0, "mmproj_gpu": True}, (0, True))]:
        with GgufVlm(tiny_gguf_dir, n_ctx=1024, **kwargs) as vlm:
            assert (vlm.n_gpu_layers, vlm.mmproj_gpu) == expect
    assert llama_params == {"n_gpu_layers": [-1, -1, 0], "use_gpu": [True, False, True]}
