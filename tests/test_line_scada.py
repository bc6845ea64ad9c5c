"""Recipes chosen by the PLC's register and by a control command, the OPC UA node set read with a real
asyncua client, and `adfm-appliance plc-probe` against the PLC stand-in."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

pytest.importorskip("pymodbus")
pytest.importorskip("asyncua")

from adfm.appliance.journal.store import Journal
from adfm.schema import Ack, RecipeRequest
from tests.appliance_fakes import calls, make_model_dir, write_script
from tests.line_support import REPO, Plc, free_port, line_config, start_line
from tests.plc_standin import REJECT_COIL

RECIPES = [
    {"name": "widget-a", "code": 1, "deadline_ms": 500},
    {"name": "widget-b", "code": 2, "deadline_ms": 600, "failsafe": "hold"},
]


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_recipes_from_the_plc_register_and_by_command_and_the_opcua_nodes(tmp_path):
    from asyncua.sync import Client

    port, opc_port = free_port(), free_port()
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/adfm/"
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=5, parts=8, recipe=2)  # the PLC selects widget-b
    script = write_script(tmp_path / "script.json", ["no", "late"], late_s=1.0, cycle=True)
    # widget-b has its own model (here: the same scripted backend behind a model exported with
    # another prompt version), so the runner switches the worker's model for its parts.
    model_b = make_model_dir(tmp_path / "model-b", prompt_version="one-stage-v1")
    recipes = [RECIPES[0], {**RECIPES[1], "model_dir": str(model_b)}]
    cfg = line_config(tmp_path, port, deadline_ms=500, recipes=recipes,
                      opcua={"endpoint": endpoint, "namespace": "urn:adfm:test", "last_results": 5})
    cfg.setdefault("bus", {})["plain_roles"] = ["verdict", "recipe"]  # changeover by a loopback client
    run, _ = start_line(cfg, script)
    service = run.service
    try:
        _wait(plc.done, 30, "the PLC's parts")
        _wait(lambda: len(plc.result_writes()) >= 8 and not service.line.controller.parts, 20, "decisions")
        # Changeover by command: a trigger whose recipe register reads 0 takes the commanded recipe.
        from adfm.appliance.bus.client import StationClient, StationError

        bus = service.bus.bound
        with StationClient(bus["publish"][0], bus["control"][0], timeout_s=3.0) as client:
            reply = client.request(RecipeRequest(recipe="widget-a"))
            assert isinstance(reply, Ack), reply
            with pytest.raises(StationError, match="unknown recipe 'nope'"):
                client.request(RecipeRequest(recipe="nope"))
        _wait(lambda: service.line.controller.active_recipe == "widget-a", 5, "the changeover")
        service.line.trigger_now(part_id="cmd-1", recipe_code=0)
        _wait(lambda: any(r.part_id == "cmd-1" for r in run.results), 5, "the commanded part")
        # its model's answer, in time or as a revision: on a busy machine switching the worker back to
        # the default model can take longer than the deadline
        _wait(lambda: any(r.part_id == "cmd-1" and r.decision_source == "vlm" for r in run.results), 60,
              "the VLM's answer on the commanded part")

        # the OPC UA server starts beside the line (its own process), not before it: wait until it listens
        assert service.line.opcua.ready.wait(60), "the OPC UA server did not come up"
        with Client(endpoint) as opc:
            ns = opc.get_namespace_index("urn:adfm:test")
            station = opc.nodes.objects.get_child([f"{ns}:Station"])

            def node(*path):
                return station.get_child([f"{ns}:{p}" for p in path]).read_value()

            _wait(lambda: node("Counters", "Decided") == 9, 5, "the OPC UA counters")
            assert node("State") in ("running", "degraded") and node("Station") == "st1"
            assert node("Recipe") == "widget-a" and node("ModelId")
            assert node("LastSeq") == 9
            assert node("Counters", "Vlm") + node("Counters", "FailSafeTimeout") == 9
            counters = {k: node("Counters", k) for k in ("Pass", "Reject", "Hold", "FailSafeTimeout")}
            last = [json.loads(x) for x in node("LastResults")]
            assert len(last) == 5 and last[0]["part_id"] == "cmd-1" and last[0]["recipe"] == "widget-a"
            assert isinstance(node("Alarms"), list)
    finally:
        run.stop()
        plc.kill()
    with Journal(tmp_path / "state", "st1") as journal:
        firsts = [journal.revisions(s)[0] for s in range(1, journal.last_seq() + 1)]
    assert [r.recipe for r in firsts] == ["widget-b"] * 8 + ["widget-a"]
    assert [r.prompt_version for r in firsts] == ["one-stage-v1"] * 8 + ["multi-stage-v1"]
    seen = calls(script)
    assert {c["prompt_version"] for c in seen} == {"one-stage-v1", "multi-stage-v1"}
    assert len({c["pid"] for c in seen}) >= 2  # a worker per model, one loaded at a time
    assert {r.deadline_ms for r in firsts[:8]} == {600.0}
    assert all(r.action == "hold" for r in firsts[:8] if r.decision_source == "failsafe_timeout")
    # The OPC UA counters are the journal's: widget-b's fail-safe is hold (widget-a's part may also
    # time out while the worker switches back to its model: that one is a reject).
    assert counters == {
        "Pass": sum(r.action == "pass" for r in firsts),
        "Reject": sum(r.action == "reject" for r in firsts),
        "Hold": sum(r.action == "hold" for r in firsts),
        "FailSafeTimeout": sum(r.decision_source == "failsafe_timeout" for r in firsts),
    }
    assert counters["Hold"] > 0


@pytest.mark.slow
def test_plc_probe_reads_the_trigger_and_pulses_only_when_asked(tmp_path):
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=0, parts=0)
    try:
        cfg = line_config(tmp_path, port)
        path = tmp_path / "station.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "adfm.appliance.cli", "plc-probe", str(path)]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["ok"] and report["trigger"] == {"table": "discrete_input", "address": 0, "level": False}
        assert "pulsed" not in report
        assert not any(e["ev"] == "write" and e["fc"] in (5, 15) for e in plc.events())  # nothing written

        out = subprocess.run([*cmd, "--pulse-reject"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["pulsed"] == {"coil": REJECT_COIL, "ms": 60.0}
        assert len(plc.pulses()) == 1 and plc.pulses()[0][1] is not None
    finally:
        plc.kill()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)  # the PLC is gone
    assert out.returncode == 1 and "cannot connect" in json.loads(out.stdout)["error"]
