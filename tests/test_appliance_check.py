"""`adfm-appliance check` catches before `run` what the integrator trial tripped over: each of the ten
mistakes gets a message naming the file, the key, what is wrong and how to fix it.

The station here is real (folder and replay cameras, loopback ports, the inference worker loading
its backend in a child process); the model is a scripted backend over a manifest that checks out.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from adfm.appliance.cli import main
from tests.appliance_fakes import FACTORY, make_model_dir, write_script
from tests.camera_support import free_port, write_video
from tests.line_support import Plc

#: what the scripted model needs: 1,024 image tokens a part (Qwen-VL's minimum), so n_ctx 1024 is too small
MAX_PIXELS = 28 * 28 * 1024


def refusing_backend(n_ctx: int = 4096, **kwargs):
    """A backend that fails to load above 2,048 tokens of context, as llama.cpp does when the KV cache
    for that context does not fit in memory."""
    if n_ctx > 2048:
        raise RuntimeError(f"llama_init_from_model: failed to allocate the KV cache for n_ctx {n_ctx}")
    from tests.appliance_fakes import make_backend

    return make_backend(**kwargs)


@pytest.fixture
def scratch(monkeypatch):
    """A station folder every user may traverse (pytest's own tmp folders are root-only), with a
    model, a folder camera and free loopback ports."""
    root = Path(tempfile.mkdtemp(prefix="adfm-check-"))
    os.chmod(root, 0o755)
    make_model_dir(root / "model", max_pixels=MAX_PIXELS)
    (root / "drop").mkdir()
    monkeypatch.setenv("ADFM_FAKE_SCRIPT", str(write_script(root / "script.json", ["no"])))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def station(root: Path, **changes) -> dict:
    cfg = {
        "station": "s1", "state_dir": "state",
        "model": {"dir": "model", "backend": FACTORY},
        "cameras": [{"id": "cam0", "url": "folder:drop"}],
        "bus": {"publish": f"tcp://127.0.0.1:{free_port()}", "control": f"tcp://127.0.0.1:{free_port()}"},
    }
    cfg.update(changes)
    return cfg


def check(root: Path, cfg: dict, capsys, *flags: str) -> tuple[int, str, str, Path]:
    path = root / "station.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.chmod(path, 0o644)
    code = main(["check", "--config", str(path), *flags])
    out, err = capsys.readouterr()
    return code, out, err, path


def the_line(err: str, path: Path, key: str) -> str:
    """The one problem line about `key`, which must name the file."""
    lines = [line.strip() for line in err.splitlines() if f"{path}: {key}" in line]
    assert lines, f"no problem names {path}: {key}:\n{err}"
    return lines[0]


def test_a_sound_station_passes_and_its_summary_names_the_model_limits(scratch, capsys):
    code, out, err, _ = check(scratch, station(scratch), capsys)
    assert code == 0, err
    assert "OK — station s1" in out, out
    assert "n_ctx 2304, max_tokens 256 (from the manifest), loaded in" in out
    assert "free-run" in out and "bus.publish 127.0.0.1:" in out


# ---- the ten mistakes ----------------------------------------------------------------------------


def test_mistake_1_typo_in_a_key(scratch, capsys):
    code, _, err, path = check(scratch, station(scratch, model={"dir": "model", "n_ctxx": 4096}), capsys)
    assert code == 2
    line = the_line(err, path, "model.n_ctxx")
    assert "Extra inputs are not permitted" in line and "did you mean 'n_ctx'?" in line


def test_mistake_2_value_of_the_wrong_type(scratch, capsys):
    code, _, err, path = check(scratch, station(scratch, model={"dir": "model", "n_ctx": "large"}), capsys)
    assert code == 2
    line = the_line(err, path, "model.n_ctx")
    assert "valid integer" in line and "(got 'large')" in line and "n_ctx takes an integer (or leave it out)" in line


def test_mistake_3_missing_model(scratch, capsys):
    code, _, err, path = check(scratch, station(scratch, model={"dir": "models/current", "backend": FACTORY}), capsys)
    assert code == 2
    line = the_line(err, path, "model.dir")
    assert f"{scratch}/models/current is not a directory" in line and "written by `adfm-export`" in line


def test_mistake_4_folder_the_service_user_cannot_list(scratch, capsys):
    (scratch / "state").mkdir()
    shutil.chown(scratch / "state", "nobody")
    os.chmod(scratch / "drop", 0o700)  # root's alone: the service user cannot list it
    code, _, err, path = check(scratch, station(scratch), capsys, "--user", "nobody")
    if os.geteuid() != 0:
        pytest.skip("checking access as another user needs root")
    assert code == 2
    line = the_line(err, path, "cameras.0.url")
    assert "the service user nobody" in line and "cannot use the camera's folder" in line
    assert "mode 0700, owner root:root" in line and f"chmod -R g+rwX {scratch}/drop" in line
    # The same folder listable by the group passes once the group is the service user's.
    shutil.chown(scratch / "drop", group="nogroup")
    os.chmod(scratch / "drop", 0o770)
    code, out, err, _ = check(scratch, station(scratch), capsys, "--user", "nobody")
    assert code == 0, err
    assert "files checked as the service user nobody" in out


def test_mistake_5_port_in_use(scratch, capsys):
    cfg = station(scratch)
    port = int(cfg["bus"]["publish"].rsplit(":", 1)[1])
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen(1)
        code, _, err, path = check(scratch, cfg, capsys)
    assert code == 2
    line = the_line(err, path, "bus.publish")
    assert f"cannot listen on 127.0.0.1:{port}: port {port} is in use" in line and "ss -ltnp" in line
    assert "choose a free port for bus.publish" in line


def test_mistake_6_bad_camera_url(scratch, capsys):
    cfg = station(scratch, cameras=[{"id": "cam0", "url": "rtps://10.0.0.5/stream1"}])
    code, _, err, path = check(scratch, cfg, capsys)
    assert code == 2
    line = the_line(err, path, "cameras.0.url")
    assert "unsupported camera url 'rtps://10.0.0.5/stream1'" in line and "rtsp://" in line
    # A device that is not there is named too (a typo in the device number).
    code, _, err, path = check(scratch, station(scratch, cameras=[{"id": "cam0", "url": "v4l2:/dev/video97"}]), capsys)
    assert code == 2
    assert "/dev/video97 does not exist; `ls /dev/video*`" in the_line(err, path, "cameras.0.url")


def test_mistake_7_n_ctx_too_small(scratch, capsys):
    code, _, err, path = check(scratch, station(scratch, model={"dir": "model", "n_ctx": 1024}), capsys)
    assert code == 2
    line = the_line(err, path, "model.n_ctx")
    assert "1024 tokens cannot hold a part" in line and "raise n_ctx to at least 2219" in line


def test_mistake_8_recipe_naming_a_missing_model(scratch, capsys):
    cfg = station(scratch, line={"deadline_ms": 800},
                  recipes=[{"name": "a", "code": 1}, {"name": "b", "code": 2, "model_dir": "models/b"}])
    code, _, err, path = check(scratch, cfg, capsys)
    assert code == 2
    line = the_line(err, path, "recipes.1.model_dir")
    assert "models/b is not a directory (recipe 'b')" in line and "leave model_dir out to use model.dir" in line


def test_mistake_9_duplicate_camera_ids(scratch, capsys):
    cams = [{"id": "cam0", "url": "folder:drop"}, {"id": "cam0", "url": "v4l2:/dev/video0"}]
    code, _, err, path = check(scratch, station(scratch, cameras=cams), capsys)
    assert code == 2
    line = the_line(err, path, "cameras:")
    assert "repeated: cam0 in cameras.0.id and cameras.1.id" in line and "give each camera its own id" in line


def test_mistake_10_unreachable_plc(scratch, capsys):
    write_video(scratch / "line.avi", frames=20)
    port = free_port()  # nothing listens there
    cfg = station(scratch, cameras=[{"id": "cam0", "url": "replay:line.avi", "trigger": {"mode": "link"}}],
                  line={"deadline_ms": 800}, plc={"modbus": {"host": "127.0.0.1", "port": port}})
    code, out, err, path = check(scratch, cfg, capsys)
    assert code == 0, err  # without --probe the PLC is not contacted, and the summary says so
    assert f"PLC 127.0.0.1:{port} unit 1" in out and "not probed (--probe)" in out
    assert "line mode: deadline 800 ms, fail-safe reject" in out
    code, out, err, path = check(scratch, cfg, capsys, "--probe")
    assert code == 1
    line = the_line(err, path, "plc.modbus.host")
    assert f"cannot reach the PLC at 127.0.0.1:{port}: Connection refused" in line
    assert "Modbus/TCP server enabled" in line and f"plc-probe --config {path}" in line
    assert "camera cam0: a " in out and "1 trigger(s) fired" in out  # the link camera fired by the probe


# ---- beyond the ten ------------------------------------------------------------------------------


def test_line_model_that_cannot_load_with_the_manifests_limits(scratch, capsys):
    """n_ctx and max_tokens left to the manifest: check loads the model with them, as run will."""
    backend = "tests.test_appliance_check:refusing_backend"
    cfg = station(scratch, model={"dir": "model", "backend": backend}, line={"deadline_ms": 800},
                  recipes=[{"name": "a", "code": 1, "deadline_ms": 500}])
    code, _, err, path = check(scratch, cfg, capsys)
    assert code == 2
    line = the_line(err, path, "model.dir")
    assert "does not load with n_ctx 2304 (sized from the manifest) and max_tokens 256" in line
    assert "failed to allocate the KV cache" in line and "(recipes a)" in line
    # --no-load skips it (quick form-and-files check); the summary says the model was not loaded.
    code, out, err, _ = check(scratch, cfg, capsys, "--no-load")
    assert code == 0, err
    assert "not loaded (--no-load)" in out and "recipe a (code 1): deadline 500 ms, fail-safe reject" in out


def test_probe_reaches_a_plc_and_names_the_recipes(scratch, capsys):
    write_video(scratch / "line.avi", frames=20)
    plc = Plc(free_port(), scratch / "plc.jsonl")
    plc.start(rate=1, parts=0, start_delay=60)
    try:
        cfg = station(scratch, cameras=[{"id": "cam0", "url": "replay:line.avi", "trigger": {"mode": "link"}}],
                      line={"deadline_ms": 800, "failsafe": "hold"},
                      recipes=[{"name": "housing-a", "code": 1}, {"name": "housing-b", "code": 2, "deadline_ms": 600}],
                      plc={"modbus": {"host": "127.0.0.1", "port": plc.port}})
        code, out, err, _ = check(scratch, cfg, capsys, "--probe")
    finally:
        plc.kill()
    assert code == 0, err
    assert f"PLC 127.0.0.1:{plc.port} unit 1, trigger discrete_input 0, result block at 100: reached in" in out
    assert "recipe housing-b (code 2): deadline 600 ms, fail-safe hold" in out


def test_a_gate_that_does_not_open_is_named(scratch, capsys):
    (scratch / "gate.onnx").write_bytes(b"not an onnx graph")
    code, _, err, path = check(scratch, station(scratch, gate={"mode": "screen", "path": "gate.onnx"}), capsys)
    assert code == 2
    line = the_line(err, path, "gate.path")
    assert f"cannot load the gate {scratch}/gate.onnx" in line and "fit the gate again" in line


def test_keys_the_service_user_cannot_read(scratch, capsys):
    if os.geteuid() != 0:
        pytest.skip("checking access as another user needs root")
    assert main(["client-key", "--dir", str(scratch / "laptop"), "--name", "review"]) == 0
    assert main(["keys", "--dir", str(scratch / "keys"), "--admit", f"review={scratch}/laptop/review.key"]) == 0
    (scratch / "state").mkdir()
    for folder in ("state", "drop"):
        shutil.chown(scratch / folder, "nobody")
    curve = {"server_secret": "keys/server.key_secret", "authorized_clients": "keys/clients"}
    cfg = station(scratch)
    cfg["bus"]["curve"] = curve
    code, _, err, path = check(scratch, cfg, capsys, "--user", "nobody")
    assert code == 2
    line = the_line(err, path, "bus.curve.server_secret")
    assert "the service user nobody (uid 65534) cannot use the station's secret key" in line
    assert f"chgrp nogroup {scratch}/keys/server.key_secret && chmod g+r" in line
    # README's step: the key folder to the service user's group, group-readable
    subprocess.run(["chown", "-R", "root:nogroup", str(scratch / "keys")], check=True)
    subprocess.run(["chmod", "-R", "g+rX,o-rwx", str(scratch / "keys")], check=True)
    code, _, err, _ = check(scratch, cfg, capsys, "--user", "nobody")
    assert code == 0, err
