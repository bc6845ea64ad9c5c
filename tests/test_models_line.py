"""New models onto a running line (line mode, the pymodbus PLC stand-in at 5 parts/s, real sockets,
real SQLite): a candidate in shadow beside the active model, compared; promoted and rolled back with
CURVE keys; refused promotions change nothing.

The two models are rule models (tests/model_support.py): the active one says `yes` above brightness
100, the candidate above 150. The synthetic camera's frames are uniform grey levels, so every
expected answer and agreement figure is counted here independently, from the journaled images.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("pymodbus")

from adfm.appliance.journal.store import Journal, decode_image
from adfm.appliance.models.store import ModelStore
from tests.line_support import LineRun, Plc, SyntheticStream, free_port, line_config
from tests.model_support import RULE_FACTORY, make_rule_model, rule_says_defect

RATE = 5.0
ACTIVE_T, CANDIDATE_T, TRUTH_T = 100.0, 150.0, 120.0


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _station(tmp_path: Path, port: int, **models) -> tuple[dict, str, str]:
    """A line config on rule model A (active) with rule model B in the store; (config, A id, B id)."""
    a = make_rule_model(tmp_path / "model-a", ACTIVE_T)
    b = make_rule_model(tmp_path / "model-b", CANDIDATE_T)
    cfg = line_config(tmp_path, port, deadline_ms=500, counter=True)
    cfg["model"].update(dir=str(a), backend=RULE_FACTORY)
    cfg["models"] = {"shadow_share": "all", "shadow_queue": 64, **models}
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from adfm.appliance.cli import main

    assert main(["models", "add", str(b), "--config", str(path)]) == 0
    store = ModelStore(tmp_path / "state" / "models")
    from adfm.manifest import read_manifest

    return cfg, read_manifest(a).model_id, store.models()[0].model_id


def _start(cfg: dict) -> LineRun:
    """The real service in line mode on a synthetic camera, each model run by its own backend."""
    from adfm.appliance.config.station import parse_config
    from adfm.appliance.service import Service
    from adfm.camera.capture_thread import CameraWorker

    config = parse_config(cfg)
    cam_cfg = config.cameras[0].camera_config()
    camera = CameraWorker(cam_cfg, source=SyntheticStream(cam_cfg, fps=30.0))
    service = Service(config, cameras={"cam0": camera})
    run = LineRun(service, threading.Thread(target=service.run, name="line-service", daemon=True))
    run.thread.start()
    end = time.monotonic() + 300
    while getattr(service, "line", None) is None or service.line.link is None or not service.line.link.connected:
        assert run.thread.is_alive(), "the service ended during start-up"
        assert time.monotonic() < end, "the line did not come up"
        time.sleep(0.05)
    return run


def _brightness(journal: Journal, seq: int) -> float:
    r = journal.get(seq)
    assert r is not None and r.image_path, f"seq {seq} has no image"
    return float(np.asarray(decode_image(journal.image_file(r.image_path)), dtype=np.float64).mean())


def _verdict(brightness: float, threshold: float) -> str:
    return "fail" if rule_says_defect(np.full((1, 1), brightness), threshold) else "pass"


def _shadow_rows(journal: Journal) -> list[tuple[int, int, str, str]]:
    conn = journal._conn()
    return conn.execute("SELECT id, seq, model_id, verdict FROM shadow_results ORDER BY id").fetchall()


def _every_trigger_decided_once(plc: Plc, journal: Journal, parts: int) -> list:
    """The PLC saw one result write per trigger, each seq once; the journal has one decision each."""
    writes = [w["seq"] for w in plc.result_writes()]
    assert len(plc.triggers()) == parts
    assert sorted(writes) == list(range(1, parts + 1)), "every trigger decided once, none twice"
    decisions = [journal.revisions(seq)[0] for seq in range(1, parts + 1)]
    assert all(d.revision == 0 and d.decision_source is not None for d in decisions)
    assert len({d.part_id for d in decisions}) == parts
    return decisions


def test_a_candidate_in_shadow_is_journaled_published_never_acted_on_and_compared(tmp_path, capsys):
    from adfm.appliance.bus.client import ShadowResult, StationClient

    parts = 40
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=RATE, parts=parts, start_delay=6.0)
    cfg, a_id, b_id = _station(tmp_path, port)
    cfg["bus"]["plain_roles"] = ["verdict", "model"]
    store = ModelStore(tmp_path / "state" / "models")
    state = store.state()
    state.shadow = b_id  # the store says B runs in shadow: the station resumes it at start
    store.save(state)
    run = _start(cfg)
    bus = run.service.bus.bound
    client = StationClient(bus["publish"][0], bus["control"][0], from_seq=1, timeout_s=5.0, shadow=True)
    client.connect()
    events: list = []
    try:
        _wait(plc.done, parts / RATE + 60, "the PLC to present every part")
        _wait(lambda: run.service.model_control.shadow.answered + run.service.model_control.shadow.dropped >= parts,
              60, "the candidate's answers")
        end = time.monotonic() + 3
        while time.monotonic() < end:
            events += client.poll(0.2)
        journal = run.service.journal
        # operators judge the odd seqs: a defect is brighter than 120
        for seq in range(1, parts + 1, 2):
            truth = _brightness(journal, seq) > TRUTH_T
            client.send_verdict(seq, "confirmed_defect" if truth else "false_alarm", "anna")
        counters = run.service.health.snapshot().counters
    finally:
        client.close()
        run.stop()
        plc.kill()

    assert counters["shadow_dropped"] == 0 and counters["shadow_answered"] == parts
    with Journal(tmp_path / "state", "st1") as journal:
        decisions = _every_trigger_decided_once(plc, journal, parts)
        bright = {seq: _brightness(journal, seq) for seq in range(1, parts + 1)}
        # the line's decisions are the active model's, named so; the candidate never decided a part
        assert {d.model_id for d in decisions} == {a_id}
        for d in decisions:
            if d.decision_source == "vlm":
                assert d.verdict == _verdict(bright[d.seq], ACTIVE_T)
        # one shadow answer per part, the candidate's own (its rule on the journaled image)
        rows = _shadow_rows(journal)
        assert sorted(r[1] for r in rows) == list(range(1, parts + 1))
        assert all(r[2] == b_id and r[3] == _verdict(bright[r[1]], CANDIDATE_T) for r in rows)
        # the main rows and revisions never carry the candidate
        assert all(r.model_id == a_id for seq in range(1, parts + 1) for r in journal.revisions(seq))
        active_answer = {}
        for seq in range(1, parts + 1):
            own = [r for r in journal.revisions(seq) if r.decision_source == "vlm"]
            active_answer[seq] = own[-1].verdict if own else journal.revisions(seq)[0].verdict
    # published live on shadow.<station>, numbered by their journal rows; not on the results topic
    shadow_events = [e for e in events if isinstance(e, ShadowResult)]
    assert sorted((e.row_id, e.result.seq, e.result.verdict) for e in shadow_events) == sorted(
        (r[0], r[1], r[3]) for r in rows)
    assert all(e.result.decision_source is None and e.result.action is None for e in shadow_events)
    results = [e for e in events if type(e).__name__ == "InspectionResult"]
    assert results and all(r.model_id == a_id for r in results)
    # the PLC got exactly one write per part: the shadow wrote nothing
    assert len(plc.result_writes()) == parts

    # the comparison against an independent count
    from adfm.appliance.cli import main

    capsys.readouterr()
    assert main(["models", "compare", "--config", str(tmp_path / "station.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cand = {seq: _verdict(b, CANDIDATE_T) for seq, b in bright.items()}
    truth = {seq: _verdict(bright[seq], TRUTH_T) for seq in range(1, parts + 1, 2)}
    agree = sum(cand[s] == active_answer[s] for s in cand)
    disagree = [s for s in cand if cand[s] != active_answer[s]]
    assert 0 < agree < parts, "the two models must both agree and disagree on this run's parts"
    assert report["candidate"] == b_id and report["shadowed_parts"] == parts
    assert (report["with_active"]["agree"], report["with_active"]["parts"]) == (agree, parts)
    assert report["candidate_vs_operator"]["parts"] == len(truth)
    assert report["candidate_vs_operator"]["agree"] == sum(cand[s] == truth[s] for s in truth)
    assert report["active_vs_operator"]["agree"] == sum(active_answer[s] == truth[s] for s in truth)
    assert [p["seq"] for p in report["disagreement_parts"]] == disagree
    assert all(p["candidate"]["boxes"] for p in report["disagreement_parts"] if p["candidate"]["verdict"] == "fail")
    lo, hi = report["with_active"]["interval95"]
    assert lo < agree / parts < hi
    assert main(["models", "compare", "--config", str(tmp_path / "station.yaml")]) == 0
    text = capsys.readouterr().out
    assert f"agreement with the active model:  {agree}/{parts}" in text and "where they disagree" in text


def test_promote_and_rollback_on_a_running_line_with_keys_and_the_guard(tmp_path):
    from adfm.appliance.bus.client import StationClient, StationError
    from adfm.appliance.bus.keys import admit_client, load_client_curve
    from adfm.schema import ModelRequest
    from tests.appliance_fakes import make_keys

    parts = 60
    keys = make_keys(tmp_path / "keys", ["qe", "review"])
    admit_client(tmp_path / "keys", "qe", keys.client_secrets["qe"].with_suffix(".key"), None, force=True,
                 roles=["model", "verdict"])
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=RATE, parts=parts, start_delay=6.0)
    cfg, a_id, b_id = _station(tmp_path, port, guard=True, guard_min_parts=5)
    cfg["bus"]["curve"] = {"server_secret": str(keys.server_secret),
                           "authorized_clients": str(keys.authorized_clients)}
    run = _start(cfg)
    bus = run.service.bus.bound

    def client(name: str) -> StationClient:
        curve = load_client_curve(keys.server_public, keys.client_secrets[name])
        return StationClient(bus["publish"][0], bus["control"][0], curve=curve, timeout_s=20.0, retries=1)

    decided = lambda: run.service.line.decided  # noqa: E731
    qe, review = client("qe"), client("review")
    try:
        assert "shadow run of" in qe.request(ModelRequest(action="shadow", model_id=b_id, operator="lee")).detail
        _wait(lambda: decided() >= 12, 60, "12 decided parts")
        with pytest.raises(StationError, match="client key 'review' has no role 'model'"):
            review.request(ModelRequest(action="promote", model_id=b_id, operator="anna"))
        with pytest.raises(StationError, match=r"guard: \d+ shadowed part\(s\) .* with an operator verdict"):
            qe.request(ModelRequest(action="promote", model_id=b_id, operator="lee"))
        # operators judge the first 10 parts: the candidate's threshold is the right one here
        journal = run.service.journal
        _wait(lambda: run.service.model_control.shadow.answered >= 10, 30, "10 shadow answers")
        for seq in range(1, 11):
            defect = _brightness(journal, seq) > CANDIDATE_T
            qe.send_verdict(seq, "confirmed_defect" if defect else "false_alarm", "lee")
        promoted = qe.request(ModelRequest(action="promote", model_id=b_id, operator="lee")).detail
        switch1 = int(promoted.split("from seq ")[1].split(";")[0])
        _wait(lambda: decided() >= switch1 + 15, 60, "15 parts on the promoted model")
        rolled = qe.request(ModelRequest(action="rollback", operator="lee")).detail
        switch2 = int(rolled.split("from seq ")[1].split(" ")[0])
        _wait(plc.done, parts / RATE + 60, "the PLC to present every part")
        _wait(lambda: len(plc.result_writes()) >= parts and not run.service.line.controller.parts, 30,
              "every decision")
    finally:
        qe.close()
        review.close()
        run.stop()
        plc.kill()

    assert "guard met" in promoted and f"promoted {b_id} (was {a_id})" in promoted
    assert f"rolled back to {a_id} (was {b_id})" in rolled
    assert 1 < switch1 < switch2 <= parts, (switch1, switch2)
    with Journal(tmp_path / "state", "st1") as journal:
        decisions = _every_trigger_decided_once(plc, journal, parts)
        for d in decisions:  # the switch falls on a part boundary; each result names its model
            expected = b_id if switch1 <= d.seq < switch2 else a_id
            assert d.model_id == expected, (d.seq, d.model_id, switch1, switch2)
            if d.decision_source == "vlm":  # …which is the model that actually answered
                t = CANDIDATE_T if expected == b_id else ACTIVE_T
                assert d.verdict == _verdict(_brightness(journal, d.seq), t), d.seq
        assert any(d.decision_source == "vlm" and d.model_id == b_id for d in decisions)
        commands = [(c["command"], c["argument"], c["client"], c["operator"], c["accepted"])
                    for c in journal.commands()]
        assert commands == [
            ("model", f"shadow {b_id}", "qe", "lee", True),
            ("model", f"promote {b_id}", "review", "anna", False),
            ("model", f"promote {b_id}", "qe", "lee", False),
            ("model", f"promote {b_id}", "qe", "lee", True),
            ("model", "rollback", "qe", "lee", True),
        ]
        refused = journal.commands()[2]["detail"]
        assert refused.startswith("refused: guard:")
    state = ModelStore(tmp_path / "state" / "models").state()
    # promoting B ended its shadow run; rolling back made A active again with nothing left to roll back to
    assert (state.active, state.previous, state.shadow) == (a_id, [], None)
