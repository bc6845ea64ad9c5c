"""End to end with the real tiny GGUF: replay camera → llama.cpp worker → journal → bus subscriber,
and the demo command."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from adfm.appliance.bus.client import StationClient
from adfm.appliance.config.station import parse_config
from adfm.appliance.service import Service
from adfm.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow


def _run_with_subscriber(service: Service, expected: int, **run: object) -> tuple[object, list]:
    """Run the service in a thread with a bus subscriber from seq 1; its summary and what arrived."""
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(summary=service.run(**run)))
    runner.start()
    received: list = []
    try:
        deadline = time.monotonic() + 600
        while not (service.bus and service.bus.bound) and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        bound = service.bus.bound
        station = service.config.station
        with StationClient(bound["publish"][0], bound["control"][0], station=station, from_seq=1) as client:
            while len(received) < expected and time.monotonic() < deadline:
                received += client.receive(0.5)
    finally:
        runner.join(600)
    return outcome["summary"], received


def test_replay_camera_to_subscriber_with_the_tiny_gguf(tmp_path, tiny_gguf_dir):
    data = make_synthetic_dataset(tmp_path / "parts", layout="folder", categories=("washer",), n_train=2,
                                  n_test_good=0, n_test_defect=1, defects=("scratch",), size=(128, 96), seed=3)
    images = sorted((data / "normal").glob("*.png")) + sorted((data / "anomalous").glob("*.png"))
    config = parse_config({
        "station": "e2e",
        "state_dir": str(tmp_path / "state"),
        "model": {"dir": str(tiny_gguf_dir), "max_tokens": 24, "n_ctx": 2048, "deadline_s": 300},
        "cameras": [{"id": "cam0", "url": f"replay:{data / 'normal'}", "fps": 20, "loop": False,
                     "queue_size": 50},
                    {"id": "cam1", "url": f"replay:{data / 'anomalous'}", "fps": 20, "loop": False,
                     "queue_size": 50}],
        "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*", "status_interval_s": 0.5},
    })
    summary, received = _run_with_subscriber(Service(config), len(images), stop_when_finished=True)
    assert summary.parts == len(images) and summary.last_seq == len(images)
    assert [r.seq for r in received] == list(range(1, len(images) + 1))
    assert {r.camera for r in received} == {"cam0", "cam1"}
    for r in received:
        assert r.verdict in ("pass", "fail", "review")
        assert "@" in r.model_id and r.prompt_version
        assert r.latency_ms["vlm"] > 0 and r.image_width == 128 and r.image_height == 96
        assert r.verdict != "review" or r.reason.startswith("unreadable model answer")  # never a worker failure
    assert summary.worker_restarts == 0


def test_simulated_genicam_camera_to_subscriber_with_the_tiny_gguf(tmp_path, tiny_gguf_dir):
    """The same station with Aravis's simulated GenICam camera (`Fake` interface) as its source."""
    from tests.aravis_support import require_aravis

    require_aravis()
    parts = 3
    config = parse_config({
        "station": "e2e-gige",
        "state_dir": str(tmp_path / "state"),
        "model": {"dir": str(tiny_gguf_dir), "max_tokens": 24, "n_ctx": 2048, "deadline_s": 300},
        "cameras": [{"id": "gige0", "url": "aravis:Fake_1",
                     "genicam": {"interfaces": ["Fake"], "pixel_format": "RGB8", "sensor_roi": [0, 0, 128, 96],
                                 "exposure_us": 5000, "gain_db": 2, "frame_rate_hz": 10}}],
        "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*", "status_interval_s": 0.5},
    })
    summary, received = _run_with_subscriber(Service(config), parts, max_parts=parts)
    assert summary.parts == parts and summary.last_seq == parts
    assert [r.seq for r in received] == list(range(1, parts + 1))
    for r in received:
        assert r.camera == "gige0" and r.verdict in ("pass", "fail", "review")
        assert r.image_width == 128 and r.image_height == 96 and r.latency_ms["vlm"] > 0
        assert r.verdict != "review" or r.reason.startswith("unreadable model answer")
    assert summary.worker_restarts == 0


def test_demo_runs_the_station_behind_the_gate_and_scores_against_truth(tmp_path, tiny_gguf_dir, capsys):
    from adfm.appliance.cli import main
    from adfm.appliance.demo import format_summary

    cache = tmp_path / "cache"
    assert main(["demo", "--parts", "4", "--json", "--cache", str(cache), "--model", str(tiny_gguf_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parts"] == 4 and summary["subscriber_received"] == 4 and summary["subscriber_in_order"]
    assert not summary["demo_model"] and summary["model_dir"] == str(tiny_gguf_dir)
    assert summary["gate"] and (cache / "gate" / "gate.onnx").is_file()  # fitted by adfm-train gate, a child
    assert set(summary["latency_ms_p50"]) >= {"capture", "journal", "total"}
    assert summary["journal"]["parts"] == 4 and sum(summary["verdicts"].values()) == 4
    truth = json.loads(Path(summary["ground_truth"]).read_text())
    assert sorted(truth) == ["part-000-normal", "part-001-anomalous", "part-002-normal", "part-003-anomalous"]
    scored = summary["against_truth"]
    assert scored["parts_scored"] == 4 and 0.0 <= scored["accuracy"] <= 1.0
    assert scored["by_gate"] + scored["model_answers"] + scored["reviewed"] == 4  # gate, model or a person

    alone = summary["model_alone"]  # the same parts through the model with the gate off, greedy
    assert alone["parts"] == 4 and alone["temperature"] == 0.0 and 0.0 <= alone["accuracy"] <= 1.0
    assert len(alone["per_part"]) == 4 and Path(alone["contact_sheet"]).is_file()

    text = format_summary(summary)  # what the command prints without --json
    assert "4 parts" in text and "p50" in text and "the station (gate on)" in text
    assert text.index("the model (gate off, greedy)") < text.index("the station (gate on)")
    assert summary["journal"]["db"] in text and summary["images"] in text
