"""The decision core (docs/architecture.md): a deciding loop nothing can block, an honest record,
never acting late on the line, one path for both modes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from adfm.appliance.config.line import ModbusSection
from adfm.appliance.config.station import load_config
from adfm.appliance.inspection.runner import VlmJob, VlmRunner
from adfm.appliance.inspection.worker import BackendSpec, InferenceWorker
from adfm.appliance.journal.store import Journal
from adfm.appliance.modes.line import LineTrigger
from adfm.appliance.plc.modbus import Inputs, ModbusLink
from adfm.appliance.service import Service
from adfm.synthetic import make_synthetic_dataset
from tests.appliance_fakes import FACTORY, write_script
from tests.conftest import needs_llama
from tests.line_support import Plc, free_port, line_config, start_line
from tests.plc_standin import RESULT_HR

DEADLINE_MS = 800


class FakeModbus:
    """The few client calls ModbusLink makes, recorded; a PLC that answers at once."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int, object, float]] = []
        self.counter = 0

    def connect(self) -> None: ...
    def close(self) -> None: ...

    def read_trigger(self) -> int:
        return self.counter

    def read_inputs(self) -> Inputs:
        return Inputs(self.counter)

    def read_registers(self, address: int, count: int) -> list[int]:
        return [0] * count

    def write_registers(self, address: int, values: list[int]) -> None:
        self.writes.append(("reg", address, list(values), time.monotonic()))

    def write_coil(self, address: int, value: bool) -> None:
        self.writes.append(("coil", address, value, time.monotonic()))


def _link(alive=lambda: True, on_missed=None, delay_ms=100.0) -> tuple[ModbusLink, FakeModbus]:
    cfg = ModbusSection.model_validate({
        "host": "127.0.0.1", "poll_ms": 5, "trigger": {"table": "counter", "address": 12},
        "result": {"base": RESULT_HR, "heartbeat_ms": 20},
        "ejector": {"coil": 8, "pulse_ms": 20, "delay_ms": delay_ms, "window_ms": 30}})
    client = FakeModbus()
    link = ModbusLink(cfg, lambda t: None, client=client, alive=alive, on_missed=on_missed)  # type: ignore[arg-type]
    return link, client


def test_a_reject_past_its_ejector_window_is_never_pulsed_but_counted_and_reported():
    missed: list[tuple[int, str]] = []
    link, client = _link(on_missed=lambda seq, why: missed.append((seq, why)))
    link.start()
    try:
        now = time.monotonic()
        late = LineTrigger(at_mono=now - 1.0, at_wall=time.time() - 1.0)  # due 0.9 s ago: long gone
        fresh = LineTrigger(at_mono=now, at_wall=time.time())  # due in 100 ms
        link.decided(1, "reject", "failsafe_timeout", late)
        link.decided(2, "reject", "vlm", fresh)
        deadline = time.monotonic() + 5

        def pulsed() -> bool:  # the coil is driven low at connect; then a rise and its fall
            coil = [w[2] for w in client.writes if w[0] == "coil"]
            return True in coil and False in coil[coil.index(True):]

        while time.monotonic() < deadline and not pulsed():
            time.sleep(0.01)
    finally:
        link.stop()
    rises = [w[3] for w in client.writes if w[0] == "coil" and w[2] is True]
    assert len(rises) == 1, client.writes  # the fresh part's pulse only
    assert 0.0 <= rises[0] - (fresh.at_mono + 0.1) <= 0.03 + 0.05  # inside its window (plus one slow poll)
    assert [seq for seq, _ in missed] == [1] and "window" in missed[0][1]
    assert link.stats.missed_ejections == 1 and link.stats.pulses == 1


def test_the_plc_heartbeat_follows_the_deciding_loop_not_the_link():
    loop_alive = threading.Event()
    link, client = _link(alive=loop_alive.is_set)
    link.start()
    try:
        time.sleep(0.3)
        beats_dead = [w for w in client.writes if w[0] == "reg" and w[1] == RESULT_HR + 4]
        loop_alive.set()
        time.sleep(0.3)
        beats_alive = [w for w in client.writes if w[0] == "reg" and w[1] == RESULT_HR + 4]
    finally:
        link.stop()
    assert beats_dead == []  # the link polled all along, but no loop turned: no heartbeat
    assert len(beats_alive) >= 3


def test_the_vlm_queue_is_bounded_and_drops_the_oldest_late_job_first():
    skipped: list[str] = []
    runner = VlmRunner({}, lambda k, i: None, skipped.append, backlog=2, limit=4)
    now = time.monotonic()
    image = np.zeros((8, 8, 3), np.uint8)
    for i in range(3):  # late ones (deadline passed), oldest first
        runner.submit(VlmJob(f"late{i}", image, now - 1.0, "m", queued_mono=now - 10 + i))
    for i in range(3):
        runner.submit(VlmJob(f"live{i}", image, now + 60.0, "m", queued_mono=now + i))
    assert runner.queued() == 4 and runner.dropped == 2
    assert skipped == ["late0", "late1"]


