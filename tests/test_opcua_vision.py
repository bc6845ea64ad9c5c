"""The station's OPC UA for Machine Vision server against a real asyncua client: found by the
standard type definitions, results read through the standard methods from a real journal,
ResultReadyEvents with every property set, and who may call and write what."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("asyncua")

from asyncua import Client, ua

from adfm.appliance.config.line import OpcUaSection
from adfm.appliance.journal.store import Journal
from adfm.appliance.plc.opcua import StationOpcUa
from adfm.appliance.system.health import Health
from adfm.schema import Box, InspectionResult
from tests.line_support import free_port
from tests.opcua_support import (
    CLIENT_URI,
    MV_URI,
    RESULT_READY_EVENT_TYPE,
    add_user,
    client_certificate,
    find_vision_systems,
    method,
)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
SOURCES = ["gate", "vlm", "failsafe_timeout", "vlm"]
ACTIONS = {"gate": "pass", "vlm": "reject", "failsafe_timeout": "reject"}


def _journal_part(journal: Journal, i: int, recipe: str, source: str) -> InspectionResult:
    part = journal.accept(np.zeros((8, 8, 3), np.uint8), part_id=f"p{i}", camera="cam0", frame_number=i,
                          captured_wall=(T0 + timedelta(seconds=i)).timestamp(), product="widget")
    action = ACTIONS[source] if source != "vlm" or i % 2 else "pass"
    r = InspectionResult(
        station="st1", seq=part.seq, part_id=f"p{i}", camera="cam0", frame_number=i,
        captured_at=T0 + timedelta(seconds=i), verdict="fail" if action == "reject" else "pass",
        decision=action == "reject", boxes=[Box.from_xyxy([1, 2, 5, 6], "scratch")] if action == "reject" else [],
        model_id="m-a" if recipe == "widget-a" else "m-b", prompt_version="multi-stage-v1",
        decision_source=source, action=action, recipe=recipe, revision=0,  # type: ignore[arg-type]
        triggered_at=T0 + timedelta(seconds=i), decided_at=T0 + timedelta(seconds=i, milliseconds=300),
    )
    return journal.complete(r)


class FakeLine:
    """What StationOpcUa reads from a LineStation, over a real journal and health record."""

    def __init__(self, journal: Journal) -> None:
        self.cfg = SimpleNamespace(station="st1")
        self.journal = journal
        self.health = Health("st1", last_seq=journal.last_seq)
        self.controller = SimpleNamespace(active_recipe="widget-a")
        self.recipes = {"widget-a": SimpleNamespace(model="default", product="widget"),
                        "widget-b": SimpleNamespace(model="b", product="gadget")}
        self.models = {"default": SimpleNamespace(info=SimpleNamespace(model_id="m-a")),
                       "b": SimpleNamespace(info=SimpleNamespace(model_id="m-b"))}
        self.selected: list[str] = []

    def select_recipe(self, name: str) -> None:
        self.controller.active_recipe = name
        self.selected.append(name)


@pytest.fixture
def station(tmp_path):
    journal = Journal(tmp_path / "state", "st1")
    line = FakeLine(journal)
    pki = tmp_path / "pki"
    add_user(pki, "reader", "r-secret")
    add_user(pki, "mes", "m-secret", ["recipe"])
    cell_cert, cell_key = asyncio.run(client_certificate(tmp_path / "user-cert", "cell"))
    add_user(pki, "cell", None, ["recipe"], cert=cell_cert)
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/adfm/"
    cfg = OpcUaSection(endpoint=endpoint, namespace="urn:adfm:test", pki_dir=pki, result_page=3)
    early = [_journal_part(journal, i, "widget-a", s) for i, s in enumerate(SOURCES, start=1)]
    opc = StationOpcUa(cfg, line)
    t = time.perf_counter()
    opc.start()
    started_in = time.perf_counter() - t
    assert opc.ready.wait(30), "the OPC UA server did not come up"
    yield SimpleNamespace(opc=opc, line=line, journal=journal, endpoint=endpoint, pki=pki, early=early,
                          started_in=started_in, tmp=tmp_path, cell=(cell_cert, cell_key))
    opc.stop()
    journal.close()


async def _secure(client: Client, tmp) -> None:
    cert, key = await client_certificate(tmp / "client")
    client.application_uri = CLIENT_URI
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")


def _trust_client(st) -> None:
    (st.pki / "trusted").mkdir(parents=True, exist_ok=True)
    (st.pki / "trusted" / "mes-client.der").write_bytes((st.tmp / "client" / "mes-client.der").read_bytes())


def _content(variants) -> dict:
    """ResultContent's KeyValuePairs (each in a Variant: the field is an array of BaseDataType)."""
    pairs = [v.Value if isinstance(v, ua.Variant) else v for v in variants]
    assert all(isinstance(p, ua.KeyValuePair) for p in pairs), pairs
    return {p.Key.Name: p.Value.Value for p in pairs}


