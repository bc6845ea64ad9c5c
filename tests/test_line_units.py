"""The line's pieces one by one: journal rows at the trigger, minimal records and revisions; a trigger
never takes an earlier frame and triggered frames are never dropped; device timestamps; the config's
checks; the ejector's encoder arithmetic."""

from __future__ import annotations

import errno
import time

import numpy as np
import pytest

from adfm.appliance.config.station import ConfigError, parse_config
from adfm.appliance.journal import store as journal_mod
from adfm.appliance.journal.store import Journal, JournalError, JournalFullError
from adfm.camera.capture import device_capture_mono
from adfm.camera.capture_thread import CameraWorker
from adfm.camera.config import CameraConfig
from adfm.camera.frame import Frame
from adfm.camera.triggers import LinkTrigger
from adfm.schema import InspectionResult
from tests.line_support import SyntheticStream, line_config
from tests.plc_standin import standin_modbus


def _result(part, **kw) -> InspectionResult:
    base = dict(station="st1", seq=part.seq, part_id=part.part_id, camera="cam0", frame_number=0,
                captured_at=part.captured_at, verdict="review", decision_source="failsafe_timeout", action="reject")
    return InspectionResult(**{**base, **kw})


def test_a_triggered_part_has_a_row_before_its_frame_and_revisions_keep_the_first_decision(tmp_path):
    with Journal(tmp_path, "st1") as j:
        p1 = j.open_part(part_id="A", camera="cam0", triggered_wall=time.time())
        p2 = j.open_part(part_id="B", camera="cam0", triggered_wall=time.time())
        assert (p1.seq, p2.seq) == (1, 2) and p1.image_path == ""
        assert [p.seq for p in j.pending()] == [1, 2]
        p1 = j.attach_image(p1, np.zeros((20, 30, 3), np.uint8), frame_number=7, captured_wall=time.time())
        assert p1.image_path and (tmp_path / p1.image_path).is_file() and (p1.image_width, p1.image_height) == (30, 20)
        first = j.complete(_result(p1, frame_number=7, image_path=p1.image_path))
        assert j.revisions(1) == [first]
        with pytest.raises(ValueError, match="revision >= 1"):
            j.revise(first)
        with pytest.raises(JournalError, match="names part 'X'"):
            j.revise(first.model_copy(update={"part_id": "X", "revision": 1}))
        with pytest.raises(JournalError, match="no decided part"):
            j.revise(_result(p2, revision=1))
        late = j.revise(first.model_copy(update={"revision": 1, "verdict": "fail", "decision_source": "vlm"}))
        assert late.revision == 1 and late.verdict == "fail" and late.action == "reject"
        again = j.revise(first.model_copy(update={"revision": 1, "verdict": "pass"}))  # a re-send changes nothing
        assert again.verdict == "fail"
        revs = j.revisions(1)
        assert [(r.revision, r.verdict, r.decision_source) for r in revs] == [
            (0, "review", "failsafe_timeout"), (1, "fail", "vlm")]
        # the main row is what the line did: the fail-safe's decision, not the later verdict
        main = j.get(1)
        assert (main.revision, main.verdict, main.decision_source, main.action) == (
            0, "review", "failsafe_timeout", first.action)
        assert j.last_seq() == 1  # seq 2 still pending
        assert j.counts() == {"review": 1}