def test_the_worker_lowers_its_own_priority_before_loading(tmp_path):
    script = write_script(tmp_path / "s.json", ["no"])
    worker = InferenceWorker(BackendSpec(FACTORY, {"script": str(script)}), nice=5, load_timeout_s=60)
    worker.start()
    try:
        assert worker.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 5
    finally:
        worker.stop()


def _hold_write_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process takes the journal's write lock and keeps it (as a backup tool or a stuck
    reader-writer might)."""
    code = textwrap.dedent(f"""
        import sqlite3, sys, time
        c = sqlite3.connect({str(db)!r}, isolation_level=None)
        c.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        time.sleep({seconds})
        c.execute("COMMIT")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_a_journal_locked_for_five_seconds_delays_no_decision_and_loses_nothing(tmp_path):
    parts = 60
    port = free_port()
    cfg = line_config(tmp_path, port, deadline_ms=DEADLINE_MS, delay_ms=1200, counter=True)
    script = write_script(tmp_path / "script.json", ["no", "yes"], cycle=True)
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=5, parts=parts)  # it presents parts once the station's heartbeat shows
    run, _ = start_line(cfg, script)
    holder = None
    try:
        deadline = time.monotonic() + 30
        while len(plc.result_writes()) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        holder = _hold_write_lock(tmp_path / "state" / "journal.sqlite", 5.0)
        locked_at = time.monotonic()
        holder.wait(20)
        deadline = time.monotonic() + 60
        while (not plc.done() or len(plc.result_writes()) < parts or run.service.line.controller.unjournaled
               or run.service.line.controller.parts) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        run.stop()
        plc.kill()
    triggers = {t["part_id"]: t["t"] for t in plc.triggers()}
    writes = {w["seq"]: w for w in plc.result_writes()}
    assert len(triggers) == parts and len(writes) == parts
    with Journal(tmp_path / "state", "st1") as journal:
        results = [journal.get(s) for s in range(1, journal.last_seq() + 1)]
    assert len(results) == parts and all(r is not None for r in results)
    assert sorted(r.part_id for r in results) == sorted(triggers)  # every trigger journaled once, afterwards
    during = [r for r in results if locked_at <= triggers[r.part_id] <= locked_at + 5.0]
    assert len(during) >= 15  # the lock really spanned parts
    for r in results:  # none late at the PLC, none decided by the fail-safe because of the lock
        assert (writes[r.seq]["t"] - triggers[r.part_id]) * 1000 <= DEADLINE_MS, r.seq
        assert r.decision_source == "vlm", (r.seq, r.decision_source, r.reason)


def _readme_station(tmp_path: Path, model_dir: Path, line: bool) -> Path:
    """A station file as README's line section shows it: model limits left to the manifest."""
    data = make_synthetic_dataset(tmp_path / "parts", layout="folder", categories=("washer",), n_train=1,
                                  n_test_good=2, n_test_defect=1, defects=("scratch",), size=(128, 96), seed=5)
    station: dict = {
        "station": "readme",
        "state_dir": str(tmp_path / "state"),
        "model": {"dir": str(model_dir), "deadline_s": 300},  # no n_ctx, no max_tokens
        "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*"},
    }
    if line:
        station["cameras"] = [{"id": "cam0", "url": f"replay:{data / 'normal'}", "fps": 30,
                               "trigger": {"mode": "link"}}]
        station["line"] = {"deadline_ms": 120_000, "failsafe": "reject"}
    else:
        station["cameras"] = [{"id": "cam0", "url": f"replay:{data / 'normal'}", "fps": 10, "loop": False}]
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(station))
    return path


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("line", [False, True], ids=["free-run", "line"])
def test_a_readme_station_with_limits_from_the_manifest_is_decided_by_the_model(tmp_path, tiny_gguf_dir, line):
    config = load_config(_readme_station(tmp_path, tiny_gguf_dir, line))
    assert config.model.n_ctx is None and config.model.max_tokens is None
    service = Service(config)
    results: list = []
    service.outputs.add("test", recorded=results.append)
    runner = threading.Thread(target=lambda: service.run(max_parts=2, max_seconds=600))
    runner.start()
    try:
        if line:
            deadline = time.monotonic() + 600
            while service.line is None or not service.line.runner.alive:
                assert runner.is_alive() and time.monotonic() < deadline, "the line did not come up"
                time.sleep(0.1)
            for i in range(2):
                service.line.trigger_now(part_id=f"p{i}")
                time.sleep(1.0)
    finally:
        runner.join(600)
    decided = [r for r in results if r.revision == 0]
    assert len(decided) == 2
    for r in decided:
        assert r.raw_response and r.attempts >= 1 and "inference failed" not in r.reason, r.reason
        if line:
            assert r.decision_source == "vlm", (r.decision_source, r.reason)
        else:
            assert r.decision_source == "vlm" and r.model_id