class Events:
    def __init__(self) -> None:
        self.got: list = []

    def event_notification(self, event) -> None:
        self.got.append(event)


def test_start_returns_before_the_nodeset_is_loaded(station):
    # start() only starts the thread: the nodeset's import (~1 s) happens there, not in the line's start
    assert station.started_in < station.opc.load_s
    assert station.opc.load_s > 0 and station.opc.start_s >= station.opc.load_s


def test_anonymous_client_finds_the_vision_system_reads_and_gets_events_but_may_not_call_or_write(station):
    async def main():
        async with Client(station.endpoint) as client:
            await client.load_data_type_definitions()
            (vs,) = await find_vision_systems(client)
            mv = await client.get_namespace_index(MV_URI)
            state = await (await vs.get_child([f"{mv}:VisionStateMachine", "0:CurrentState"])).read_value()
            assert state.Text == "Operational"
            system_state = await (await vs.get_child(f"{mv}:SystemState")).read_value()
            assert system_state.State == ua.SystemStateDataType.PRD_1

            handler, at_server = Events(), Events()
            sub = await client.create_subscription(50, handler)
            await sub.subscribe_events(vs, ua.NodeId(RESULT_READY_EVENT_TYPE, mv))
            sub2 = await client.create_subscription(50, at_server)  # SCADA often listens at the Server object
            await sub2.subscribe_events(client.nodes.server, ua.NodeId(RESULT_READY_EVENT_TYPE, mv))
            await asyncio.sleep(0.3)
            new = [_journal_part(station.journal, i, "widget-a", s) for i, s in enumerate(SOURCES, start=10)]
            for r in new:
                station.opc.result(r)
            end = time.monotonic() + 10
            while (len(handler.got) < len(new) or len(at_server.got) < len(new)) and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert len(handler.got) == len(new)
            assert [e.ResultId.Id for e in at_server.got] == [e.ResultId.Id for e in handler.got]
            assert {e.SourceNode for e in at_server.got + handler.got} == {vs.nodeid}
            epoch = station.journal.epoch
            for r, ev in zip(new, handler.got, strict=True):
                fields = ev.get_event_props_as_fields_dict()
                for name in ("ResultId", "IsPartial", "ResultState", "JobId", "InternalRecipeId",
                             "InternalConfigurationId", "CreationTime", "PartId", "ExternalRecipeId",
                             "ProductId", "ProcessingTimes", "ResultContent"):
                    assert fields[name].Value is not None, name
                assert ev.ResultId.Id == f"st1/{epoch}/{r.seq}/0"
                assert ev.PartId.Id == r.part_id and ev.ProductId.Id == "widget"
                assert ev.ResultState == (3 if r.decision_source == "failsafe_timeout" else 1)  # Aborted/Completed
                content = _content(ev.ResultContent)
                assert content["Verdict"] == r.verdict and content["Action"] == r.action
                assert content["DecisionSource"] == r.decision_source and content["ModelId"] == "m-a"
                assert content["Boxes"] == ([1.0, 2.0, 5.0, 6.0] if r.boxes else [])
                assert content["Seq"] == r.seq
            await sub.delete()
            await sub2.delete()

            _, get_by_id = await method(vs, mv, "ResultManagement", "GetResultById")
            results = await vs.get_child(f"{mv}:ResultManagement")
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await results.call_method(get_by_id, ua.ResultIdDataType(Id=f"st1/{epoch}/1/0"),
                                          ua.Variant(1000.0, ua.VariantType.Double))
            current = await vs.get_child([f"{mv}:VisionStateMachine", "0:CurrentState"])
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await current.write_value(ua.LocalizedText("Halted"))
            # a password over policy None is refused
        bad = Client(station.endpoint)
        bad.set_user("mes")
        bad.set_password("m-secret")
        with pytest.raises(ua.UaError):
            await bad.connect()
        await bad.disconnect()

    asyncio.run(main())


