"""Models across the plant, over a real PostgreSQL and real station buses: shadow results collected and
compared on the Models page (the same figures as the station's own journal gives); `adfm-plant
deploy` copying into station stores and starting shadow runs; `promote` with a canary station first
(a failing canary rolled back, the others untouched) and `rollback` across a group."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import yaml

from adfm.appliance.models.compare import compare as station_compare
from adfm.appliance.models.store import ModelStore
from adfm.plant.config import load_config
from adfm.plant.db import connect
from adfm.schema import Box, InspectionResult, ModelRequest, StationStatus
from tests.model_support import make_rule_model
from tests.review_support import LoopbackStation

#: per part: (line verdict, candidate verdict, operator decision or None)
PARTS = [("fail", "fail", "confirmed_defect"), ("pass", "fail", "false_alarm"), ("pass", "pass", None),
         ("fail", "pass", "false_alarm"), ("review", "fail", "confirmed_defect"), ("pass", "pass", "skip"),
         ("fail", "fail", None), ("pass", "fail", "confirmed_defect")]


def _result(station: str, seq: int, part, verdict: str, model: str, source: str | None) -> InspectionResult:
    boxes = [Box.from_xyxy([4, 4, 20, 16], "scratch")] if verdict == "fail" else []
    return InspectionResult(station=station, seq=seq, part_id=part.part_id, camera="cam0", frame_number=seq,
                            captured_at=part.captured_at, verdict=verdict, model_id=model, decision_source=source,
                            boxes=boxes, image_path=part.image_path, image_width=48, image_height=32,
                            reason=f"{model} says {verdict}")


def test_shadow_results_are_collected_and_compared_on_the_models_page(tmp_path, plant_db):
    from adfm.plant.collector import StationFollower
    from adfm.plant.view import create_app
    from tests.test_plant_view import Served, get

    station = LoopbackStation(tmp_path / "st", station="live")
    cfg = tmp_path / "plant.yaml"
    cfg.write_text(yaml.safe_dump({"database": plant_db, "collector": {"reconnect_s": 0.2},
                                   "stations": [{"id": "live", "line": "l1", "publish": station.publish_ep,
                                                 "control": station.control_ep}]}))
    config = load_config(cfg)
    stop = threading.Event()
    follower = StationFollower(config, config.stations[0], stop)
    send = station.bus.shadow_publisher()
    journal = station.journal

    def part(i: int, line: str, cand: str, publish_shadow: bool = True) -> None:
        image = np.full((32, 48, 3), 30 * i, np.uint8)
        p = journal.accept(image, part_id=f"p{i}", camera="cam0", frame_number=i, captured_wall=time.time())
        source = "failsafe_timeout" if line == "review" else "vlm"
        station.bus.publish(journal.complete(_result("live", p.seq, p, line, "A@1", source)))
        shadow = _result("live", p.seq, p, cand, "B@2", None).model_copy(update={"epoch": journal.epoch})
        row_id = journal.record_shadow(shadow)
        if publish_shadow:
            send(row_id, shadow)

    try:
        for i, (line, cand, _op) in enumerate(PARTS[:3], start=1):  # before the collector runs
            part(i, line, cand)
        follower.start()
        time.sleep(1.5)  # the collector caught up (shadow results by replay) and follows live
        for i, (line, cand, _op) in enumerate(PARTS[3:], start=4):
            part(i, line, cand, publish_shadow=i != 5)  # seq 5's shadow result lost on the way: a gap
        from adfm.plant.stations import StationClient

        with StationClient(station.publish_ep, station.control_ep, station="live", timeout_s=3.0) as c:
            for i, (_l, _c, op) in enumerate(PARTS, start=1):
                if op:
                    c.send_verdict(i, op, "anna", verdict_id=f"v{i}")
        deadline = time.monotonic() + 30
        while follower.stats.shadow < len(PARTS) or follower.stats.verdicts < 6:
            assert time.monotonic() < deadline, follower.stats
            time.sleep(0.1)
    finally:
        stop.set()
        follower.join(10)
    with connect(plant_db) as conn:
        rows = conn.execute("SELECT seq, model_id, verdict FROM shadow_results ORDER BY seq").fetchall()
    assert rows == [(i, "B@2", cand) for i, (_l, cand, _o) in enumerate(PARTS, start=1)]

    # the station's own comparison of its journal, and the plant's of what it collected, agree
    local = station_compare(station.journal.db_path, "B@2").to_json()
    # by hand: the candidate agrees with the line's answer on seqs 1, 3, 6, 7 (5: review vs fail)
    assert (local["with_active"]["agree"], local["with_active"]["parts"]) == (4, 8)
    # judged: 1 (fail), 2 (pass), 4 (pass), 5 (fail), 8 (fail) → candidate right on 1, 4, 5, 8; the line on 1, 2
    assert local["candidate_vs_operator"]["agree"] == 4 and local["active_vs_operator"]["agree"] == 2
    from adfm.plant.queries import Filters
    from adfm.plant.shadow_compare import compare as plant_compare

    since, until = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    with connect(plant_db) as conn:
        plant = plant_compare(conn, Filters(since, until), "B@2").to_json()
    for key in ("with_active", "candidate_vs_operator", "active_vs_operator", "shadowed_parts", "disagreements"):
        assert plant[key] == local[key], key
    assert [p["seq"] for p in plant["disagreement_parts"]] == [2, 4, 5, 8]

    served = Served(create_app(config, now=lambda: datetime.now(UTC)))
    try:
        status, body, _ = get(served.url + "/models?candidate=B%402", auth=None)
    finally:
        served.close()
        station.close()
    html = body.decode()
    assert status == 200 and "B@2" in html and 'id="disagreements"' in html
    assert html.count('class="part"') == 4 and "operator: confirmed_defect" in html
    assert "A@1 says fail" in html and "B@2 says pass" in html  # both answers side by side
    assert html.count('class="box"') == 4  # seq 2, 5, 8: the candidate's boxes; seq 4: the active model's


class _ModelStation:
    """A station's bus with a model-command handler and status (model, decided counter) standing in for
    a line: the station side of these commands is tested on a real line in test_models_line.py."""

    def __init__(self, root, name: str, model: str, *, bad_after_promote: bool = False) -> None:
        from adfm.appliance.bus.server import ResultBus
        from adfm.appliance.journal.store import Journal

        self.name, self.model, self.previous = name, model, []
        self.bad = bad_after_promote
        self.misses = 0
        self.calls: list[tuple[str, str]] = []
        self.t0 = time.monotonic()
        self.journal = Journal(root, name)
        self.bus = ResultBus(name, self.journal, self._status, publish=["tcp://127.0.0.1:*"],
                             control=["tcp://127.0.0.1:*"], plain_roles=("verdict", "model"))
        self.bus.on_model = self._model
        self.bus.start()
        self.publish, self.control = self.bus.bound["publish"][0], self.bus.bound["control"][0]

    def _status(self) -> StationStatus:
        decided = int((time.monotonic() - self.t0) * 50)  # a line deciding 50 parts/s
        return StationStatus(station=self.name, healthy=True, model_id=self.model,
                             counters={"decided": decided, "deadline_misses": self.misses})

    def _model(self, r: ModelRequest) -> str:
        self.calls.append((r.action, r.model_id))
        if r.action == "promote":
            self.previous.append(self.model)
            self.model = r.model_id
            if self.bad:
                self.misses += 3
            return f"promoted {r.model_id} from seq 1"
        if r.action == "rollback":
            self.model = self.previous.pop()
            return f"rolled back to {self.model} from seq 1"
        return f"shadow run of {r.model_id} started"

    def close(self) -> None:
        self.bus.stop()
        self.journal.close()


def _plant_config(tmp_path, stations: list[_ModelStation]):
    cfg = tmp_path / "plant.yaml"
    cfg.write_text(yaml.safe_dump({"database": "dbname=unused", "stations": [
        {"id": s.name, "line": "l1", "publish": s.publish, "control": s.control,
         "model_store": str(tmp_path / f"{s.name}-models")} for s in stations]}))
    return cfg


def test_deploy_promote_with_a_canary_and_rollback_across_stations(tmp_path, capsys):
    from adfm.plant.cli import main

    a = _ModelStation(tmp_path / "a", "st-a", "old@1")
    b = _ModelStation(tmp_path / "b", "st-b", "old@1")
    cfg = _plant_config(tmp_path, [a, b])
    model = make_rule_model(tmp_path / "new", 150)
    try:
        assert main(["deploy", str(model), "--config", str(cfg), "--line", "l1", "--operator", "lee"]) == 0
        out = capsys.readouterr().out
        model_id = ModelStore(tmp_path / "st-a-models").models()[0].model_id
        assert ModelStore(tmp_path / "st-b-models").has(model_id)
        assert out.count("copied, hashes checked") == 2 and out.count("shadow run of") == 2
        assert a.calls == b.calls == [("shadow", model_id)]

        assert main(["promote", model_id, "--config", str(cfg), "--station", "st-b", "--station", "st-a",
                     "--canary-parts", "10", "--json"]) == 0
        import json

        steps = json.loads(capsys.readouterr().out)["steps"]
        assert [(s["station"], s["action"]) for s in steps] == [
            ("st-b", "promote (canary)"), ("st-b", "canary check"), ("st-a", "promote")]
        assert a.model == b.model == model_id

        assert main(["rollback", "--config", str(cfg), "--line", "l1"]) == 0
        assert a.model == b.model == "old@1"
    finally:
        a.close()
        b.close()


def test_a_canary_that_misses_deadlines_is_rolled_back_and_the_others_left_alone(tmp_path, capsys):
    from adfm.plant.cli import main

    canary = _ModelStation(tmp_path / "a", "st-a", "old@1", bad_after_promote=True)
    other = _ModelStation(tmp_path / "b", "st-b", "old@1")
    cfg = _plant_config(tmp_path, [canary, other])
    try:
        assert main(["promote", "new@2", "--config", str(cfg), "--station", "st-a", "--station", "st-b",
                     "--canary-parts", "5"]) == 1
        out = capsys.readouterr().out
        assert "st-a: canary check: FAILED — 3 new deadline miss(es)" in out and "st-a: rollback: ok" in out
        assert canary.calls == [("promote", "new@2"), ("rollback", "")] and canary.model == "old@1"
        assert other.calls == [] and other.model == "old@1"
        with pytest.raises(SystemExit):
            main(["promote", "--config", str(cfg)])
        assert main(["promote", "x", "--config", str(cfg), "--station", "nope"]) == 1
        assert "station 'nope' is not in the plant config" in capsys.readouterr().err
    finally:
        canary.close()
        other.close()
