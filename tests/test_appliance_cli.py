"""`adfm-appliance` commands: keys, check, run's config errors, and the bus tools (tail, status, verdict)."""

from __future__ import annotations

import json

import pytest
import yaml

from adfm.appliance.bus.keys import load_client_curve, load_server_curve
from adfm.appliance.cli import main
from tests.appliance_fakes import BusStation, make_model_dir


def test_keys_are_made_where_they_are_used_and_only_public_keys_reach_the_station(tmp_path, capsys):
    station, laptop = tmp_path / "keys", tmp_path / "laptop"
    assert main(["client-key", "--dir", str(laptop), "--name", "review"]) == 0
    assert "never copy it off this machine" in capsys.readouterr().out
    secret = laptop / "review.key_secret"
    assert oct(secret.stat().st_mode & 0o777) == "0o600" and oct(laptop.stat().st_mode & 0o777) == "0o700"
    assert main(["keys", "--dir", str(station), "--admit", f"review={laptop / 'review.key'}",
                 "--operators", "anna,ben"]) == 0
    out = capsys.readouterr().out
    assert "server_secret:" in out and "authorized_clients:" in out
    server = load_server_curve(station / "server.key_secret", station / "clients")
    client = load_client_curve(station / "server.key", secret)
    assert server.clients == {client.keys.public.decode(): "review"}
    assert server.operators == {"review": frozenset({"anna", "ben"})}
    assert oct((station / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    # No secret of any client exists on the station.
    assert not [p for p in station.rglob("*") if p.name.endswith("key_secret") and p.stem != "server"]
    # A secret file sent by mistake is refused; so is a second client of the same name.
    assert main(["keys", "--dir", str(station), "--admit", f"mes={secret}"]) == 1
    assert "holds a secret key" in capsys.readouterr().err
    assert main(["keys", "--dir", str(station), "--admit", f"review={laptop / 'review.key'}"]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main(["client-key", "--dir", str(laptop), "--name", "review"]) == 1


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
    # the placeholder GGUF files would not load in llama.cpp (tests/test_appliance_check.py loads models)
    assert main(["check", "--config", str(good), "--no-load"]) == 0
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


def test_verdict_with_the_right_box(station, capsys):
    station.part(verdict="fail")
    common = ["--control", station.control_ep, "--timeout", "2", "--seq", "1", "--operator", "ben"]
    assert main(["verdict", *common, "--decision", "defect_wrong_box"]) == 1
    assert "needs the corrected box" in capsys.readouterr().err
    assert main(["verdict", *common, "--decision", "defect_wrong_box", "--box", "1,2,3"]) == 1
    assert "give four numbers X1,Y1,X2,Y2" in capsys.readouterr().err
    assert main(["verdict", *common, "--decision", "defect_wrong_box", "--box", "10,12,1,2"]) == 0
    v = station.journal.get(1).operator
    assert (v.decision, v.operator, [b.xyxy for b in v.boxes]) == ("defect_wrong_box", "ben", [[1, 2, 10, 12]])