def test_logged_in_users_read_results_through_the_methods_and_the_recipe_role_changes_the_recipe(station):
    epoch = station.journal.epoch
    revised = station.journal.revise(station.early[2].model_copy(update={
        "revision": 1, "decision_source": "vlm", "verdict": "pass", "action": "pass"}))

    async def session(user: str, password: str, fn):
        client = Client(station.endpoint)
        await _secure(client, station.tmp)
        _trust_client(station)
        client.set_user(user)
        client.set_password(password)
        async with client:
            await client.load_data_type_definitions()
            (vs,) = await find_vision_systems(client)
            mv = await client.get_namespace_index(MV_URI)
            return await fn(client, vs, mv)

    async def reader(client, vs, mv):
        results, get_by_id = await method(vs, mv, "ResultManagement", "GetResultById")
        _, get_list = await method(vs, mv, "ResultManagement", "GetResultListFiltered")
        _, result, error = await results.call_method(
            get_by_id, ua.ResultIdDataType(Id=f"st1/{epoch}/2/0"), ua.Variant(1000.0, ua.VariantType.Double))
        assert error == 0 and result.ResultId.Id == f"st1/{epoch}/2/0" and result.PartId.Id == "p2"
        assert result.ResultState == 1 and result.InternalRecipeId.Id == "widget-a"
        # the recipe ids arrive as their own types (the nodeset leaves their definitions empty)
        assert type(result.InternalRecipeId).__name__ == "RecipeIdInternalDataType"
        assert type(result.ExternalRecipeId).__name__ == "RecipeIdExternalDataType"
        assert _content(result.ResultContent)["Verdict"] == station.early[1].verdict == "pass"
        _, components = await method(vs, mv, "ResultManagement", "GetResultComponentsById")
        parts = await results.call_method(components, ua.ResultIdDataType(Id=f"st1/{epoch}/3/0"),
                                          ua.Variant(1000.0, ua.VariantType.Double))
        assert len(parts) == 17 and parts[-1] == 0  # …, Error
        assert parts[4] == 3 and parts[6].Id == "p3" and parts[12].Id == f"st1/{epoch}"  # Aborted, PartId, JobId
        assert _content(parts[15])["DecisionSource"] == "failsafe_timeout"
        _, rev, _ = await results.call_method(
            get_by_id, ua.ResultIdDataType(Id=f"st1/{epoch}/3/1"), ua.Variant(1000.0, ua.VariantType.Double))
        assert rev.ResultState == 1 and _content(rev.ResultContent)["Revision"] == 1  # the revision's own result
        with pytest.raises(ua.uaerrors.BadNotFound):
            await results.call_method(get_by_id, ua.ResultIdDataType(Id=f"st1/{epoch}/99/0"),
                                      ua.Variant(1000.0, ua.VariantType.Double))
        with pytest.raises(ua.uaerrors.BadInvalidArgument):
            await results.call_method(get_by_id, ua.ResultIdDataType(Id="st1/old-epoch/2/0"),
                                      ua.Variant(1000.0, ua.VariantType.Double))

        async def listed(state=0, part="", recipe="", start=0, most=0):
            return await results.call_method(
                get_list, ua.Variant(state, ua.VariantType.Int32), ua.MeasIdDataType(Id=""),
                ua.PartIdDataType(Id=part), ua.RecipeIdExternalDataType(Id=recipe),
                ua.RecipeIdInternalDataType(Id=""), ua.ConfigurationIdDataType(Id=""),
                ua.ConfigurationIdDataType(Id=""), ua.ProductIdDataType(Id=""), ua.JobIdDataType(Id=""),
                ua.Variant(most, ua.VariantType.UInt32), ua.Variant(start, ua.VariantType.UInt32),
                ua.Variant(1000.0, ua.VariantType.Double))

        complete, count, _, page, _ = await listed()
        assert count == 4 and not complete and [r.PartId.Id for r in page] == ["p1", "p2", "p3"]  # page of 3
        complete, count, _, page, _ = await listed(start=3)
        assert complete and [r.PartId.Id for r in page] == ["p4"]
        _, count, _, page, _ = await listed(state=3)  # Aborted: the fail-safe's decision
        assert count == 1 and page[0].PartId.Id == "p3"
        _, count, _, page, _ = await listed(part="p2")
        assert count == 1 and page[0].ResultId.Id == f"st1/{epoch}/2/0"
        _, count, _, _, _ = await listed(recipe="widget-b")
        assert count == 0

        recipes, prepare = await method(vs, mv, "RecipeManagement", "PrepareRecipe")
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):  # no recipe role
            await recipes.call_method(prepare, ua.RecipeIdExternalDataType(Id="widget-b"),
                                      ua.RecipeIdInternalDataType(Id=""))
        current = await vs.get_child([f"{mv}:VisionStateMachine", "0:CurrentState"])
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):  # nothing is writable, not even for users
            await current.write_value(ua.LocalizedText("Halted"))

    async def mes(client, vs, mv):
        recipes, prepare = await method(vs, mv, "RecipeManagement", "PrepareRecipe")
        _, unprepare = await method(vs, mv, "RecipeManagement", "UnprepareRecipe")
        _, listing = await method(vs, mv, "RecipeManagement", "GetRecipeListFiltered")
        internal, done, error = await recipes.call_method(
            prepare, ua.RecipeIdExternalDataType(Id="widget-b"), ua.RecipeIdInternalDataType(Id=""))
        assert done and error == 0 and internal.Id == "widget-b" and internal.Version == "m-b"
        with pytest.raises(ua.uaerrors.BadInvalidArgument):
            await recipes.call_method(prepare, ua.RecipeIdExternalDataType(Id="nope"),
                                      ua.RecipeIdInternalDataType(Id=""))
        with pytest.raises(ua.uaerrors.BadInvalidState):  # the line always runs a recipe
            await recipes.call_method(unprepare, ua.RecipeIdExternalDataType(Id="widget-b"),
                                      ua.RecipeIdInternalDataType(Id=""))
        _, count, _, listed, _ = await recipes.call_method(
            listing, ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""),
            ua.Variant(ua.TriStateBooleanDataType.TRUE_1, ua.VariantType.Int32),
            ua.Variant(0, ua.VariantType.UInt32), ua.Variant(0, ua.VariantType.UInt32),
            ua.Variant(1000.0, ua.VariantType.Double))
        assert count == 1 and [r.Id for r in listed] == ["widget-b"]

    asyncio.run(session("reader", "r-secret", reader))
    assert station.line.selected == []
    asyncio.run(session("mes", "m-secret", mes))
    assert station.line.selected == ["widget-b"]
    commands = station.journal.commands()
    assert [(c["argument"], c["client"], c["accepted"]) for c in commands] == [
        ("widget-b", "opcua:mes", True), ("nope", "opcua:mes", False)]
    assert revised.revision == 1