def test_a_full_disk_keeps_the_row_as_a_minimal_record(tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with Journal(tmp_path, "st1") as j:
        part = j.open_part(part_id="A", camera="cam0", triggered_wall=time.time())
        monkeypatch.setattr(journal_mod, "write_durable", full)
        with pytest.raises(JournalFullError, match="its row is kept"):
            j.attach_image(part, np.zeros((8, 8, 3), np.uint8), frame_number=1, captured_wall=time.time())
        assert not list((tmp_path / "images").rglob("*.png"))
        stored = j.complete(_result(part, decision_source="failsafe_disk_full", problems=["minimal record: full"]))
        assert stored.image_path == "" and stored.decision_source == "failsafe_disk_full"


def _frame(mono: float, n: int) -> Frame:
    return Frame("cam0", np.zeros((4, 4, 3), np.uint8), n, f"f{n}", mono, time.time())


def test_a_link_trigger_never_takes_a_frame_captured_before_it_and_expires():
    trig = LinkTrigger()
    t = time.monotonic()
    trig.fire("p1", at_mono=t, expires_mono=t + 1.0)
    assert trig.take(_frame(t - 0.001, 0)) is None  # exposed before the trigger
    assert trig.take(_frame(t + 0.010, 1)) == "p1"
    assert trig.take(_frame(t + 0.020, 2)) is None  # one frame per trigger
    trig.fire("p2", at_mono=t, expires_mono=t + 0.5)
    trig.fire("p3", at_mono=t + 0.6, expires_mono=t + 2.0)
    assert trig.take(_frame(t + 0.7, 3)) == "p3"  # p2 expired before this frame: never given a later part's frame
    trig.fire("p4", at_mono=t, expires_mono=t + 0.1)
    assert trig.poll(t + 0.2) == ["trigger for part 'p4' expired without a frame"] and trig.pending == 0


def test_triggered_frames_are_never_dropped_by_the_live_view_policy():
    cfg = CameraConfig(id="cam0", url="replay:/nonexistent", trigger={"mode": "link"}, queue_size=1)
    source = SyntheticStream(cfg, fps=100)
    cam = CameraWorker(cfg, source=source)
    cam.start()
    try:
        time.sleep(0.2)
        t = time.monotonic()
        for i in range(6):  # six parts, nobody reading: a live-view queue of one would keep only the last
            cam.fire(f"p{i}", t + i * 0.02, t + 5.0)
        time.sleep(0.5)
        got = [cam.get(0.1) for _ in range(6)]
    finally:
        cam.stop()
    assert [f.part_id for f in got if f is not None] == [f"p{i}" for i in range(6)]
    assert all(f.captured_mono >= t + i * 0.02 for i, f in enumerate(got))
    assert cam.status().dropped == 0
    free = CameraWorker(CameraConfig(id="cam1", url="replay:/nonexistent", queue_size=1))
    with pytest.raises(RuntimeError, match="not 'link'"):
        free.fire("p", t, t + 1)


def test_a_v4l2_buffer_time_is_used_only_when_it_is_on_the_monotonic_clock():
    now = time.monotonic()
    assert device_capture_mono((now - 0.040) * 1000.0, now) == pytest.approx(now - 0.040)
    assert device_capture_mono(0.0, now) is None  # driver gave none
    assert device_capture_mono(1234.0, now + 100.0) is None  # a stream position, not a clock
    assert device_capture_mono((now + 1.0) * 1000.0, now) is None  # in the future: not this clock


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["plc"]["modbus"]["ejector"].update(delay_ms=300), "shorter than the line deadline 500 ms"),
    (lambda c: c["plc"]["modbus"].update(part_id_register=101), "holding registers overlap: result 100..104"),
    (lambda c: c["cameras"][0]["trigger"].update(mode="free-run"), "trigger.mode must be 'link'"),
    (lambda c: c["plc"]["modbus"].update(ejector={"coil": 8, "delay_ms": 700, "distance_counts": 10}),
     "either delay_ms, or encoder_register"),
    (lambda c: c.update(opcua={"endpoint": "opc.tcp://0.0.0.0:4840/"}), "reachable off this machine"),
    (lambda c: c.update(recipes=[{"name": "a", "code": 1}, {"name": "b", "code": 1}]), "recipe codes must be unique"),
    (lambda c: c["line"].update(failsafe="maybe"), "line.failsafe"),
    (lambda c: c.pop("line"), "plc and recipes need a `line` section"),
    (lambda c: c["plc"]["modbus"].update(reject="bit"), "reject: bit needs mode: handshake"),
    (lambda c: c["plc"]["modbus"].update(mode="handshake", trigger={"table": "counter"}),
     "part_id_register is part of handshake.inputs"),
    (lambda c: c["plc"].update(modbus={**standin_modbus(1502, handshake={"reject": "bit"}),
                                       "ejector": {"coil": 8, "delay_ms": 700}}), "remove the ejector section"),
    (lambda c: c["plc"].update(modbus={**standin_modbus(1502, handshake={"outputs": 14})}),
     "holding registers overlap: handshake.inputs 10..17 and handshake.outputs 14..53"),
    (lambda c: c["plc"].update(modbus={**standin_modbus(1502, handshake={}), "trigger": {"table": "discrete_input"}}),
     "mode: handshake needs trigger.table: counter"),
])
def test_line_config_errors_name_the_key(tmp_path, change, message):
    cfg = line_config(tmp_path, 1502)
    parse_config(cfg)  # the base is valid
    change(cfg)
    with pytest.raises(ConfigError) as exc:
        parse_config(cfg, "station.yaml")
    assert message in str(exc.value) and "station.yaml" in str(exc.value)


