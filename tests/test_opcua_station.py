"""A real line station (PLC stand-in, scripted model, journal) seen by an MES over OPC UA for Machine
Vision: a ResultReadyEvent for every decision, the same results through GetResultListFiltered, and a
recipe changeover through PrepareRecipe that the next part runs with."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("pymodbus")
pytest.importorskip("asyncua")

from asyncua import Client, ua

from tests.appliance_fakes import write_script
from tests.line_support import Plc, free_port, line_config, start_line
from tests.opcua_support import (
    CLIENT_URI,
    MV_URI,
    RESULT_READY_EVENT_TYPE,
    add_user,
    client_certificate,
    find_vision_systems,
    method,
)

RECIPES = [{"name": "widget-a", "code": 1, "deadline_ms": 500}, {"name": "widget-b", "code": 2, "deadline_ms": 600}]
PARTS = 6


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


class Events:
    def __init__(self) -> None:
        self.got: list = []

    def event_notification(self, event) -> None:
        self.got.append(event)


@pytest.mark.slow
def test_mes_gets_every_decision_as_an_event_and_changes_the_recipe(tmp_path):
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/adfm/"
    pki = tmp_path / "pki"
    add_user(pki, "mes", "m-secret", ["recipe"])
    cert, key = asyncio.run(client_certificate(tmp_path / "client"))
    (pki / "trusted").mkdir(parents=True)
    (pki / "trusted" / "mes-client.der").write_bytes(cert.read_bytes())
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=0, parts=0)  # parts come from software triggers, once the client listens
    script = write_script(tmp_path / "script.json", ["no", "yes", "late"], late_s=1.0, cycle=True)
    cfg = line_config(tmp_path, port, deadline_ms=500, recipes=RECIPES,
                      opcua={"endpoint": endpoint, "namespace": "urn:adfm:test", "pki_dir": str(pki)})
    run, _ = start_line(cfg, script)
    service = run.service
    try:
        assert service.line.opcua.ready.wait(60), "the OPC UA server did not come up"

        async def mes():
            client = Client(endpoint)
            client.application_uri = CLIENT_URI
            await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
            client.set_user("mes")
            client.set_password("m-secret")
            async with client:
                await client.load_data_type_definitions()
                (vs,) = await find_vision_systems(client)
                mv = await client.get_namespace_index(MV_URI)
                handler = Events()
                sub = await client.create_subscription(50, handler)
                await sub.subscribe_events(vs, ua.NodeId(RESULT_READY_EVENT_TYPE, mv))
                await asyncio.sleep(0.3)
                for i in range(PARTS):
                    service.line.trigger_now(part_id=f"opc-{i}")
                    await asyncio.sleep(0.25)
                end = time.monotonic() + 60
                while sum(e.ResultId.Id.endswith("/0") for e in handler.got) < PARTS and time.monotonic() < end:
                    await asyncio.sleep(0.1)
                firsts = [e for e in handler.got if e.ResultId.Id.endswith("/0")]

                results, get_list = await method(vs, mv, "ResultManagement", "GetResultListFiltered")
                _, _, _, listed, _ = await results.call_method(
                    get_list, ua.Variant(0, ua.VariantType.Int32), ua.MeasIdDataType(Id=""),
                    ua.PartIdDataType(Id=""), ua.RecipeIdExternalDataType(Id=""), ua.RecipeIdInternalDataType(Id=""),
                    ua.ConfigurationIdDataType(Id=""), ua.ConfigurationIdDataType(Id=""), ua.ProductIdDataType(Id=""),
                    ua.JobIdDataType(Id=""), ua.Variant(0, ua.VariantType.UInt32), ua.Variant(0, ua.VariantType.UInt32),
                    ua.Variant(1000.0, ua.VariantType.Double))

                recipes, prepare = await method(vs, mv, "RecipeManagement", "PrepareRecipe")
                _, done, error = await recipes.call_method(
                    prepare, ua.RecipeIdExternalDataType(Id="widget-b"), ua.RecipeIdInternalDataType(Id=""))
                state = await (await vs.get_child([f"{mv}:VisionStateMachine", "0:CurrentState"])).read_value()
                await sub.delete()
                return firsts, listed, done and error == 0, state.Text

        firsts, listed, prepared, state = asyncio.run(mes())
        assert prepared and service.line.controller.active_recipe == "widget-b"
        service.line.trigger_now(part_id="after-prepare")
        _wait(lambda: any(r.part_id == "after-prepare" for r in run.results), 10, "the part after PrepareRecipe")
    finally:
        run.stop()
        plc.kill()

    decided = {r.seq: r for r in run.results if r.revision == 0 and r.part_id.startswith("opc-")}
    assert len(decided) == PARTS
    # one event per decision, each naming its part and carrying what the line did
    by_seq = {int(e.ResultId.Id.split("/")[2]): e for e in firsts}
    assert sorted(by_seq) == sorted(decided)
    for seq, r in decided.items():
        ev = by_seq[seq]
        content = {v.Value.Key.Name: v.Value.Value.Value for v in ev.ResultContent}
        assert ev.PartId.Id == r.part_id and ev.InternalRecipeId.Id == "widget-a"
        assert content["Action"] == r.action and content["DecisionSource"] == r.decision_source
        assert content["Verdict"] == r.verdict and content["ModelId"] == r.model_id
        assert ev.ResultState == (1 if r.decision_source in ("gate", "vlm") else 3)
    assert [x.PartId.Id for x in listed] == [f"opc-{i}" for i in range(PARTS)]
    assert state in ("Operational", "Error")
    after = next(r for r in run.results if r.part_id == "after-prepare")
    assert after.recipe == "widget-b"
    command = service.journal.commands()[-1]
    assert (command["argument"], command["client"], command["accepted"]) == ("widget-b", "opcua:mes", True)