def test_a_user_certificate_logs_in_and_its_role_applies(station):
    assert (station.pki / "server.key.pem").stat().st_mode & 0o777 == 0o600
    assert (station.pki / "users" / "cell.der").read_bytes() == station.cell[0].read_bytes()

    async def main():
        client = Client(station.endpoint)
        await _secure(client, station.tmp)
        _trust_client(station)
        await client.load_client_certificate(str(station.cell[0]))
        await client.load_private_key(station.cell[1])
        async with client:
            await client.load_data_type_definitions()
            (vs,) = await find_vision_systems(client)
            mv = await client.get_namespace_index(MV_URI)
            recipes, prepare = await method(vs, mv, "RecipeManagement", "PrepareRecipe")
            _, done, _ = await recipes.call_method(prepare, ua.RecipeIdExternalDataType(Id="widget-b"),
                                                   ua.RecipeIdInternalDataType(Id=""))
            assert done
        # the same secure channel without the user certificate is an anonymous session
        client = Client(station.endpoint)
        await _secure(client, station.tmp)
        async with client:
            (vs,) = await find_vision_systems(client)
            mv = await client.get_namespace_index(MV_URI)
            recipes, prepare = await method(vs, mv, "RecipeManagement", "PrepareRecipe")
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await recipes.call_method(prepare, ua.RecipeIdExternalDataType(Id="widget-a"),
                                          ua.RecipeIdInternalDataType(Id=""))

    asyncio.run(main())
    assert station.line.selected == ["widget-b"]
    assert station.journal.commands()[-1]["client"] == "opcua:cell"