def test_encoder_distance_survives_the_counter_wrapping():
    from adfm.appliance.plc.modbus import U32, ModbusLink, _InFlight, u32_to_words, words_to_u32

    start = U32 - 500
    part = _InFlight(seq=1, due_mono=None, due_count=(start + 2000) % U32, start_count=start)
    reached = [c for c in (start + 1000, start + 1999, start + 2000, start + 2500)
               if ModbusLink._reached(part, 0.0, c % U32)]
    assert [(c - start) for c in reached] == [2000, 2500]
    assert words_to_u32(*u32_to_words(U32 + 7)) == 7 and u32_to_words(70000) == [70000 - 65536, 1]


def test_recipe_files_are_checked(tmp_path):
    from adfm.appliance.config.station import check_resources

    cfg = line_config(tmp_path, 1502, recipes=[{"name": "a", "code": 1, "model_dir": str(tmp_path / "nomodel"),
                                                "gate_mode": "screen", "gate_path": str(tmp_path / "no.onnx")}])
    problems = check_resources(parse_config(cfg, "station.yaml"), "station.yaml")
    assert any(p.startswith("station.yaml: recipes.0.gate_path:") and "not found" in p for p in problems), problems
    assert any(p.startswith("station.yaml: recipes.0.model_dir:") for p in problems), problems


def test_trigger_edges_and_counters():
    from adfm.appliance.plc.modbus import new_parts

    assert [new_parts("discrete_input", a, b) for a, b in ((0, 1), (1, 1), (1, 0), (0, 0))] == [1, 0, 0, 0]
    assert new_parts("counter", 7, 10) == 3  # a late poll loses no part
    assert new_parts("counter", 65535, 1) == 2  # wraps at 2**16
    assert new_parts("counter", 500, 0) == 65036  # a reset looks like a huge advance: implausible, refused
    from adfm.appliance.config.line import TriggerInput

    t = TriggerInput(table="counter", max_parts_per_s=50, max_burst=4)
    assert t.plausible(3, 0.01) == 4 and t.plausible(3, 1.0) == 54  # 50/s × elapsed + the burst


def test_link_triggers_fire_an_on_demand_camera_once_each():
    """The capture thread fires a software-triggered camera once per trigger accepted during a poll."""
    trig = LinkTrigger()
    t = time.monotonic()
    for i in range(3):
        trig.fire(f"p{i}", t, t + 5.0)
    before = trig.accepted
    trig.poll(t)
    assert trig.accepted - before == 3
    trig.poll(t)
    assert trig.accepted - before == 3  # counted once
    cfg = CameraConfig(id="c", url="aravis:Fake_1", genicam={"trigger": "software"}, trigger={"mode": "link"})
    assert cfg.trigger.mode == "link"
