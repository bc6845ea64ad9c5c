"""The gate's care on a running station (system/gate_watch.py), with a real trained gate, the real
service, its bus and journal:

- operators' confirmed false alarms of a new harmless mark, sent over the bus, teach the gate: the
  next marked parts pass it, a marked defect still does not, every result names the bank that scored
  it, and `adfm-appliance gate undo` (run while the station runs) brings the old bank back;
- lighting that changes mid-run raises the drift alarm (status, metrics) within a bounded number of
  parts, and a steady run raises none.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from adfm.synthetic import add_defect, add_mark, render_part
from tests.appliance_fakes import ListCamera, station_dict, write_script
from tests.conftest import needs_torch
from tests.gate_support import fresh_station, read_rgb, trained_gate

pytestmark = [needs_torch, pytest.mark.slow]

BACKEND = "tests.appliance_fakes:make_backend"
K = 6  # confirmed false alarms of the mark (tests/test_gate_learning.py: 6 per part kind let none through)


def _frame(image: np.ndarray, i: int):
    from adfm.camera.frame import Frame

    return Frame(camera_id="cam0", image=image, frame_number=i, part_id=f"part-{i}",
                 captured_mono=time.monotonic(), captured_wall=time.time(), source_name=f"part-{i}.png")


class Running:
    """The station service on its own thread, fed by a ListCamera; results collected as they come."""

    def __init__(self, config, script: Path) -> None:
        from adfm.appliance.inspection.worker import BackendSpec
        from adfm.appliance.service import Service

        self.camera = ListCamera()
        self.results: list = []
        self.service = Service(config, cameras={"cam0": self.camera},
                               backend=BackendSpec(BACKEND, {"script": str(script)}))
        self.service.on_result = self.results.append
        self.n = 0
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.service.bus and self.service.bus.bound) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.service.bus and self.service.bus.bound, "the station did not start"

    def feed(self, images: list[np.ndarray], timeout_s: float = 120.0) -> list:
        """Parts in, their results out (in order)."""
        first = self.n
        for image in images:
            self.camera.put(_frame(image, self.n))
            self.n += 1
        want = {f"part-{i}" for i in range(first, self.n)}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = {r.part_id: r for r in list(self.results) if not r.revision and r.part_id in want}
            if len(got) == len(want):
                return [got[f"part-{i}"] for i in range(first, self.n)]
            time.sleep(0.05)
        raise AssertionError(f"results for {sorted(want)} did not all come in {timeout_s} s")

    def client(self):
        from adfm.appliance.bus.client import StationClient

        bound = self.service.bus.bound
        return StationClient(bound["publish"][0], bound["control"][0], timeout_s=5.0)

    def stop(self) -> None:
        self.service.request_stop("test done")
        self.thread.join(60)


def _config(tmp_path: Path, gate_path: Path, **gate) -> tuple[object, dict]:
    """The tests' usual station (`station_dict`) with this gate and a metrics file written often."""
    from adfm.appliance.config.station import parse_config

    raw = station_dict(tmp_path, health={"prometheus_interval_s": 0.2}, gate={"path": str(gate_path), **gate})
    return parse_config(raw), raw


