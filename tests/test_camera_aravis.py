"""GenICam cameras through Aravis, against Aravis's own simulated cameras (loopback only).

The in-process `Fake` camera serves discovery, free run and camera control; the GigE Vision fake
camera (a child process on 127.0.0.1) serves software triggers and the kill/restart test.
Config checks run everywhere; the rest skips, saying why, only where Aravis is not installed.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from pydantic import ValidationError

from adfm.camera.config import CameraConfig
from adfm.camera.errors import CameraSettingsError, SourceError
from adfm.camera.genicam import AravisTarget, parse_target
from tests.aravis_support import fake_gv_camera_or_skip, require_aravis
from tests.camera_support import collect, wait_until

FAKE = {"interfaces": ["Fake"]}


def fake_config(genicam: dict | None = None, **fields) -> CameraConfig:
    return CameraConfig.model_validate({"id": "gc0", "url": "aravis:Fake_1", "stall_timeout_s": 3,
                                        "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                                        "genicam": {**FAKE, **(genicam or {})}, **fields})


def gv_config(genicam: dict | None = None, **fields) -> CameraConfig:
    return CameraConfig.model_validate({"id": "gv0", "url": "aravis:address=127.0.0.1", "stall_timeout_s": 2,
                                        "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                                        "genicam": {"interfaces": ["GigEVision"], "sensor_roi": [0, 0, 64, 48],
                                                    **(genicam or {})}, **fields})


@pytest.fixture
def fake_gv_camera():
    camera = fake_gv_camera_or_skip()
    try:
        yield camera
    finally:
        camera.kill()


def started(config: CameraConfig):
    from adfm.camera.capture_thread import CameraWorker

    worker = CameraWorker(config)
    worker.start()
    return worker


# ---- config (no Aravis needed) -------------------------------------------------------------------


def test_aravis_urls_name_a_camera_by_id_serial_or_address():
    assert parse_target("") == AravisTarget("first")
    assert parse_target("Basler-21234567") == AravisTarget("id", "Basler-21234567")
    assert parse_target("serial=21234567") == AravisTarget("serial", "21234567")
    assert parse_target("address=192.0.2.10") == AravisTarget("address", "192.0.2.10")
    with pytest.raises(ValueError, match="unknown selector 'mac'"):
        parse_target("mac=00:11")
    cfg = CameraConfig(id="c", url="aravis:serial=42")
    assert cfg.kind == "aravis" and cfg.genicam is not None and cfg.genicam.interfaces == ["GigEVision", "USB3Vision"]
    assert cfg.trigger.mode == "free-run"


def test_triggered_camera_makes_every_exposure_a_part():
    cfg = CameraConfig.model_validate({"id": "c", "url": "aravis:", "genicam": {"trigger": "line",
                                       "trigger_line": "Line1", "trigger_activation": "falling-edge"}})
    assert cfg.trigger.mode == "camera"


@pytest.mark.parametrize(("data", "message"), [
    ({"url": "usb:0", "genicam": {}}, "genicam settings apply to aravis: urls"),
    ({"url": "aravis:", "genicam": {"trigger": "line"}}, "needs trigger_line"),
    ({"url": "aravis:", "genicam": {"trigger_line": "Line1"}}, "only used by trigger 'line'"),
    ({"url": "aravis:", "genicam": {"trigger": "software"}, "trigger": {"mode": "free-run"}},
     "trigger.mode must be 'camera'"),
    ({"url": "aravis:", "genicam": {"trigger": "line", "trigger_line": "Line1"},
      "trigger": {"mode": "external", "endpoint": "tcp://127.0.0.1:5601"}},
     "or 'external' or 'link' with genicam.trigger 'software'"),
    ({"url": "aravis:", "trigger": {"mode": "camera"}}, "needs an aravis: url with genicam.trigger"),
    ({"url": "aravis:", "fps": 10}, "set genicam.frame_rate_hz"),
    ({"url": "aravis:", "genicam": {"trigger": "software", "frame_rate_hz": 5}}, "frame_rate_hz applies to free run"),
    ({"url": "aravis:", "genicam": {"features": {"ExposureTime": 5}}}, "ExposureTime is set by its own key"),
    ({"url": "aravis:", "genicam": {"features": {"bad name": 1}}}, "not a GenICam feature name"),
    ({"url": "aravis:", "genicam": {"sensor_roi": [0, 0, 0, 10]}}, "sensor_roi"),
    ({"url": "aravis:", "genicam": {"interfaces": ["FireWire"]}}, "interfaces"),
    ({"url": "aravis:", "genicam": {"exposure": 100}}, "exposure"),
])
def test_bad_genicam_settings_are_refused_naming_the_key(data, message):
    with pytest.raises(ValidationError, match=message):
        CameraConfig.model_validate({"id": "c", **data})


# ---- the in-process Fake camera ------------------------------------------------------------------


def test_discovery_lists_the_fake_camera():
    require_aravis()
    from adfm.camera.aravis import discover

    found = discover(["Fake"])
    assert [(c.id, c.serial, c.protocol, c.vendor) for c in found] == [("Fake_1", "1", "Fake", "Aravis")]
    assert found[0].url == "aravis:Fake_1"


def test_free_run_frames_carry_the_camera_frame_id_and_timestamp():
    require_aravis()
    worker = started(fake_config({"sensor_roi": [0, 0, 64, 48], "frame_rate_hz": 20, "pixel_format": "BayerRG8"}))
    try:
        frames = collect(worker, 6, timeout=10)
    finally:
        worker.stop()
    assert len(frames) == 6
    ids = [f.camera_frame_id for f in frames]
    stamps = [f.camera_timestamp_ns for f in frames]
    assert ids == list(range(ids[0], ids[0] + 6))  # queue of 2, but the consumer keeps up at 20 fps
    period_ms = (stamps[-1] - stamps[0]) / 5 / 1e6  # the fake exposes on 50 ms boundaries of its clock
    assert abs(period_ms - 50.0) < 3.0 and all(b > a for a, b in itertools.pairwise(stamps)), stamps
    for f in frames:
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8  # Bayer demosaiced to RGB
        assert f.meta["pixel_format"] == "BayerRG8" and f.source_name.endswith(f"#{f.camera_frame_id}")
    assert len({f.part_id for f in frames}) == 6


def test_exposure_gain_and_pixel_format_are_set_and_read_back():
    require_aravis()
    from adfm.camera.aravis import AravisSource

    source = AravisSource(fake_config({"exposure_us": 2500, "gain_db": 4, "pixel_format": "Mono16",
                                       "sensor_roi": [16, 8, 32, 24], "features": {"TestBoolean": True}}))
    source.open()
    try:
        assert float(source.feature("ExposureTimeAbs")) == 2500.0  # the fake's (older SFNC) feature names
        assert int(source.feature("GainRaw")) == 4
        assert source.feature("PixelFormat") == "Mono16"
        assert [source.feature(n) for n in ("OffsetX", "OffsetY", "Width", "Height")] == ["16", "8", "32", "24"]
        assert source.feature("TestBoolean") == "true"
        frame = None
        while frame is None:
            frame = source.read()
        assert frame.image.shape == (24, 32, 3) and frame.meta["pixel_format"] == "Mono16"
        info = source.info()
        assert info["backend"] == "aravis" and info["exposure_us"].startswith("2500 ")
        assert source.statistics()["n_completed_buffers"] >= 1
        with pytest.raises(CameraSettingsError, match="no feature 'NoSuchFeature'"):
            source.feature("NoSuchFeature")
    finally:
        source.close()


@pytest.mark.parametrize(("genicam", "message"), [
    ({"features": {"NoSuchFeature": 1}},
     r"genicam\.features\.NoSuchFeature: the camera has no feature 'NoSuchFeature'"),
    ({"exposure_us": 1e12}, r"genicam\.exposure_us: 1e\+12 is outside ExposureTimeAbs's range \[10, 1e\+07\]"),
    ({"gain_db": 50}, r"genicam\.gain_db: 50 is outside GainRaw's range \[0, 10\]"),
    ({"pixel_format": "Mono12"}, r"'Mono12' is not an entry of PixelFormat \(camera offers: .*Mono8"),
    ({"sensor_roi": [0, 0, 4096, 16]}, r"genicam\.sensor_roi: 4096 is outside Width's range \[1, 2048\]"),
    ({"trigger": "line", "trigger_line": "Line7"},
     r"genicam\.trigger_line: 'Line7' is not an entry of TriggerSource \(camera offers: Line0, Software\)"),
    ({"trigger": "line", "trigger_line": "Line0", "trigger_activation": "falling-edge"},
     r"genicam\.trigger_activation: 'FallingEdge' is not an entry of TriggerActivation"),
    ({"features": {"TestBoolean": 3}}, r"TestBoolean is a boolean feature, got 3"),
    ({"features": {"SensorWidth": 100}}, r"feature SensorWidth is not writable"),
])
def test_settings_the_camera_refuses_name_the_feature(genicam, message):
    require_aravis()
    from adfm.camera.aravis import AravisSource

    source = AravisSource(fake_config(genicam))
    with pytest.raises(CameraSettingsError, match=message) as err:
        source.open()
    assert "camera gc0 aravis:Fake_1 (Aravis Fake, serial 1)" in str(err.value)
    source.close()


def test_worker_reports_a_refused_setting_and_keeps_retrying():
    require_aravis()
    worker = started(fake_config({"features": {"NoSuchFeature": 1}}))
    try:
        assert wait_until(lambda: worker.status().errors >= 2, timeout=10)
        status = worker.status()
        assert not status.connected and "NoSuchFeature" in status.last_error and status.captured == 0
    finally:
        worker.stop()


def test_hardware_line_trigger_is_armed_and_waits_for_the_line():
    require_aravis()
    from adfm.camera.aravis import AravisSource

    source = AravisSource(fake_config({"trigger": "line", "trigger_line": "Line0"}))
    assert not source.streaming  # an idle trigger line is no stall, and triggered frames are never dropped
    source.open()
    try:
        assert [source.feature(n) for n in ("TriggerSelector", "TriggerMode", "TriggerSource", "TriggerActivation")] \
            == ["FrameStart", "On", "Line0", "RisingEdge"]
        assert source.info()["trigger"] == "line on Line0, rising-edge"
        with pytest.raises(SourceError, match=r"software_trigger needs genicam\.trigger 'software'"):
            source.software_trigger()
    finally:
        source.close()


def test_open_by_serial_and_the_first_camera():
    require_aravis()
    for url in ("aravis:serial=1", "aravis:"):
        cfg = CameraConfig.model_validate({"id": "c", "url": url, "genicam": FAKE})
        worker = started(cfg)
        try:
            frames = collect(worker, 1, timeout=10)
        finally:
            worker.stop()
        assert frames and frames[0].camera_frame_id is not None, url
    missing = CameraConfig.model_validate({"id": "c", "url": "aravis:serial=nope", "genicam": FAKE})
    from adfm.camera.aravis import AravisSource

    with pytest.raises(SourceError, match=r"no camera with serial number 'nope' on Fake"):
        AravisSource(missing).open()


def test_camera_probe_lists_cameras_and_key_features(capsys):
    require_aravis()
    from adfm.appliance.cli import main

    rc = main(["camera-probe", "aravis:Fake_1", "--interface", "Fake", "--frames", "3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"] and report["kind"] == "aravis"
    assert [c["url"] for c in report["cameras"]] == ["aravis:Fake_1"]
    assert report["source"]["vendor"] == "Aravis" and "Software" in report["source"]["trigger_sources"]
    assert "exposure_us" in report["source"] and "pixel_formats" in report["source"]
    assert report["stream"]["n_completed_buffers"] >= 3

    assert main(["camera-probe", "aravis:Fake_1", "--interface", "Fake", "--frames", "2"]) == 0
    text = capsys.readouterr().out
    assert "cameras      1 found" in text and "aravis:Fake_1  Aravis Fake, serial 1" in text
    assert "trigger_sources" in text and "stream       completed_buffers" in text


# ---- the GigE Vision fake camera on 127.0.0.1 ----------------------------------------------------


def test_software_trigger_gives_exactly_one_frame_per_trigger(fake_gv_camera):
    worker = started(gv_config({"trigger": "software", "exposure_us": 1000}))
    try:
        assert wait_until(lambda: worker.status().connected, timeout=10)
        assert worker.get(timeout=0.6) is None  # armed: nothing comes without a trigger
        frames = []
        for _ in range(4):
            worker.source.software_trigger()
            frame = worker.get(timeout=5.0)
            assert frame is not None
            frames.append(frame)
            assert worker.get(timeout=0.3) is None  # one trigger, one frame
        assert float(worker.source.feature("ExposureTimeAbs")) == 1000.0
        status = worker.status()
    finally:
        worker.stop()
    ids = [f.camera_frame_id for f in frames]
    assert ids == list(range(ids[0], ids[0] + 4))
    stamps = [f.camera_timestamp_ns for f in frames]
    assert all(b > a for a, b in itertools.pairwise(stamps)) and stamps[0] > 0
    assert len({f.part_id for f in frames}) == 4 and all(f.image.shape == (48, 64, 3) for f in frames)
    assert status.captured == 4 and status.dropped == 0 and status.errors == 0
    assert not status.streaming  # the health does not call an idle trigger line a stall
    assert worker.source.software_triggers == 4


def test_each_zeromq_trigger_fires_the_camera_once_and_names_the_part(fake_gv_camera):
    import zmq

    from tests.camera_support import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = gv_config({"trigger": "software"}, trigger={"mode": "external", "endpoint": endpoint})
    worker = started(config)
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 5000)
    sock.connect(endpoint)
    try:
        assert wait_until(lambda: worker.status().connected, timeout=10)
        frames = []
        for part in ("P-1", "P-2", "P-3"):
            sock.send(part.encode())
            frame = worker.get(timeout=5.0)
            assert frame is not None, part
            frames.append(frame)
        assert worker.get(timeout=0.5) is None  # three messages, three exposures
        status = worker.status()
    finally:
        sock.close(0)
        worker.stop()
    assert [f.part_id for f in frames] == ["P-1", "P-2", "P-3"]
    ids = [f.camera_frame_id for f in frames]
    assert ids == list(range(ids[0], ids[0] + 3)) and worker.source.software_triggers == 3
    assert status.captured == 3 and status.errors == 0


def test_a_triggered_exposure_without_a_free_buffer_is_reported_as_lost(fake_gv_camera):
    """Triggered frames are never dropped by adfm; when the consumer stalls long enough for the
    camera's buffer pool to run dry, Aravis counts the underrun and the worker reports the lost part."""
    import time

    worker = started(gv_config({"trigger": "software", "buffers": 2}, queue_size=1))
    try:
        assert wait_until(lambda: worker.status().connected, timeout=10)
        for _ in range(6):  # nobody consumes: 1 queued, 1 waiting in the capture thread, 2 in buffers
            worker.source.software_trigger()
            time.sleep(0.2)
        frames = collect(worker, 6, timeout=3)
        assert wait_until(lambda: worker.status().errors >= 1, timeout=5)
        worker.source.software_trigger()  # the next frame shows the gap in the camera's frame ids
        frames += collect(worker, 1, timeout=5)
        assert wait_until(lambda: worker.status().errors >= 2, timeout=5)
        stats = worker.source.statistics()
        status = worker.status()
        errors = worker.recent_errors()
    finally:
        worker.stop()
    ids = [f.camera_frame_id for f in frames]
    assert len(frames) == 5 and ids[:4] == list(range(ids[0], ids[0] + 4)) and ids[4] == ids[3] + 3
    assert status.dropped == 0 and stats["n_completed_buffers"] == 5 and stats["n_underruns"] > 0
    assert any("the stream had no free buffer" in e for e in errors)
    assert any(f"2 triggered frame(s) missing before camera frame {ids[4]}" in e for e in errors)