class _Camera:
    """A link-triggered camera stand-in: remembers fires; frames are handed in by the test."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, float]] = []
        self.frames: list = []

    def fire(self, key: str, at_mono: float, expires_mono: float) -> None:
        self.fired.append((key, time.monotonic()))

    def get(self, timeout: float):
        if self.frames:
            return self.frames.pop(0)
        time.sleep(min(timeout, 0.01))
        return None


class _SlowGate:
    """A gate that finds every part good, too slowly for the deadline."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def score(self, image):
        time.sleep(self.seconds)

        class Scored:
            score, suspicious = 0.01, False

        return Scored()


def _controller(tmp_path, gate=None, deadline_ms=300.0):
    from adfm.appliance.inspection.core import ModelInfo
    from adfm.appliance.modes.line import LineController, Recipe
    from adfm.appliance.modes.outputs import Outputs
    from adfm.appliance.system.health import Health

    journal = Journal(tmp_path / "state", "st1")
    outputs = Outputs()
    decided: list = []
    recorded: list = []
    outputs.add("test", decided=lambda *a: decided.append(a), recorded=recorded.append)
    recipe = Recipe(name="default", deadline_ms=deadline_ms, failsafe="reject", model="m", gate=gate,
                    gate_mode="screen" if gate is not None else "off")
    camera = _Camera()
    ctl = LineController("st1", journal, Health("st1"), camera, "cam0", None, {"default": recipe}, "default",
                         {"m": ModelInfo("tiny@1", "multi-stage-v1", 3136, 50176)}, outputs, margin_ms=50)
    return ctl, journal, camera, decided, recorded


def _frame_for(key: str):
    from adfm.camera.frame import Frame

    return Frame(camera_id="cam0", image=np.full((32, 32, 3), 128, np.uint8), frame_number=1, part_id=key,
                 captured_mono=time.monotonic(), captured_wall=time.time())


def test_a_gate_pass_that_loses_the_race_is_kept_as_a_revision_and_the_main_row_stays(tmp_path):
    ctl, journal, camera, decided, recorded = _controller(tmp_path, gate=_SlowGate(0.5))
    ctl.start()
    try:
        ctl.trigger(LineTrigger(time.monotonic(), time.time(), part_id="A"))
        ctl.step(0.05)
        assert camera.fired and camera.fired[0][0] == "t1"  # fired at the trigger, before any journal write
        camera.frames.append(_frame_for("t1"))
        end = time.monotonic() + 5
        while time.monotonic() < end and (ctl.parts or len(recorded) < 2):
            ctl.step(0.05)
    finally:
        ctl.close()
    assert [d[1:3] for d in decided] == [("reject", "failsafe_timeout")]  # the line acted once, in time
    assert [(r.revision, r.decision_source) for r in recorded] == [(0, "failsafe_timeout"), (1, "gate")]
    main = journal.get(1)
    assert (main.revision, main.decision_source, main.action, main.verdict) == (0, "failsafe_timeout", "reject",
                                                                               "review")
    revs = journal.revisions(1)
    assert [(r.revision, r.verdict, r.decision_source) for r in revs] == [
        (0, "review", "failsafe_timeout"), (1, "pass", "gate")]
    journal.close()


def test_a_part_without_a_frame_leaves_memory_at_its_decision(tmp_path):
    ctl, journal, _camera, decided, recorded = _controller(tmp_path, deadline_ms=150.0)
    ctl.start()
    try:
        for i in range(3):
            ctl.trigger(LineTrigger(time.monotonic(), time.time(), part_id=f"P{i}"))
        end = time.monotonic() + 5
        while time.monotonic() < end and (ctl.parts or len(recorded) < 3):
            ctl.step(0.05)
        left = dict(ctl.parts)
    finally:
        ctl.close()
    assert left == {}
    assert [d[2] for d in decided] == ["failsafe_missed_frame"] * 3
    assert [r.seq for r in recorded] == [1, 2, 3] and journal.last_seq() == 3
    counters = ctl.counters()
    assert counters["deadline_misses"] == 0 and counters["parts_in_flight"] == 0 and counters["decided"] == 3
    journal.close()


def test_decisions_journaled_while_the_line_closes_are_still_published(tmp_path, monkeypatch):
    ctl, journal, _camera, decided, recorded = _controller(tmp_path, deadline_ms=120.0)
    complete = journal.complete

    def slow_complete(result):  # a busy disk: the row comes after the loop's last turn
        time.sleep(0.2)
        return complete(result)

    monkeypatch.setattr(journal, "complete", slow_complete)
    ctl.start()
    ctl.trigger(LineTrigger(time.monotonic(), time.time(), part_id="last"))
    end = time.monotonic() + 5
    while time.monotonic() < end and not decided:
        ctl.step(0.02)
    time.sleep(0.5)  # the row writer journals the decision; the loop does not turn again
    ctl.close()
    assert [d[2] for d in decided] == ["failsafe_missed_frame"]
    assert [(r.seq, r.part_id) for r in recorded] == [(1, "last")]  # published on the way out, not dropped
    assert journal.get(1) is not None
    journal.close()