def _marked(rng: np.random.Generator, n: int, defect: str | None = None) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        image, region = render_part("washer", rng)
        image = add_mark(image, region, rng)
        if defect:
            image, _ = add_defect(image, region, defect, rng)
        out.append(image)
    return out


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def test_operator_false_alarms_teach_the_running_station_and_undo_takes_it_back(
        tmp_path, tmp_path_factory, synthetic_folder):
    import shutil

    from adfm.appliance.system import gate_cli
    from adfm.manifest import sha256_file
    from adfm.runtime.gate import Gate, metadata_path

    trained = trained_gate(tmp_path_factory, synthetic_folder)
    gate_path = tmp_path / "gate" / "gate.onnx"
    gate_path.parent.mkdir()
    shutil.copy(trained, gate_path)
    shutil.copy(metadata_path(trained), metadata_path(gate_path))
    commissioned = Gate.load(gate_path)
    onnx_before = sha256_file(gate_path)
    config, raw = _config(tmp_path, gate_path, mode="screen", learn={
        "calibration_normal": str(synthetic_folder / "normal"),
        "calibration_anomalous": str(synthetic_folder / "anomalous")})
    script = write_script(tmp_path / "script.json", ["yes"])  # the VLM says "defect" to whatever reaches it
    rng = np.random.default_rng(29)
    st = Running(config, script)
    try:
        first = st.feed(_marked(rng, K))
        assert all(r.verdict == "fail" and r.decision_source != "gate" for r in first)  # the gate flags the mark
        assert {r.gate_bank_sha256 for r in first} == {commissioned.bank_sha256}
        with st.client() as operator:
            for r in first:
                operator.send_verdict(r.seq, "false_alarm", "ana", verdict_id=f"fa-{r.seq}")
        _wait(lambda: st.service.gate_watch.verdicts_handled >= K, 120, "the gate reading K verdicts")
        changes = st.service.gate_watch.states()[0].learned_changes
        assert 1 <= changes <= K  # a part the bank already covers (after earlier lessons) teaches nothing new
        learned = Gate.load(gate_path)
        assert learned.bank_sha256 != commissioned.bank_sha256
        _wait(lambda: st.service.gates.load(gate_path).bank_sha256 == learned.bank_sha256, 10, "the station reload")

        after = st.feed(_marked(rng, 6))
        passed = [r for r in after if r.verdict == "pass" and r.decision_source == "gate"]
        assert len(passed) >= 5, [(r.verdict, r.gate_score) for r in after]  # the mark no longer stops parts
        assert {r.gate_bank_sha256 for r in after} == {learned.bank_sha256}
        defects = st.feed(_marked(rng, 4, defect="scratch"))
        assert all(r.verdict == "fail" for r in defects)  # a defect with the mark is still sent on and flagged
        status = st.client().status()
        assert status.gates[0].bank_sha256 == learned.bank_sha256 and status.gates[0].learned_changes == changes

        # undo from the command line while the station runs: the previous version, byte for byte
        import yaml

        from adfm.appliance.cli import build_parser

        cfg_file = tmp_path / "station.yaml"
        cfg_file.write_text(yaml.safe_dump(raw))
        for _ in range(changes):
            assert gate_cli.run(build_parser().parse_args(
                ["gate", "undo", "--config", str(cfg_file), "--operator", "lead"])) == 0
        assert sha256_file(gate_path) == onnx_before
        _wait(lambda: st.service.gates.load(gate_path).bank_sha256 == commissioned.bank_sha256, 10,
              "the station taking the undone version")
        again = st.feed(_marked(rng, 3))
        assert {r.gate_bank_sha256 for r in again} == {commissioned.bank_sha256}
        assert all(r.verdict == "fail" for r in again)
    finally:
        st.stop()
    from adfm.appliance.system.gate_watch import open_learner

    history = [row["action"] for row in open_learner(config.gate, gate_path).history()]
    assert history.count("add") == changes and history.count("undo") == changes


def _lit(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("change", [False, True], ids=["steady", "lighting-drops"])
def test_drift_alarm_on_a_lighting_change_and_none_on_a_steady_run(tmp_path, tmp_path_factory, synthetic_folder,
                                                                   change):
    gate_path = trained_gate(tmp_path_factory, synthetic_folder)
    fresh = fresh_station(tmp_path_factory)
    good = [read_rgb(p) for p in sorted((fresh / "normal").iterdir())]
    window = 20
    # the synthetic gate keeps too few held-out scores for a reference: the first 40 parts are it
    config, _ = _config(tmp_path, gate_path, mode="annotate",
                        drift={"window": window, "reference": "commissioning", "reference_size": 40})
    script = write_script(tmp_path / "script.json", ["no"])
    st = Running(config, script)
    try:
        st.feed([good[i % len(good)] for i in range(40)])
        _wait(lambda: st.service.gate_watch.states()[0].drift_parts_seen >= 40, 30, "drift test of 40 parts")
        assert not st.service.gate_watch.states()[0].drift_raised
        later = [good[(i + 7) % len(good)] for i in range(60)]
        if change:
            later = [_lit(im, 0.55) for im in later]  # a lamp fails: the parts come out darker
        raised_at = None
        for i in range(0, len(later), 5):
            st.feed(later[i:i + 5])
            _wait(lambda n=45 + i: st.service.gate_watch.states()[0].drift_parts_seen >= n, 30, "drift test")
            if st.service.gate_watch.states()[0].drift_raised:
                raised_at = i + 5
                break
        status = st.client().status()
        problems = [p for p in status.problems if "drift" in p]
        if change:
            assert raised_at is not None and raised_at <= 2 * window, raised_at
            assert problems and "KS D" in problems[0] and not status.healthy
            st.service.write_metrics()
            prom = (tmp_path / "metrics" / "adfm.prom").read_text()
            assert 'adfm_gate_drift_raised{recipe="default",station="st1"} 1.0' in prom
        else:
            assert raised_at is None and not problems
    finally:
        st.stop()