def test_a_server_that_cannot_bind_is_a_standing_problem_not_a_stopped_line(tmp_path):
    import socket

    journal = Journal(tmp_path / "state", "st1")
    line = FakeLine(journal)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        opc = StationOpcUa(OpcUaSection(endpoint=f"opc.tcp://127.0.0.1:{port}/adfm/"), line)
        opc.start()
        opc._thread.join(60)
        assert not opc._thread.is_alive() and not opc.ready.is_set()
        problems = line.health.snapshot().problems
        assert any(f"OPC UA server on opc.tcp://127.0.0.1:{port}/adfm/" in p for p in problems), problems
        opc.result(_journal_part(journal, 1, "widget-a", "gate"))  # the line still hands results over
        opc.stop()
    journal.close()


def test_wrong_password_and_untrusted_client_certificate_are_refused(station):
    async def main():
        client = Client(station.endpoint)
        await _secure(client, station.tmp)
        _trust_client(station)
        client.set_user("mes")
        client.set_password("wrong")
        with pytest.raises(ua.UaError):
            await client.connect()
        await client.disconnect()
        stranger = Client(station.endpoint)
        cert, key = await client_certificate(station.tmp / "stranger", "stranger")
        stranger.application_uri = CLIENT_URI
        await stranger.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
        with pytest.raises(Exception):  # noqa: B017 - the channel itself is refused (BadCertificateUntrusted)
            await stranger.connect()
        await stranger.disconnect()

    asyncio.run(main())


@pytest.mark.parametrize(("opcua", "message"), [
    ({"endpoint": "opc.tcp://0.0.0.0:4840/"}, "reachable off this machine: set opcua.pki_dir"),
    ({"endpoint": "opc.tcp://0.0.0.0:4840/", "pki_dir": "pki", "security": ["None"]}, "set insecure: true"),
    ({"endpoint": "opc.tcp://127.0.0.1:4840/", "security": ["Basic256Sha256_Sign"]}, "signed-only policies"),
    ({"endpoint": "opc.tcp://127.0.0.1:4840/", "security": ["Basic256Sha256_SignAndEncrypt"]}, "set opcua.pki_dir"),
    ({"endpoint": "http://127.0.0.1:4840/"}, "must start with opc.tcp://"),
])
def test_opcua_config_errors_name_the_key(opcua, message):
    with pytest.raises(ValueError, match=message):
        OpcUaSection(**opcua)


def test_network_endpoint_offers_only_signed_and_encrypted_policies(tmp_path):
    cfg = OpcUaSection(endpoint="opc.tcp://0.0.0.0:4840/", pki_dir=tmp_path)
    assert cfg.policies and "None" not in cfg.policies and all(p.endswith("_SignAndEncrypt") for p in cfg.policies)
    assert OpcUaSection().policies == ["None"]
    assert "None" in OpcUaSection(pki_dir=tmp_path).policies


def test_opcua_user_files_and_bad_input(tmp_path):
    from adfm.appliance.plc.opcua.access import check_password, write_user

    written = write_user(tmp_path, "line-1", password="long enough", roles=["recipe"])
    hashed = tmp_path / "users" / "line-1.password"
    assert hashed in written and (hashed.stat().st_mode & 0o777) == 0o640
    assert check_password("long enough", hashed.read_text()) and not check_password("long enougH", hashed.read_text())
    assert "long enough" not in hashed.read_text()
    assert (tmp_path / "users" / "line-1.roles").read_text() == "recipe\n"
    for kwargs, message in [({"name": "../x"}, "user name '../x'"), ({"roles": ["admin"]}, "role 'admin'"),
                            ({"password": "short"}, "at least 8 characters"),
                            ({"certificate": tmp_path / "u.txt"}, "a .der or .pem file")]:
        args = {"name": "u", "password": "long enough", **kwargs}
        with pytest.raises(ValueError, match=message):
            write_user(tmp_path, args.pop("name"), **args)
