"""`adfm-plant export-labels` round trip: stations' parts collected, operators' decisions, the
export (images fetched from the real station or copied into the store) read by `adfm-data inspect`."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from adfm.plant.cli import main as plant_main
from adfm.plant.collector import StationFollower
from adfm.plant.config import load_config
from adfm.schema import Box
from tests.review_support import LoopbackStation


def _collect(config, station_id: str, results: int, verdicts: int) -> StationFollower:
    stop = threading.Event()
    follower = StationFollower(config, config.station(station_id), stop)
    follower.start()
    deadline = time.monotonic() + 20
    while follower.stats.results < results or follower.stats.verdicts < verdicts:
        assert time.monotonic() < deadline, follower.stats
        time.sleep(0.1)
    stop.set()
    follower.join(10)
    return follower


def test_export_labels_is_read_by_adfm_data_inspect_with_the_right_counts(tmp_path, plant_db, capsys):
    from adfm.plant.stations import StationClient
    from adfm.trainer.data.cli import main as adfm_data

    a = LoopbackStation(tmp_path / "a", station="st-a")
    b = LoopbackStation(tmp_path / "b", station="st-b")
    try:
        for v in ("fail", "fail", "pass", "fail", "review"):
            a.part(v)
        for v in ("fail", "fail", "pass"):
            b.part(v)
        decisions = {("st-a", 1): "confirmed_defect", ("st-a", 2): "false_alarm", ("st-a", 4): "skip",
                     ("st-a", 5): "confirmed_defect", ("st-b", 1): "false_alarm", ("st-b", 2): "defect_wrong_box",
                     ("st-b", 3): "confirmed_defect", ("st-a", 3): "unsure"}
        redrawn = [Box.from_xyxy([20, 16, 40, 30], "defect")]
        for (name, seq), decision in decisions.items():
            st = a if name == "st-a" else b
            with StationClient(st.publish_ep, st.control_ep, station=name, timeout_s=3.0) as c:
                c.send_verdict(seq, decision, operator="anna", verdict_id=f"{name}-{seq}",
                               boxes=redrawn if decision == "defect_wrong_box" else None)
        cfg = tmp_path / "plant.yaml"
        cfg.write_text(yaml.safe_dump({
            "database": plant_db, "view": {"auth": {"method": "none"}},
            "collector": {"copy_flagged_images": True},
            "stations": [{"id": s.station, "publish": s.publish_ep, "control": s.control_ep} for s in (a, b)]}))
        config = load_config(cfg)
        follower = _collect(config, "st-a", 5, 5)
        assert follower.stats.images == 4  # flagged parts copied into the store
        _collect(config, "st-b", 3, 3)
        b.close()  # st-b is gone: its pass judged defective (seq 3) was never copied → reported, not exported
        out = tmp_path / "labels"
        assert plant_main(["export-labels", "--config", str(cfg), "--out", str(out), "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
        assert (report["normal"], report["anomalous"]) == (2, 3)
        assert report["left_out"] == {"skipped by the operator": 1, "operator unsure": 1}
        assert len(report["errors"]) == 1 and report["errors"][0].startswith("st-b seq 3: image not available")
        assert adfm_data(["inspect", str(out), "--json"]) == 0
        inspected = json.loads(capsys.readouterr().out)
        assert inspected["totals"]["normal"] == 2 and inspected["totals"]["anomalous"] == 3
        prov = [json.loads(line) for line in (out / "adfm-labels.jsonl").read_text().splitlines()]
        assert sorted((p["station"], p["seq"], p["decision"]) for p in prov) == [
            ("st-a", 1, "confirmed_defect"), ("st-a", 2, "false_alarm"), ("st-a", 5, "confirmed_defect"),
            ("st-b", 1, "false_alarm"), ("st-b", 2, "defect_wrong_box")]
        assert [p["operator_boxes"] for p in prov if p["seq"] == 2 and p["station"] == "st-b"] == [[[20, 16, 40, 30]]]
        # one station only, a fresh folder; an export into a non-empty one is refused
        assert plant_main(["export-labels", "--config", str(cfg), "--out", str(out)]) == 1
        assert "give a new or empty folder" in capsys.readouterr().err
        assert plant_main(["export-labels", "--config", str(cfg), "--out", str(tmp_path / "a-only"),
                           "--station", "st-a"]) == 0
        assert "exported 3 parts" in capsys.readouterr().out  # seq 1, 2, 5 (3 unsure, 4 skipped)
    finally:
        a.close()
        if b.bus is not None:
            b.close()


def test_export_labels_refuses_a_reversed_range(tmp_path, plant_db, capsys):
    cfg = tmp_path / "plant.yaml"
    cfg.write_text(yaml.safe_dump({"database": plant_db, "view": {"auth": {"method": "none"}}}))
    assert plant_main(["export-labels", "--config", str(cfg), "--out", str(tmp_path / "x"),
                       "--since", "2026-03-02", "--until", "2026-03-01"]) == 1
    assert "--since 2026-03-02T00:00:00+00:00 must be before --until" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    ({"database": ""}, "database: String should have at least 1 character"),
    ({"database": "x", "stations": [{"id": "a", "publish": "10.0.0.5:5560", "control": "tcp://h:1"}]},
     "stations.0.publish: must be a tcp://host:port or ipc:// endpoint (got '10.0.0.5:5560')"),
    ({"database": "x", "view": {"host": "0.0.0.0", "auth": {"method": "none"}}},
     "auth method none is only allowed on a loopback host, not '0.0.0.0'"),
    ({"database": "x", "view": {"auth": {"method": "basic"}}}, "method basic needs users_file"),
    ({"database": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
])
def test_a_bad_config_names_the_file_key_and_value(tmp_path, capsys, bad, message):
    cfg = tmp_path / "plant.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    assert plant_main(["migrate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and message in err
