"""MQTT out against a real mosquitto broker: every decision exactly once and in seq order through a
broker restart, revisions after their part, retained state and the last will when the station
process is killed, resuming from the acknowledged seq, TLS and a password from a file — and the
`mqtt:` section's errors."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from adfm.appliance.config.station import check_resources, parse_config
from adfm.appliance.inspection.worker import BackendSpec
from adfm.appliance.journal.store import Journal
from adfm.appliance.service import Service
from adfm.appliance.system.health import Health
from adfm.config import ConfigError
from adfm.schema import InspectionResult
from tests.appliance_fakes import FACTORY, ListCamera, frame, station_dict, write_script
from tests.mqtt_support import (
    MOSQUITTO_PASSWD,
    OPENSSL,
    Mosquitto,
    Subscriber,
    make_password_file,
    make_tls_files,
    missing_reason,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
TOPIC = "plant1/press-shop/line1/st1"
needs_broker = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


def mqtt_section(port: int, **over) -> dict:
    return {"host": "127.0.0.1", "port": port, "site": "plant1", "area": "press-shop", "line": "line1",
            "status_interval_s": 0.5, "reconnect_max_s": 1.0, **over}


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.close()


# ---- the station file's `mqtt:` section ------------------------------------------------------------


def _problems(tmp_path, mqtt: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(station_dict(tmp_path, mqtt=mqtt), "station.yaml")
    return str(err.value)


def test_config_refuses_inline_password_and_clear_text_off_machine(tmp_path):
    text = _problems(tmp_path, {**mqtt_section(1883), "username": "line1", "password": "s3cret"})
    assert "station.yaml: mqtt: password: passwords are never written in the station file" in text
    assert "s3cret" not in text
    text = _problems(tmp_path, mqtt_section(1883, host="broker.plant.example"))
    assert "mqtt: host 'broker.plant.example' is off this machine and tls is not set" in text
    assert "password_file needs username" in _problems(tmp_path, mqtt_section(1883, password_file="pw"))
    assert "mqtt.site" in _problems(tmp_path, mqtt_section(1883, site="plant/1"))
    assert "mqtt.area" in _problems(tmp_path, mqtt_section(1883, area="#"))
    assert "cert and key go together" in _problems(
        tmp_path, mqtt_section(1883, host="broker.plant.example", tls={"ca": "ca.crt", "cert": "st1.crt"}))
    with pytest.raises(ConfigError, match=r"mqtt\.keepalive_s"):
        parse_config(station_dict(tmp_path, mqtt=mqtt_section(1883, keepalive_s=1)))


def test_config_checks_the_files_it_names(tmp_path):
    config = parse_config(station_dict(tmp_path, mqtt=mqtt_section(
        8883, host="broker.plant.example", username="line1", password_file="missing.pw",
        tls={"ca": "ca.crt"})), "station.yaml", tmp_path)
    assert config.mqtt is not None and config.mqtt.broker == "broker.plant.example:8883"
    problems = check_resources(config, "station.yaml")
    assert f"station.yaml: mqtt.password_file: {tmp_path / 'missing.pw'} not found" in problems
    assert f"station.yaml: mqtt.tls.ca: {tmp_path / 'ca.crt'} not found" in problems
    (tmp_path / "missing.pw").write_text("")
    assert any(p.startswith("station.yaml: mqtt.password_file:") and "empty" in p
               for p in check_resources(config, "station.yaml"))
    ok = parse_config(station_dict(tmp_path, mqtt=mqtt_section(1883)))
    assert not [p for p in check_resources(ok, "station.yaml") if "mqtt" in p]


def test_check_names_the_broker_and_refuses_a_password_in_the_file(tmp_path, capsys):
    from adfm.appliance.cli import main

    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(station_dict(tmp_path, mqtt=mqtt_section(1883))))
    assert main(["check", "--config", str(path), "--no-load"]) == 0
    assert "MQTT to 127.0.0.1:1883 under plant1/press-shop/line1/st1/" in capsys.readouterr().out
    path.write_text(yaml.safe_dump(station_dict(tmp_path, mqtt={**mqtt_section(1883), "password": "pw"})))
    assert main(["check", "--config", str(path), "--no-load"]) == 2
    assert f"{path}: mqtt: password: passwords are never written in the station file" in capsys.readouterr().err


def test_the_example_config_s_mqtt_block_is_valid():
    """The commented `mqtt:` block of station.example.yaml, uncommented, is a valid section."""
    lines = (REPO / "appliance" / "station.example.yaml").read_text().splitlines()
    block = lines[lines.index("# mqtt:"):]
    data = yaml.safe_load("\n".join(line.removeprefix("#").removeprefix(" ") for line in block))
    from adfm.appliance.config.mqtt import MqttSection

    section = MqttSection.model_validate(data["mqtt"])
    assert section.topic_prefix("line1-press3") == "plant1/press-shop/line1/line1-press3"
    assert section.tls is not None and section.password_file is not None and section.broker_port == 8883


# ---- a real station through a broker restart --------------------------------------------------------


@needs_broker
@pytest.mark.parametrize("in_flight", [False, True], ids=["between-messages", "mid-message"])
def test_every_decision_once_in_seq_order_through_a_broker_restart(tmp_path, broker, in_flight):
    """A free-run station inspects 60 parts while the broker is stopped (cleanly: it saves its sessions)
    and started again mid-run; parts keep coming while it is down. A subscriber on a persistent session
    deduplicating nothing gets seqs 1..60 once each, in order.

    `between-messages`: the broker stops in a pause of the line, after the subscriber acknowledged what
    it got: exactly once. `mid-message`: it stops while results flow. QoS 1 is at least once on each
    leg, so the one or two results in flight at that instant may come twice (the broker re-delivers one
    whose acknowledgment from the subscriber it never read, flagged DUP; the station sends again one whose
    PUBACK it never got) — right at the stop, still in seq order, and nothing is lost."""
    n = 60
    script = write_script(tmp_path / "script.json", ["no", "yes"], cycle=True)
    config = parse_config(station_dict(tmp_path, mqtt=mqtt_section(broker.port)))
    cam = ListCamera()
    service = Service(config, cameras={"cam0": cam}, backend=BackendSpec(FACTORY, {"script": str(script)}))
    sub = Subscriber(broker.port, f"{TOPIC}/result", client_id="mes", persistent=True).start()
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    paused = threading.Event()

    def feed():
        for i in range(n):
            while paused.is_set():
                time.sleep(0.01)
            cam.put(frame(i))
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        wait_for(lambda: service.mqtt is not None and service.mqtt.connected, 60, "the station did not connect")
        feeder.start()
        wait_for(lambda: len(sub.on("result")) >= 15, 60, "no results before the restart")
        if not in_flight:  # a gap in the line: every part made is delivered and acknowledged, nothing flows
            paused.set()

            def settled() -> bool:
                if not cam.frames.empty() or len(sub.on("result")) < service.journal.last_seq():
                    return False
                seen = len(sub.on("result"))
                time.sleep(0.5)
                return len(sub.on("result")) == seen == service.journal.last_seq()

            wait_for(settled, 30, "the line did not settle")
        broker.stop()
        before = len(sub.on("result"))
        paused.clear()  # parts keep coming: the journal keeps them
        wait_for(lambda: "mqtt" in service.health.alarms(), 10, "the broker outage raised no alarm")
        wait_for(lambda: service.journal.last_seq() >= before + 5, 10, "no parts made during the outage")
        during = service.journal.last_seq()
        broker.start()
        feeder.join(30)
        wait_for(lambda: len({m.payload["seq"] for m in sub.on("result")}) >= n, 60,
                 f"only {len(sub.on('result'))} of {n} results arrived")
        time.sleep(0.5)  # a duplicate would arrive now
        wait_for(lambda: "mqtt" not in service.health.alarms(), 10, "the alarm did not clear")
    finally:
        paused.clear()
        service.request_stop("test over")
        runner.join(30)
        sub.stop()
    assert not runner.is_alive()
    assert during < n  # the restart happened while parts were still being made
    received = sub.on("result")
    seqs = [m.payload["seq"] for m in received]
    if in_flight:
        assert service.mqtt.stats["published"] - n <= 2  # only what was unacknowledged at the stop went again
        # forward one seq at a time, never skipping; back (by at most 2) only where the stop cut the flow:
        # to the first result the station had no PUBACK for, or the broker's re-delivery of the one in
        # flight to the subscriber
        steps = [b - a for a, b in itertools.pairwise(seqs)]
        assert seqs[0] == 1 and all(step == 1 or -2 <= step <= 0 for step in steps), seqs
        assert sorted(set(seqs)) == list(range(1, n + 1)) and len(seqs) - n <= 2, seqs
    else:
        assert service.mqtt.stats["published"] == n  # the station sent each result once
        assert not any(m.dup for m in received)
        assert seqs == list(range(1, n + 1))
    first = InspectionResult.model_validate(received[0].payload)  # the one result schema
    assert first.station == "st1" and first.epoch and first.verdict in ("pass", "fail")
    cursor = json.loads((tmp_path / "state" / "mqtt-cursor.json").read_text())
    assert cursor["acked_seq"] == n and cursor["epoch"] == first.epoch


@needs_broker
def test_a_broker_that_never_answers_does_not_hold_the_station(tmp_path):
    """The broker's port accepts connections and never answers (a hung broker, a firewall that swallows
    packets): the station inspects and journals every part as usual, raises the `mqtt` alarm and keeps
    the results for later."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # never accepted: the kernel completes the handshake, nobody ever speaks MQTT
    n = 20
    script = write_script(tmp_path / "script.json", ["no"])
    config = parse_config(station_dict(tmp_path, mqtt=mqtt_section(silent.getsockname()[1])))
    cam = ListCamera()
    for i in range(n):
        cam.put(frame(i))
    service = Service(config, cameras={"cam0": cam}, backend=BackendSpec(FACTORY, {"script": str(script)}))
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: service.mode is not None and service.mode.decided >= n, 60, "the station stalled")
        assert service.journal.last_seq() == n
        wait_for(lambda: "mqtt" in service.health.alarms(), 20, "no alarm for a broker that never answers")
        assert "no answer (CONNACK)" in service.health.alarms()["mqtt"]
        assert "from seq 1" in service.health.alarms()["mqtt"] and service.mqtt.acked_seq == 0
    finally:
        service.request_stop("test over")
        runner.join(30)
        silent.close()
    assert not runner.is_alive()


