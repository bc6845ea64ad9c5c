"""`adfm-appliance` commands: keys, check, run's config errors, and the bus tools (tail, status, verdict)."""

from __future__ import annotations

import json

import pytest
import yaml

from adfm.appliance.cli import main
from adfm.appliance.keys import load_client_curve, load_server_curve
from tests.appliance_fakes import BusStation, make_model_dir


def test_keys_command_creates_usable_keys(tmp_path, capsys):
    assert main(["keys", "--dir", str(tmp_path / "keys"), "--client", "review", "--client", "mes"]) == 0
    out = capsys.readouterr().out
    assert "server_secret:" in out and "authorized_clients:" in out
    keys = tmp_path / "keys"
    server = load_server_curve(keys / "server.key_secret", keys / "clients")
    client = load_client_curve(keys / "server.key", keys / "client-secrets" / "mes.key_secret")
    assert client.server_public == server.keys.public
    assert sorted(p.name for p in (tmp_path / "keys" / "clients").iterdir()) == ["mes.key", "review.key"]
    assert main(["keys", "--dir", str(tmp_path / "keys"), "--client", "mes"]) == 1
    assert "pass --force" in capsys.readouterr().err


def test_check_and_run_report_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"station": "s", "model": {"dir": "m"}, "cameras": []}))
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: cameras: List should have at least 1 item" in err
    assert main(["run", "--config", str(bad)]) == 2
    assert "cameras" in capsys.readouterr().err

    make_model_dir(tmp_path / "model")
    (tmp_path / "rec").mkdir()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"station": "s", "state_dir": "state", "model": {"dir": "model"},
                                    "cameras": [{"id": "c", "url": "replay:rec"}]}))
    assert main(["check", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "OK — station s, model tiny-q4_k_m@" in out and "1 camera(s)" in out


@pytest.fixture
def station(tmp_path):
    s = BusStation(tmp_path)
    yield s
    s.close()


def test_tail_status_and_verdict(station, capsys):
    for verdict in ("pass", "fail", "review"):
        station.part(verdict=verdict)
    common = ["--control", station.control_ep, "--timeout", "2"]
    assert main(["tail", "--publish", station.publish_ep, *common, "--all", "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["verdict"] for line in lines] == ["pass", "fail", "review"]
    assert main(["status", *common]) == 0
    assert json.loads(capsys.readouterr().out)["last_seq"] == 3
    assert main(["verdict", *common, "--seq", "2", "--decision", "confirmed_defect", "--operator", "ben"]) == 0
    assert "journaled" in capsys.readouterr().out
    assert station.journal.get(2).operator.operator == "ben"
    assert main(["verdict", *common, "--seq", "9", "--decision", "skip", "--operator", "ben"]) == 1
    assert "no inspected part with seq 9" in capsys.readouterr().err


def test_status_of_a_silent_station_fails_cleanly(capsys):
    assert main(["status", "--control", "tcp://127.0.0.1:9", "--timeout", "0.2"]) == 1
    assert "no reply" in capsys.readouterr().err