def _frames(worker, count: int, triggered: bool) -> list:
    if not triggered:
        return collect(worker, count, timeout=10)
    frames = []
    for _ in range(count):
        worker.source.software_trigger()
        frames += collect(worker, 1, timeout=5)
    return frames


@pytest.mark.parametrize("trigger", ["off", "software"])
def test_frames_resume_after_the_camera_is_killed_and_restarted(fake_gv_camera, trigger):
    """A long stall timeout: the loss must be seen through the GigE Vision heartbeat (free run) or the
    idle check of a triggered camera, not by waiting for frames."""
    triggered = trigger == "software"
    genicam = {"trigger": trigger} if triggered else {"frame_rate_hz": 20}
    worker = started(gv_config(genicam, stall_timeout_s=60))
    try:
        assert wait_until(lambda: worker.status().connected, timeout=10)
        assert len(_frames(worker, 3, triggered)) == 3
        fake_gv_camera.kill()
        # the loss itself, not just an error: on a busy machine incomplete frames count errors too
        assert wait_until(lambda: not worker.status().connected, timeout=20)
        lost = worker.status()
        fake_gv_camera.start()
        assert wait_until(lambda: worker.status().reconnects >= 1 and worker.status().connected, timeout=20)
        collect(worker, 2, timeout=1)  # whatever was queued before the kill
        resumed = _frames(worker, 3, triggered)
        status = worker.status()
    finally:
        worker.stop()
    assert not lost.connected
    seen = ("does not answer", "control of the camera lost") if triggered else ("control of the camera lost",)
    assert any(m in lost.last_error for m in seen) and "aravis:address=127.0.0.1" in lost.last_error
    assert len(resumed) == 3 and all(f.camera_frame_id is not None for f in resumed)
    assert status.connected and status.reconnects >= 1


def test_probe_fires_a_software_triggered_camera_and_explains_a_line_triggered_one(fake_gv_camera, tmp_path, capsys):
    """The station's camera waits for triggers: the probe fires them (software), or says a line must pulse."""
    import yaml

    from adfm.appliance.cli import main

    cam = {"id": "gv0", "url": "aravis:address=127.0.0.1",
           "genicam": {"interfaces": ["GigEVision"], "sensor_roi": [0, 0, 64, 48], "trigger": "software"}}
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({"station": "s1", "model": {"dir": "m"}, "cameras": [cam]}))
    rc = main(["camera-probe", "--config", str(station), "--camera", "gv0", "--frames", "3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["frames_received"] == 3 and report["triggers_fired"] == 3
    assert report["resolution"] == [64, 48]

    cam["genicam"] = {**cam["genicam"], "trigger": "line", "trigger_line": "Line0"}
    station.write_text(yaml.safe_dump({"station": "s1", "model": {"dir": "m"}, "cameras": [cam]}))
    rc = main(["camera-probe", "--config", str(station), "--timeout", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and report["triggers_fired"] == 0
    assert "exposes only on a pulse on Line0 (genicam.trigger: line)" in report["problems"][-1]