# ---- revisions after their part, resuming from the cursor -------------------------------------------


def _journal_part(journal: Journal, verdict: str = "pass") -> InspectionResult:
    i = journal.last_seq() + 1
    p = journal.accept(np.full((16, 16, 3), i % 255, np.uint8), part_id=f"p{i}", camera="cam0",
                       frame_number=i, captured_wall=time.time())
    return journal.complete(InspectionResult(station="st1", seq=p.seq, part_id=p.part_id, camera="cam0",
                                             frame_number=i, captured_at=p.captured_at, verdict=verdict,
                                             revision=0, decision_source="failsafe_timeout", action="reject"))


def _publisher(journal: Journal, section: dict):
    from adfm.appliance.config.mqtt import MqttSection
    from adfm.appliance.mqtt.publisher import MqttPublisher

    return MqttPublisher(MqttSection.model_validate(section), "st1", journal, Health("st1"))


@needs_broker
def test_revisions_follow_their_part_and_a_restart_resumes_from_the_acknowledged_seq(tmp_path, broker):
    journal = Journal(tmp_path / "state", "st1")
    sub = Subscriber(broker.port, f"{TOPIC}/#").start()
    first = [_journal_part(journal) for _ in range(3)]  # before MQTT was turned on: not published
    pub = _publisher(journal, mqtt_section(broker.port))
    pub.start()
    try:
        wait_for(lambda: pub.connected, 10, "no connection")
        parts = [_journal_part(journal) for _ in range(4)]
        journal.revise(parts[1].model_copy(update={"revision": 1, "verdict": "fail", "decision_source": "vlm"}))
        pub.wake()
        wait_for(lambda: len(sub.on("revision")) == 1 and len(sub.on("result")) == 4, 10, "results missing")
        order = [(m.topic.rsplit("/", 1)[1], m.payload["seq"]) for m in sub.messages
                 if m.topic.endswith(("/result", "/revision"))]
        assert order.index(("revision", parts[1].seq)) > order.index(("result", parts[1].seq))
        assert [s for k, s in order if k == "result"] == [p.seq for p in parts]  # from the part after start
        assert sub.on("revision")[0].payload["revision"] == 1
        # a later revision of a part long published still goes out
        journal.revise(parts[0].model_copy(update={"revision": 1, "verdict": "fail", "decision_source": "vlm"}))
        pub.wake()
        wait_for(lambda: len(sub.on("revision")) == 2, 10, "the late revision did not go out")
        state = sub.on("state")[-1].payload
        assert state["state"] == "online" and state["station"] == "st1"
        assert sub.on("status")[-1].payload["station"] == "st1" and sub.on("alarm")[-1].payload["active"] == []
    finally:
        pub.stop()
    assert sub.on("state")[-1].payload["state"] == "offline"  # a clean stop says so itself
    assert sub.on("state")[-1].payload["reason"] == "the station stopped"
    # parts made while no publisher ran go out on the next start, after the acknowledged seq only
    later = [_journal_part(journal) for _ in range(2)]
    pub = _publisher(journal, mqtt_section(broker.port))
    pub.start()
    try:
        wait_for(lambda: len(sub.on("result")) == 6, 10, "the backlog was not published")
    finally:
        pub.stop()
        sub.stop()
    assert [m.payload["seq"] for m in sub.on("result")] == [p.seq for p in (*parts, *later)]
    assert first[-1].seq not in [m.payload["seq"] for m in sub.on("result")]
    journal.close()


