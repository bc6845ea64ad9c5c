"""`adfm-appliance camera-probe`: through the appliance CLI, as an integrator runs it."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest
import yaml

from adfm.appliance.cli import main
from tests.camera_support import FRAME_SIZE, MjpegServer, encode, free_port, shaded_frame, write_video

W, H = FRAME_SIZE


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("rec") / "line.avi", frames=8)


def _probe_json(capsys, *argv: str) -> tuple[int, dict]:
    rc = main(["camera-probe", *argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_replay_probe_reports_frames_resolution_and_counters(video, capsys):
    rc, report = _probe_json(capsys, f"replay:{video}", "--frames", "4", "--fps", "100")
    assert rc == 0 and report["ok"]
    assert report["frames_received"] == 4 and report["frames_requested"] == 4
    assert report["resolution"] == [W, H] and report["resolutions_seen"] == [[W, H]]
    assert report["kind"] == "replay" and report["status"]["connected"]
    assert report["status"]["errors"] == 0 and report["errors"] == []
    assert report["status"]["captured"] >= 4 and report["source"]["backend"] == "video file"
    assert report["delivered_fps"] > 0


def test_human_report_and_flags(video, capsys, tmp_path):
    saved = tmp_path / "shot" / "frame.png"
    rc = main(["camera-probe", f"replay:{video}", "--frames", "2", "--fps", "100",
               "--roi", "0", "0", "40", "30", "--rotate", "90", "--save", str(saved)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "OK: 2 of 2 frames" in out and "resolution   30x40" in out and "errors       none" in out
    image = cv2.imread(str(saved))
    assert image is not None and image.shape == (40, 30, 3)


def test_http_probe(capsys):
    with MjpegServer(free_port(), shade=90) as server:
        rc, report = _probe_json(capsys, server.url, "--frames", "3", "--timeout", "15")
    assert rc == 0 and report["frames_received"] == 3 and report["resolution"] == [W, H]
    assert report["source"]["backend"] == "FFMPEG"


def test_folder_probe_touches_no_file(tmp_path, capsys):
    (tmp_path / "A1.png").write_bytes(encode(shaded_frame(10)))
    (tmp_path / "junk.png").write_text("this is not a png at all")
    config = tmp_path.parent / f"{tmp_path.name}-camera.yaml"
    config.write_text("id: scan1\nfolder:\n  settle_s: 0\n  poll_interval_s: 0.02\n")
    rc, report = _probe_json(capsys, f"folder:{tmp_path}", "--config", str(config),
                             "--frames", "1", "--timeout", "10")
    assert rc == 0 and report["camera"] == "scan1" and report["part_ids"] == ["A1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A1.png", "junk.png"]
    if report["status"]["errors"]:  # the junk file may be looked at before the probe ends
        assert "junk.png: not an image" in report["errors"][0] and "left in place" in report["errors"][0]


def test_no_frames_is_a_failure_with_the_reason(tmp_path, capsys):
    rc, report = _probe_json(capsys, f"replay:{tmp_path / 'gone.mp4'}", "--timeout", "0.5")
    assert rc == 1 and not report["ok"] and report["frames_received"] == 0
    assert report["problems"] == [f"no frame within 0.5 s: the camera could not be opened or was lost "
                                  f"(replay {tmp_path / 'gone.mp4'}: does not exist)"]
    assert any("gone.mp4: does not exist" in e for e in report["errors"])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bogus:1"], "unsupported camera url 'bogus:1'"),
        (["usb:0", "--roi", "0", "0", "0", "5"], "roi"),
        (["usb:0", "--config", "/nonexistent/camera.yaml"], "cannot read /nonexistent/camera.yaml"),
    ],
)
def test_bad_settings_exit_2_naming_the_problem(argv, needle, capsys):
    assert main(["camera-probe", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_bad_field_in_config_file_is_named(tmp_path, capsys):
    config = tmp_path / "cam.yaml"
    config.write_text("id: cam1\nqueue_size: -3\nexposure: 5\n")
    assert main(["camera-probe", "usb:0", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "queue_size" in err and "exposure" in err


# ---- a station's camera, by id ---------------------------------------------------------------------


def _station_file(tmp_path, cameras: list[dict]) -> str:
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump({"station": "s1", "model": {"dir": "model"}, "cameras": cameras}))
    return str(path)


def test_probe_takes_a_camera_from_the_station_file(video, tmp_path, capsys):
    (tmp_path / "rec").mkdir()
    shutil.copy(video, tmp_path / "rec" / "line.avi")
    station = _station_file(tmp_path, [{"id": "top", "url": "replay:rec/line.avi", "fps": 100},
                                       {"id": "side", "url": "v4l2:/dev/video9"}])
    rc, report = _probe_json(capsys, "--config", station, "--camera", "top", "--frames", "2")
    assert rc == 0 and report["camera"] == "top" and report["frames_received"] == 2
    assert report["url"] == f"replay:{tmp_path / 'rec' / 'line.avi'}"  # relative to the station file
    assert main(["camera-probe", "--config", station]) == 2
    assert "the station has 2 cameras (top, side); choose one with --camera ID" in capsys.readouterr().err
    assert main(["camera-probe", "--config", station, "--camera", "front"]) == 2
    assert "no camera with id 'front'; the station's cameras: top, side" in capsys.readouterr().err


def test_a_camera_waiting_for_a_link_trigger_is_fired_by_the_probe(video, tmp_path, capsys):
    station = _station_file(tmp_path, [{"id": "cam0", "url": f"replay:{video}", "trigger": {"mode": "link"}}])
    rc, report = _probe_json(capsys, "--config", station, "--frames", "3", "--timeout", "10")
    assert rc == 0 and report["frames_received"] == 3
    assert report["triggers_fired"] == 3 and report["part_ids"] == ["probe-1", "probe-2", "probe-3"]
