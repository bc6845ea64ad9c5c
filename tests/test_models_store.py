"""The station's model store, the shadow share, Wilson intervals, and the comparison and promotion guard
read from a real journal (SQLite) filled by hand with known answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml

from adfm.appliance.journal.store import Journal
from adfm.appliance.models.compare import compare, promotion_guard, wilson
from adfm.appliance.models.shadow import selects
from adfm.appliance.models.store import ModelStore, ModelStoreError
from adfm.schema import InspectionResult, OperatorVerdict
from tests.model_support import make_rule_model


def test_add_copies_a_model_by_its_content_hash_and_checks_every_byte_of_the_copy(tmp_path):
    a = make_rule_model(tmp_path / "a", 100)
    b = make_rule_model(tmp_path / "b", 150)
    store = ModelStore(tmp_path / "state" / "models")
    a_id, added = store.add(a, activate_if_none=True)
    assert added and a_id.startswith("rule@")
    assert (store.path(a_id) / "rule.gguf").read_text() == (a / "rule.gguf").read_text()
    assert store.add(a) == (a_id, False)  # the same content is stored once
    b_id, _ = store.add(b)
    assert b_id != a_id
    state = store.state()
    state.shadow = b_id
    store.save(state)
    assert [(m.model_id, m.role) for m in store.models()] == [(a_id, "active"), (b_id, "shadow")]

    # a file changed after export: same size, other bytes — refused, nothing left in the store
    c = make_rule_model(tmp_path / "c", 200)
    body = (c / "rule.gguf").read_text()
    (c / "rule.gguf").write_text(body.replace("200", "201"))
    with pytest.raises(ModelStoreError, match=r"does not match its manifest.*sha256"):
        store.add(c)
    assert sorted(p.name for p in store.root.iterdir()) == sorted([a_id, b_id, "store.json"])

    # a manifest naming a file outside its directory is refused before anything is copied
    d = make_rule_model(tmp_path / "d", 50)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"][0]["path"] = "../a/rule.gguf"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="not a plain file name"):
        store.add(d)
    with pytest.raises(ModelStoreError, match="not in the store"):
        store.require("rule@000000000000")


def test_models_cli_add_and_list(tmp_path, capsys):
    from adfm.appliance.cli import main
    from tests.appliance_fakes import station_dict

    cfg = tmp_path / "station.yaml"
    cfg.write_text(yaml.safe_dump(station_dict(tmp_path)))
    model = make_rule_model(tmp_path / "cand", 150)
    assert main(["models", "add", str(model), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "added, every file hashed and matching" in out
    model_id = out.split(":")[0]
    assert main(["models", "--config", str(cfg), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["model_id"], m["role"]) for m in listed["models"]] == [(model_id, "candidate")]
    assert listed["config_model"].startswith("tiny-q4_k_m@")
    assert main(["models", "add", str(tmp_path / "nowhere"), "--config", str(cfg)]) == 1
    assert "model directory not found" in capsys.readouterr().err


def test_shadow_share():
    from adfm.appliance.config.models import ModelsSection

    every3 = ModelsSection(shadow_share="every_n", shadow_every_n=3)
    assert [s for s in range(1, 10) if selects(every3, s, "pass")] == [3, 6, 9]
    flagged = ModelsSection(shadow_share="flagged")
    assert [v for v in ("pass", "fail", "review") if selects(flagged, 1, v)] == ["fail", "review"]
    assert selects(ModelsSection(shadow_share="all"), 7, "pass")


def test_wilson_interval_matches_the_published_values():
    # Newcombe (1998), table I: 81/263 → 0.2553–0.3662; 15/148 → 0.0624–0.1605; 0/20 → 0–0.1611
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611)}.items():
        got = wilson(k, n)
        assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def _result(seq: int, verdict: str, model: str, source: str | None = "vlm", revision: int = 0) -> InspectionResult:
    now = datetime.now(UTC)
    return InspectionResult(station="st1", seq=seq, part_id=f"p{seq}", camera="cam0", frame_number=seq,
                            captured_at=now, verdict=verdict, model_id=model, decision_source=source,
                            revision=revision, action="pass" if verdict == "pass" else "reject")


def _fill(journal: Journal, rows: list[tuple[str, str | None, str, str | None]]) -> None:
    """rows: (line verdict, line source, candidate verdict, operator decision) for seq 1, 2, …"""
    for i, (line, source, cand, op) in enumerate(rows, start=1):
        part = journal.open_part(part_id=f"p{i}", camera="cam0", triggered_wall=0.0)
        assert part.seq == i
        journal.complete(_result(i, line, "A@1", source))
        if source != "vlm":  # the model answered later: a revision carries its own verdict
            journal.revise(_result(i, "fail" if line == "review" else line, "A@1", "vlm", revision=1))
        journal.record_shadow(_result(i, "pass", "B@2", None))  # an older answer, replaced by the next
        journal.record_shadow(_result(i, cand, "B@2", None))
        if op:
            journal.add_verdict(OperatorVerdict(station="st1", seq=i, decision=op, operator="anna",
                                                verdict_id=f"v{i}", part_id=f"p{i}"))


def test_comparison_counts_agreement_with_the_active_model_and_the_operators(tmp_path):
    rows = [  # line verdict, its source, candidate, operator
        ("pass", "vlm", "pass", None),
        ("fail", "vlm", "fail", "confirmed_defect"),
        ("fail", "vlm", "pass", "false_alarm"),     # candidate right, active wrong
        ("pass", "vlm", "fail", "false_alarm"),     # candidate wrong, active right
        ("review", "failsafe_timeout", "fail", "confirmed_defect"),  # the model's later answer: fail
        ("pass", "gate", "fail", "skip"),           # no model answer: the line's pass; skip is not counted
        ("fail", "vlm", "fail", "confirmed_defect"),
    ]
    with Journal(tmp_path / "j", "st1") as journal:
        _fill(journal, rows)
        db = journal.db_path
    c = compare(db, "B@2")
    assert len(c.parts) == 7 and c.active_models == ["A@1"]
    # candidate vs active (the active model's own answer where it gave one): seqs 1, 2, 5, 7 agree
    assert (c.with_active.agree, c.with_active.parts) == (4, 7)
    # judged parts: 2, 3, 4, 5, 7 → candidate right on 2, 3, 5, 7; active right on 2, 4, 5, 7
    assert (c.candidate_vs_operator.agree, c.candidate_vs_operator.parts) == (4, 5)
    assert (c.active_vs_operator.agree, c.active_vs_operator.parts) == (4, 5)
    assert [p.seq for p in c.disagreements] == [3, 4, 6]
    side = c.disagreements[0].to_json()
    assert (side["candidate"]["verdict"], side["active"]["verdict"], side["operator"]) == (
        "pass", "fail", "false_alarm")
    assert c.to_json()["with_active"]["interval95"] == [round(x, 4) for x in wilson(4, 7)]

    assert promotion_guard(db, "B@2", "A@1", 5).allowed  # 4 of 5 vs 4 of 5: at least as good
    refused = promotion_guard(db, "B@2", "A@1", 6)
    assert not refused.allowed and "5 shadowed part(s)" in refused.detail and "6 needed" in refused.detail
    assert compare(db, "B@2", active="other@0").parts == []


def test_guard_refuses_a_candidate_that_agrees_less_with_the_operators(tmp_path):
    rows = [("fail", "vlm", "pass", "confirmed_defect")] * 3 + [("pass", "vlm", "pass", "false_alarm")] * 3
    with Journal(tmp_path / "j", "st1") as journal:
        _fill(journal, rows)
        db = journal.db_path
    outcome = promotion_guard(db, "B@2", "A@1", 5)
    assert not outcome.allowed
    assert "3/6" in outcome.detail and "6/6" in outcome.detail


def test_a_station_starts_on_the_stores_active_model_and_free_run_refuses_live_switches(tmp_path):
    from adfm.appliance.config.station import parse_config
    from adfm.appliance.inspection.core import ModelInfo
    from adfm.appliance.models.control import ModelCommandRefused, ModelControl, with_store_model
    from adfm.schema import ModelRequest
    from tests.appliance_fakes import station_dict

    cfg = parse_config(station_dict(tmp_path))
    assert with_store_model(cfg).model.dir == cfg.model.dir  # an empty store: the config's model
    store = ModelStore.for_state_dir(cfg.journal_dir)
    b_id, _ = store.add(make_rule_model(tmp_path / "b", 150))
    assert with_store_model(cfg).model.dir == cfg.model.dir  # stored, not active: still the config's
    state = store.state()
    state.active = b_id
    store.save(state)
    assert with_store_model(cfg).model.dir == store.path(b_id)  # promoted before a restart

    with Journal(cfg.journal_dir, "st1") as journal:
        control = ModelControl(cfg, journal, store, active=ModelInfo("a@1", "multi-stage-v1", 1, 2), line=None)
        for action in ("promote", "rollback", "shadow"):
            with pytest.raises(ModelCommandRefused, match="needs line mode"):
                control.handle(ModelRequest(action=action, model_id=b_id))
    assert store.state().active == b_id  # nothing changed


def test_models_cli_sends_model_commands_and_reports_refusals(tmp_path, capsys):
    from adfm.appliance.bus.server import ResultBus
    from adfm.appliance.cli import main
    from adfm.schema import StationStatus

    told: list[tuple[str, str, str]] = []

    def on_model(r):
        told.append((r.action, r.model_id, r.operator))
        if r.model_id == "unknown@0":
            raise ValueError("model 'unknown@0' is not in the store")
        return f"{r.action} done"

    with Journal(tmp_path / "j", "st1") as journal:
        bus = ResultBus("st1", journal, lambda: StationStatus(station="st1", healthy=True),
                        publish=["tcp://127.0.0.1:*"], control=["tcp://127.0.0.1:*"], plain_roles=("verdict", "model"))
        bus.on_model = on_model
        bus.start()
        try:
            ep = bus.bound["control"][0]
            assert main(["models", "promote", "rule@1", "--control", ep, "--operator", "lee"]) == 0
            assert "promote done (key 'local')" in capsys.readouterr().out
            assert main(["models", "shadow-stop", "--control", ep]) == 0
            assert main(["models", "promote", "unknown@0", "--control", ep]) == 1
            assert "refused: model 'unknown@0' is not in the store" in capsys.readouterr().err
            assert main(["models", "promote", "--control", ep]) == 1
            assert "promote needs the model id" in capsys.readouterr().err
            assert main(["models", "rollback"]) == 1
            assert "give --control ENDPOINT" in capsys.readouterr().err
        finally:
            bus.stop()
        rows = [(c["argument"], c["operator"], c["accepted"]) for c in journal.commands()]
    assert told == [("promote", "rule@1", "lee"), ("shadow_stop", "", ""), ("promote", "unknown@0", "")]
    assert rows == [("promote rule@1", "lee", True), ("shadow_stop", "", True), ("promote unknown@0", "", False)]


def test_models_compare_without_shadow_results_says_so(tmp_path, capsys):
    from adfm.appliance.cli import main
    from tests.appliance_fakes import station_dict

    cfg = tmp_path / "station.yaml"
    cfg.write_text(yaml.safe_dump(station_dict(tmp_path)))
    Journal(tmp_path / "state", "st1").close()
    assert main(["models", "compare", "--config", str(cfg)]) == 1
    assert "no shadow results yet" in capsys.readouterr().err


def test_late_parts_of_a_retired_model_are_dropped_not_run(tmp_path):
    import time as _time

    import numpy as np

    from adfm.appliance.inspection.core import ModelInfo
    from adfm.appliance.inspection.runner import VlmJob, VlmModel, VlmRunner
    from adfm.appliance.inspection.worker import BackendSpec

    m = VlmModel(ModelInfo("x@1", "multi-stage-v1", 1, 2), BackendSpec("unused:unused"))
    skipped: list[str] = []
    runner = VlmRunner({"old": m, "new": m}, lambda k, i: None, skipped.append, backlog=4)
    now, img = _time.monotonic(), np.zeros((2, 2, 3), np.uint8)
    for key, model, deadline in (("o-late", "old", now - 1), ("o-live", "old", now + 5), ("n-late", "new", now - 1)):
        runner.submit(VlmJob(key, img, deadline, model))
    runner.retired.add("old")
    job, dropped = runner._pick()
    assert job.key == "o-live"  # a part the old model can still decide in time keeps it
    assert [j.key for j in dropped] == ["o-late"] and runner.dropped == 1
    job, dropped = runner._pick()
    assert job.key == "n-late" and dropped == []