# ---- a line station: decisions and the VLM's late verdicts --------------------------------------------


@needs_broker
@pytest.mark.slow
def test_line_station_publishes_each_decision_and_each_late_verdict_after_it(tmp_path, broker):
    """A line (PLC stand-in over Modbus/TCP, 5 parts/s, every 5th answer past the deadline): each
    decision on `result` once in seq order; each late VLM verdict, journaled as a revision, on
    `revision` after its part's decision."""
    pytest.importorskip("pymodbus")
    from tests.line_support import Plc, free_port, line_config, start_line

    parts = 20
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=5.0, parts=parts)
    script = write_script(tmp_path / "script.json", ["no", "yes", "no", "late", "no"], late_s=0.7, cycle=True)
    sub = Subscriber(broker.port, f"{TOPIC}/#").start()
    run, _ = start_line(line_config(tmp_path, port, counter=True, mqtt=mqtt_section(broker.port)), script)
    try:
        wait_for(plc.done, 60, "the PLC did not present every part")
        wait_for(lambda: not run.service.line.controller.parts, 30, "parts still in flight")
        time.sleep(1.0)  # the last late verdicts
    finally:
        run.stop()
        plc.kill()
    journal = Journal(tmp_path / "state", "st1")
    revisions = [r for seq in range(1, journal.last_seq() + 1) for r in journal.revisions(seq) if r.revision]
    journal.close()
    try:
        wait_for(lambda: len(sub.on("result")) >= parts and len(sub.on("revision")) >= len(revisions), 10,
                 "not everything reached the broker")
        time.sleep(0.3)
    finally:
        sub.stop()
    assert [m.payload["seq"] for m in sub.on("result")] == list(range(1, parts + 1))
    assert all(m.payload["revision"] == 0 and m.payload["decision_source"] for m in sub.on("result"))
    assert revisions, "the script makes late verdicts: there must be revisions"
    assert sorted((m.payload["seq"], m.payload["revision"]) for m in sub.on("revision")) == sorted(
        (r.seq, r.revision) for r in revisions)
    order = [(m.topic.rsplit("/", 1)[1], m.payload["seq"]) for m in sub.messages
             if m.topic.endswith(("/result", "/revision"))]
    for r in revisions:
        assert order.index(("revision", r.seq)) > order.index(("result", r.seq))
    assert sub.on("state")[-1].payload["state"] == "offline"  # the station stopped


