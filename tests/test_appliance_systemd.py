"""systemd: the unit file, `adfm-appliance install`, and the notify/watchdog protocol."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from adfm.appliance.cli import main
from adfm.appliance.config.station import parse_config
from adfm.appliance.inspection.worker import BackendSpec
from adfm.appliance.service import Service
from adfm.appliance.system.install import render_gpu_dropin, render_unit, verify_unit
from adfm.appliance.system.notify import SystemdNotifier
from tests.appliance_fakes import FACTORY, ListCamera, frame, station_dict, write_script

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "adfm-appliance.service"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def test_repository_unit_is_the_rendered_template():
    assert UNIT.read_text() == render_unit()


def test_unit_asks_for_what_the_service_needs():
    keys = [line.split("=", 1)[0] for line in UNIT.read_text().splitlines() if "=" in line and line[0] != "#"]
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=60", "Restart=on-failure", "User=adfm", "SupplementaryGroups=video",
                 "StateDirectory=adfm-appliance", "ProtectSystem=strict", "DeviceAllow=char-video4linux rw",
                 "DevicePolicy=closed", "NoNewPrivileges=yes"):
        assert line in text.splitlines()
    assert "PrivateDevices" not in keys  # it would hide /dev/video*
    repeated = {k for k in keys if keys.count(k) > 1}
    assert repeated <= {"Environment", "DeviceAllow", "SystemCallFilter"}, repeated  # these accumulate


@needs_analyze
def test_units_verify_clean(tmp_path):
    units = sorted((REPO / "systemd").glob("*.service"))
    assert units
    proc = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    custom = tmp_path / "adfm-appliance.service"
    custom.write_text(render_unit("/srv/adfm/venv/bin", "/etc/adfm/line2.yaml", "inspect"))
    proc = subprocess.run(["systemd-analyze", "verify", str(custom)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_install_writes_unit_and_keeps_an_existing_config(tmp_path, capsys):
    unit_dir, cfg = tmp_path / "units", tmp_path / "etc" / "station.yaml"
    args = ["install", "--unit-dir", str(unit_dir), "--config-path", str(cfg), "--bin-dir", "/opt/x/bin"]
    assert main(args) == 0
    out = capsys.readouterr().out
    unit = (unit_dir / "adfm-appliance.service").read_text()
    assert "Environment=PATH=/opt/x/bin:" in unit and f"--config {cfg}" in unit
    assert "useradd --system" in out and "systemctl enable --now adfm-appliance.service" in out
    assert cfg.read_text().startswith("# adfm station config")
    mine = "station: mine\nmodel: {dir: /m}\ncameras: [{id: c, url: 'usb:0'}]\n"  # read for its GPU fields
    cfg.write_text(mine)
    assert main(args) == 0
    assert cfg.read_text() == mine  # never overwritten
    assert (cfg.parent / "station.example.yaml").is_file()
    assert "kept the existing" in capsys.readouterr().out
    assert main(["install", "--print", "--bin-dir", "/opt/adfm/venv/bin"]) == 0
    assert capsys.readouterr().out == render_unit()


def _device_rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("DeviceAllow=", "DevicePolicy=",
                                                                     "SupplementaryGroups=", "PrivateDevices="))]


def test_the_unit_keeps_the_gpu_closed_and_the_drop_in_opens_only_it(tmp_path):
    assert _device_rules(UNIT.read_text()) == ["SupplementaryGroups=video", "DevicePolicy=closed",
                                               "DeviceAllow=char-video4linux rw", "DeviceAllow=char-usb_device rw"]
    model = parse_config(station_dict(tmp_path)).model
    assert render_gpu_dropin(model) is None  # the CPU default: no drop-in
    model.n_gpu_layers = -1
    text = render_gpu_dropin(model, "/etc/adfm/line2.yaml")
    assert text is not None and "/etc/adfm/line2.yaml asks for the GPU (n_gpu_layers -1, the projector on" in text
    assert "[Service]" in text.splitlines()
    assert _device_rules(text) == ["DeviceAllow=char-nvidia* rw"]  # adds a rule; the policy stays closed
    model.n_gpu_layers, model.mmproj_gpu, model.gpu_devices = 0, True, "dri"
    text = render_gpu_dropin(model)
    assert text is not None and _device_rules(text) == ["DeviceAllow=char-drm rw", "SupplementaryGroups=render"]
    model.mmproj_gpu = False
    assert render_gpu_dropin(model) is None


def _set_gpu(config: Path, n_gpu_layers: int) -> None:
    text = config.read_text()
    assert "  # n_gpu_layers: -1 " in text  # the example documents the field, commented out
    config.write_text(text.replace("  # n_gpu_layers: -1 ", f"  n_gpu_layers: {n_gpu_layers} "))


def test_install_opens_the_gpu_only_while_the_config_asks_for_it(tmp_path, capsys):
    unit_dir, cfg = tmp_path / "units", tmp_path / "etc" / "station.yaml"
    dropin = unit_dir / "adfm-appliance.service.d" / "gpu.conf"
    args = ["install", "--unit-dir", str(unit_dir), "--config-path", str(cfg), "--bin-dir", "/opt/x/bin"]
    assert main(args) == 0
    assert not dropin.exists()  # the example config keeps to the CPU
    out = capsys.readouterr().out
    assert f"adfm-appliance install --unit-dir {unit_dir} --config-path {cfg}" in out  # how to follow a change
    _set_gpu(cfg, -1)
    assert main(args) == 0
    assert f"wrote {dropin}" in capsys.readouterr().out
    assert _device_rules(dropin.read_text()) == ["DeviceAllow=char-nvidia* rw"]
    assert f"because {cfg} asks for the GPU" in dropin.read_text()
    assert main([*args, "--print"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(render_unit("/opt/x/bin", str(cfg))) and f"# {dropin}\n" in printed
    cfg.write_text(cfg.read_text().replace("n_gpu_layers: -1 ", "n_gpu_layers: 0 "))
    assert main(args) == 0
    assert f"removed {dropin}" in capsys.readouterr().out
    assert not dropin.exists() and not dropin.parent.exists()
    cfg.write_text(cfg.read_text().replace("n_gpu_layers: 0 ", "n_gpu_layers: 8 "))
    assert main(args) == 0 and dropin.exists()
    assert main([*args, "--force"]) == 0  # the example replaces the config: the GPU closes again
    assert not dropin.exists()


def test_install_refuses_an_invalid_config_and_writes_nothing(tmp_path, capsys):
    unit_dir, cfg = tmp_path / "units", tmp_path / "station.yaml"
    cfg.write_text("station: st1\nmodel: {dir: /m, n_gpu_layers: lots}\ncameras: [{id: c, url: 'usb:0'}]\n")
    assert main(["install", "--unit-dir", str(unit_dir), "--config-path", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: model.n_gpu_layers" in err and "run install again" in err
    assert not unit_dir.exists()


@needs_analyze
def test_the_gpu_drop_in_verifies_with_the_unit(tmp_path):
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / "adfm-appliance.service"
    unit.write_text(render_unit())
    model = parse_config(station_dict(tmp_path, model={"n_gpu_layers": -1})).model
    dropins = unit_dir / "adfm-appliance.service.d"
    dropins.mkdir()
    for devices in ("nvidia", "dri"):
        model.gpu_devices = devices
        (dropins / "gpu.conf").write_text(render_gpu_dropin(model) or "")
        ok, out = verify_unit(unit)
        assert ok and out == "", out
    # the drop-in is read by the check: a bad rule in it is reported
    (dropins / "gpu.conf").write_text("[Service]\nDeviceAllow=/not-a-device rw\n")
    ok, out = verify_unit(unit)
    assert not ok and "gpu.conf" in out and "/not-a-device" in out, out


class NotifySocket:
    """A stand-in for systemd's notification socket."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def count(self, line: str) -> int:
        return sum(line in m.splitlines() for m in list(self.messages))

    def wait_for(self, line: str, n: int = 1, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.count(line) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.count(line) >= n

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_notifier_speaks_the_datagram_protocol(tmp_path):
    sink = NotifySocket(tmp_path / "notify")
    try:
        n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_s == 4.0 and n.watchdog_due()
        assert n.ready("up") and n.watchdog() and n.stopping()
        assert not n.watchdog_due()  # just pinged: next one at half the interval
        assert sink.wait_for("READY=1") and sink.wait_for("WATCHDOG=1") and sink.wait_for("STOPPING=1")
        assert sink.count("STATUS=up") == 1
    finally:
        sink.close()
    off = SystemdNotifier({})
    assert not off.enabled and not off.ready() and not off.watchdog_due()
    other_pid = SystemdNotifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_s is None  # the watchdog belongs to another process


def test_watchdog_is_fed_only_while_the_pipeline_is_sound(tmp_path):
    sink = NotifySocket(tmp_path / "notify")
    script = write_script(tmp_path / "script.json", ["no"])
    cam = ListCamera()
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"})
    service = Service(parse_config(station_dict(tmp_path)), cameras={"cam0": cam},
                      backend=BackendSpec(FACTORY, {"script": str(script)}), notifier=notifier)
    runner = threading.Thread(target=service.run, kwargs={"max_seconds": 120})
    runner.start()
    try:
        assert sink.wait_for("READY=1")
        cam.put(frame(0))
        deadline = time.monotonic() + 60
        while service.pipeline.processed < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.wait_for("WATCHDOG=1", 3)
        # A full disk is reported but keeps the watchdog fed: a restart cannot free space.
        service.health.problem("journal", "disk full (test)")
        before = sink.count("WATCHDOG=1")
        assert sink.wait_for("WATCHDOG=1", before + 2)
        assert not service.health.snapshot().healthy
        service.health.clear("journal")
        service.health.problem("worker", "the inference worker cannot start (test)")
        time.sleep(0.3)  # a ping already on its way may still land
        before = sink.count("WATCHDOG=1")
        time.sleep(0.6)  # three watchdog half-intervals
        assert sink.count("WATCHDOG=1") == before
        service.health.clear("worker")
        assert sink.wait_for("WATCHDOG=1", before + 2)
    finally:
        service.request_stop("test over")
        runner.join(30)
        sink.close()
    assert sink.count("STOPPING=1") == 1
