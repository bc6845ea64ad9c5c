"""The station service end to end with a real trained gate in `screen` mode (scripted VLM backend):
a part the gate finds normal passes on its word, a suspicious one goes to the model; both results
carry the gate score and a stored heat map."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.appliance_fakes import ListCamera, calls, make_model_dir, write_script
from tests.conftest import needs_torch
from tests.gate_support import fresh_station, read_rgb, trained_gate

pytestmark = [needs_torch, pytest.mark.slow]

BACKEND = "tests.appliance_fakes:make_backend"


def _frame(image: np.ndarray, i: int, name: str):
    from adfm.camera.frame import Frame

    return Frame(camera_id="cam0", image=image, frame_number=i, part_id=f"part-{i}",
                 captured_mono=time.monotonic(), captured_wall=time.time(), source_name=name)


def _pick(gate, paths: list[Path], lowest: bool) -> tuple[Path, float]:
    scored = sorted((gate.score(read_rgb(p)).score, p) for p in paths)
    score, path = scored[0] if lowest else scored[-1]
    return path, score


def test_screen_mode_with_a_trained_gate(tmp_path, tmp_path_factory, synthetic_folder):
    from adfm.appliance.config.station import parse_config
    from adfm.appliance.inspection.worker import BackendSpec
    from adfm.appliance.service import Service
    from adfm.runtime.gate import Gate

    gate_path = trained_gate(tmp_path_factory, synthetic_folder)
    gate = Gate.load(gate_path)
    fresh = fresh_station(tmp_path_factory)
    good, good_score = _pick(gate, sorted((fresh / "normal").iterdir()), lowest=True)
    bad, bad_score = _pick(gate, sorted((fresh / "anomalous").iterdir()), lowest=False)
    assert good_score < gate.threshold <= bad_score  # the gate's own word on the two parts

    model = make_model_dir(tmp_path / "model", 56 * 56, 28 * 28 * 64)
    config = parse_config({
        "station": "st1",
        "state_dir": str(tmp_path / "state"),
        "model": {"dir": str(model), "deadline_s": 10, "load_timeout_s": 60},
        "cameras": [{"id": "cam0", "url": f"replay:{tmp_path}"}],
        "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*", "status_interval_s": 0.2},
        "health": {"prometheus_file": str(tmp_path / "metrics" / "adfm.prom")},
        "gate": {"mode": "screen", "path": str(gate_path)},
    })
    script = write_script(tmp_path / "script.json", ["yes"])
    cam = ListCamera()
    cam.put(_frame(read_rgb(good), 0, good.name))
    cam.put(_frame(read_rgb(bad), 1, bad.name))
    summary = Service(config, cameras={"cam0": cam}, backend=BackendSpec(BACKEND, {"script": str(script)})).run(
        max_parts=2
    )
    by_part = {r.part_id: r for r in summary.results}
    passed, flagged = by_part["part-0"], by_part["part-1"]
    assert passed.verdict == "pass" and passed.attempts == 0 and "screening gate" in passed.reason
    assert flagged.verdict == "fail" and flagged.decision is True
    assert len(calls(script)) == 1  # only the suspicious part reached the model
    assert passed.gate_score == pytest.approx(good_score, rel=1e-4)
    assert flagged.gate_score == pytest.approx(bad_score, rel=1e-4)
    # the dashboard shows the score against the threshold, and the model's grid maps its boxes
    assert passed.gate_threshold == flagged.gate_threshold == pytest.approx(gate.threshold)
    assert (passed.grid_width, passed.grid_height) == (0, 0)  # the model never saw it
    assert flagged.grid_width % 28 == 0 and flagged.grid_height % 28 == 0 and flagged.grid_width > 0
    for r in (passed, flagged):
        heat = config.journal_dir / r.gate_map_path
        assert r.gate_map_path.endswith(".gate.png") and heat.is_file()
        assert Image.open(heat).size == (r.image_width, r.image_height)