# ---- the real process killed: the last will, the retained state, the resume -----------------------------


@needs_broker
@pytest.mark.slow
def test_killed_station_goes_offline_by_last_will_and_resumes_after_restart(tmp_path, broker):
    drop = tmp_path / "drop"
    drop.mkdir()
    n = 10
    for i in range(n):
        Image.fromarray(frame(i).image).save(drop / f"part{i:02d}.png")
    write_script(tmp_path / "script.json", ["slow"])  # 0.4 s a part: the kill lands mid-run
    cfg = station_dict(tmp_path, model={"backend": FACTORY},
                       cameras=[{"id": "drop", "url": f"folder:{drop}", "folder": {"settle_s": 0.0}}],
                       bus={"publish": f"ipc://{tmp_path}/pub", "control": f"ipc://{tmp_path}/ctl"},
                       mqtt=mqtt_section(broker.port, keepalive_s=5))
    (tmp_path / "station.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "ADFM_FAKE_SCRIPT": str(tmp_path / "script.json"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    sub = Subscriber(broker.port, f"{TOPIC}/#").start()

    def start():
        return subprocess.Popen(
            [sys.executable, "-m", "adfm.appliance.cli", "run", "--config", str(tmp_path / "station.yaml")],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    proc = start()
    try:
        wait_for(lambda: len(sub.on("result")) >= 3 or proc.poll() is not None, 120, "no results")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert sub.on("state")[-1].payload["state"] == "online"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: sub.on("state")[-1].payload["state"] == "offline", 10, "no last will")
        assert "last will" in sub.on("state")[-1].payload["reason"]
        # a client that comes later reads the retained state: the station is offline
        late = Subscriber(broker.port, f"{TOPIC}/state", client_id="late").start()
        wait_for(lambda: late.on("state"), 5, "no retained state")
        assert late.on("state")[0].retain and late.on("state")[0].payload["state"] == "offline"
        late.stop()
        proc = start()
        wait_for(lambda: len({m.payload["seq"] for m in sub.on("result")}) >= n, 120,
                 "the restarted station did not publish the rest")
        assert sub.on("state")[-1].payload["state"] == "online"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sub.stop()
    seqs = [m.payload["seq"] for m in sub.on("result")]
    assert sorted(set(seqs)) == list(range(1, n + 1))  # nothing lost across the kill
    assert seqs == sorted(seqs)  # in seq order; QoS 1 may repeat the few unacknowledged at the kill
    assert len(seqs) - n <= 2, seqs
    assert sub.on("state")[-1].payload["state"] == "offline"
    assert sub.on("state")[-1].payload["reason"] == "the station stopped"


# ---- TLS and a password from a file ------------------------------------------------------------------


@needs_broker
@pytest.mark.skipif(OPENSSL is None or MOSQUITTO_PASSWD is None, reason="needs openssl and mosquitto_passwd")
def test_tls_and_password_file(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    passwords = make_password_file(tmp_path / "broker.passwd", {"st1": "line-secret", "mes": "mes-secret"})
    broker = Mosquitto(tmp_path / "broker", anonymous=False, extra=(
        f"password_file {passwords}\ncafile {tls['ca.crt']}\ncertfile {tls['server.crt']}\n"
        f"keyfile {tls['server.key']}\n")).start()
    journal = Journal(tmp_path / "state", "st1")
    try:
        sub = Subscriber(broker.port, f"{TOPIC}/result", username="mes", password="mes-secret",
                         tls_ca=tls["ca.crt"]).start()
        (tmp_path / "wrong.pw").write_text("guess\n")
        bad = _publisher(journal, mqtt_section(broker.port, username="st1", password_file=str(tmp_path / "wrong.pw"),
                                               tls={"ca": str(tls["ca.crt"])}))
        bad.start()
        wait_for(lambda: "mqtt" in bad.health.alarms(), 10, "a refused login raised no alarm")
        assert "refused the connection" in bad.health.alarms()["mqtt"]
        _journal_part(journal)
        bad.wake()
        time.sleep(1.0)
        bad.stop()
        assert not sub.on("result") and bad.acked_seq == 0  # nothing went out, nothing was skipped
        (tmp_path / "st1.pw").write_text("line-secret\n")
        pub = _publisher(journal, mqtt_section(broker.port, username="st1", password_file=str(tmp_path / "st1.pw"),
                                               tls={"ca": str(tls["ca.crt"])}))
        pub.start()
        _journal_part(journal)
        pub.wake()
        wait_for(lambda: len(sub.on("result")) == 2, 10, "no result over TLS")
        pub.stop()
        sub.stop()
        assert [m.payload["seq"] for m in sub.on("result")] == [1, 2]
        # the listener speaks TLS only: a clear-text client gets no session
        plain = Subscriber(broker.port, f"{TOPIC}/result", client_id="plain", username="mes",
                           password="mes-secret")
        with pytest.raises((OSError, AssertionError)):
            plain.start(timeout_s=2)
        plain.client.loop_stop()
    finally:
        journal.close()
        broker.close()


@needs_broker
@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
def test_client_certificate(tmp_path):
    """A broker that requires a client certificate: the station with tls.cert/tls.key gets in; without
    them the handshake fails, the alarm says so and nothing is skipped."""
    tls = make_tls_files(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", extra=(
        f"cafile {tls['ca.crt']}\ncertfile {tls['server.crt']}\nkeyfile {tls['server.key']}\n"
        "require_certificate true\n")).start()
    journal = Journal(tmp_path / "state", "st1")
    try:
        sub = Subscriber(broker.port, f"{TOPIC}/result", tls_ca=tls["ca.crt"], tls_cert=tls["mes.crt"],
                         tls_key=tls["mes.key"]).start()
        bare = _publisher(journal, mqtt_section(broker.port, tls={"ca": str(tls["ca.crt"])}))
        bare.start()
        wait_for(lambda: "mqtt" in bare.health.alarms(), 10, "a refused handshake raised no alarm")
        _journal_part(journal)
        bare.wake()
        time.sleep(0.5)
        bare.stop()
        assert not sub.on("result") and bare.acked_seq == 0
        pub = _publisher(journal, mqtt_section(broker.port, tls={"ca": str(tls["ca.crt"]), "cert": str(tls["st1.crt"]),
                                                                 "key": str(tls["st1.key"])}))
        pub.start()
        wait_for(lambda: len(sub.on("result")) == 1, 10, "no result with a client certificate")
        pub.stop()
        sub.stop()
        assert sub.on("result")[0].payload["seq"] == 1
    finally:
        journal.close()
        broker.close()

