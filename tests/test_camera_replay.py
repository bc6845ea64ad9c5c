"""Replay sources (a generated video, a folder of images) alone and through the CameraWorker."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from adfm.camera import CameraConfig, CameraWorker, SourceError, SourceFinished, open_source
from tests.camera_support import FRAME_SIZE, collect, encode, shaded_frame, wait_until, write_video

W, H = FRAME_SIZE
FAST = {"reconnect_min_s": 0.01, "reconnect_max_s": 0.05}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("rec") / "line.avi", frames=6)


def _read(source, count: int, timeout: float = 10.0) -> list:
    frames, deadline = [], time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        frame = source.read()
        if frame is not None:
            frames.append(frame)
    return frames


def test_video_replay_frames_carry_pixels_ids_and_stamps(video):
    config = CameraConfig(id="cam1", url=f"replay:{video}", fps=200, loop=False)
    with open_source(config) as source:
        frames = _read(source, 6)
        with pytest.raises(SourceFinished):
            for _ in range(50):
                source.read()
    assert [f.frame_number for f in frames] == list(range(6))
    for i, frame in enumerate(frames):
        assert frame.camera_id == "cam1"
        assert frame.image.shape == (H, W, 3) and frame.image.dtype == np.uint8
        assert abs(float(np.median(frame.image)) - 10 * i) <= 3  # frame i was written with shade 10·i
        assert frame.part_id.startswith("cam1-") and frame.part_id.endswith(f"-{i}")
        assert frame.source_name == "line.avi"
    monos = [f.captured_mono for f in frames]
    assert monos == sorted(monos) and len(set(monos)) == 6
    assert all(abs(f.captured_wall - time.time()) < 60 for f in frames)


def test_looping_replay_starts_again(video):
    config = CameraConfig(id="cam1", url=f"replay:{video}", fps=200, loop=True)
    with open_source(config) as source:
        frames = _read(source, 8)
    shades = [round(float(np.median(f.image)) / 10) for f in frames]
    assert shades == [0, 1, 2, 3, 4, 5, 0, 1]
    assert [f.frame_number for f in frames] == list(range(8))  # numbering does not restart


def test_worker_plays_once_then_reports_finished(video):
    worker = CameraWorker(CameraConfig(id="cam1", url=f"replay:{video}", fps=100, loop=False, queue_size=10))
    worker.start()
    try:
        assert wait_until(lambda: worker.status().captured == 6, timeout=10)
        assert not worker.finished  # exhausted, but six frames still wait in the queue
        frames = collect(worker, 6, timeout=5)
        assert wait_until(lambda: worker.finished, timeout=5)
    finally:
        assert worker.stop(timeout=5)
    assert len(frames) == 6
    status = worker.status()
    assert (status.captured, status.dropped, status.errors) == (6, 0, 0)
    assert worker.get(timeout=0.01) is None


def test_roi_and_rotation_from_config(video):
    config = CameraConfig(id="cam1", url=f"replay:{video}", fps=200, roi=[8, 4, 40, 20], rotate=270)
    with open_source(config) as source:
        frame = _read(source, 1)[0]
    assert (frame.width, frame.height) == (20, 40)


def test_image_folder_replay_skips_a_corrupt_file_and_names_it(tmp_path, caplog):
    for i in (1, 2, 10):
        (tmp_path / f"part{i}.png").write_bytes(encode(shaded_frame(20 * i)))
    (tmp_path / "part3.png").write_bytes(encode(shaded_frame(60))[:100])  # truncated
    (tmp_path / "readme.txt").write_text("not a frame")  # not an image suffix: ignored
    config = CameraConfig(id="cam2", url=f"replay:{tmp_path}", fps=100, loop=False, queue_size=10, **FAST)
    worker = CameraWorker(config)
    caplog.set_level(logging.WARNING, logger="adfm.camera")
    worker.start()
    try:
        assert wait_until(lambda: worker.finished or worker.status().captured == 3, timeout=10)
        frames = collect(worker, 3, timeout=5)
    finally:
        worker.stop()
    assert [f.source_name for f in frames] == ["part1.png", "part2.png", "part10.png"]
    assert [int(np.median(f.image)) for f in frames] == [20, 40, 200]
    status = worker.status()
    assert status.errors == 1 and "part3.png" in status.last_error
    assert any("part3.png" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "part3.png").exists()  # replay never moves or deletes recordings


def test_missing_recording_is_retried_not_fatal(tmp_path):
    missing = tmp_path / "later.avi"
    config = CameraConfig(id="cam3", url=f"replay:{missing}", fps=50, **FAST)
    worker = CameraWorker(config)
    worker.start()
    try:
        assert wait_until(lambda: worker.status().errors >= 3, timeout=10)
        status = worker.status()
        assert not status.connected and "does not exist" in status.last_error
        write_video(missing, frames=3)  # the recording appears: the same worker picks it up
        assert len(collect(worker, 2, timeout=10)) == 2
        assert worker.status().connected
    finally:
        assert worker.stop(timeout=5)


def test_open_errors_are_source_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    for url, needle in [(f"replay:{tmp_path / 'empty'}", "no image files"),
                        (f"replay:{tmp_path / 'junk.mp4'}", "not a readable video")]:
        source = open_source(CameraConfig(id="c", url=url))
        with pytest.raises(SourceError, match=needle):
            source.open()


def test_image_folder_frames_carry_their_file_and_video_frames_none(tmp_path, video):
    (tmp_path / "part1.png").write_bytes(encode(shaded_frame(30)))
    with open_source(CameraConfig(id="cam2", url=f"replay:{tmp_path}", fps=100)) as source:
        frame = _read(source, 1)[0]
    assert frame.encoded == (tmp_path / "part1.png").read_bytes()
    with open_source(CameraConfig(id="cam2", url=f"replay:{tmp_path}", fps=100, roi=[0, 0, 8, 8])) as source:
        assert _read(source, 1)[0].encoded is None  # cropped: not the file's pixels
    with open_source(CameraConfig(id="cam1", url=f"replay:{video}", fps=200)) as source:
        assert _read(source, 1)[0].encoded is None
