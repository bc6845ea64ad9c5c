"""The plant server's systemd units and example config."""

from __future__ import annotations

from pathlib import Path

from adfm.plant.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_units_run_the_plant_commands_unprivileged():
    for name, command in (("collector", "collect"), ("view", "view")):
        text = (REPO / "systemd" / f"adfm-plant-{name}.service").read_text().splitlines()
        assert f"ExecStart=/usr/bin/env adfm-plant {command} --config /etc/adfm/plant.yaml" in text
        for line in ("User=adfm-plant", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure",
                     "RestartPreventExitStatus=2"):
            assert line in text, (name, line)
    # systemd-analyze verify over every unit in systemd/: tests/test_appliance_systemd.py and .ci/run


def test_the_example_config_is_valid():
    config = load_config(REPO / "systemd" / "plant.example.yaml")
    assert config.view.auth.method == "basic" and config.view.host == "0.0.0.0"
    assert config.stations[0].curve is not None
    assert config.stations[0].curve.server_key == REPO / "systemd" / "plant-keys" / "line1-st1" / "server.key"
