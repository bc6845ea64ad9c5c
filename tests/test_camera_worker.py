"""The capture thread's resilience, driven by scripted sources: stalls, crashes, slow consumers."""

from __future__ import annotations

import logging

import numpy as np

from adfm.camera import CameraConfig, CameraWorker, FrameError, FrameSource, SourceError
from adfm.camera.source import now_pair
from tests.camera_support import collect, wait_until

FAST = {"reconnect_min_s": 0.01, "reconnect_max_s": 0.05}


class ScriptedSource(FrameSource):
    """Frames on demand; each open() may fail, and read() follows a per-connection script."""

    def __init__(self, config: CameraConfig, script, fail_opens: int = 0):
        super().__init__(config)
        self.script = script  # (connection number, read count) -> "frame" | "none" | Exception
        self.fail_opens = fail_opens
        self.opens = 0
        self.closes = 0
        self.reads = 0

    def open(self) -> None:
        if self.fail_opens > 0:
            self.fail_opens -= 1
            raise SourceError(f"{self.name}: refused")
        self.opens += 1
        self.reads = 0

    def read(self):
        self.reads += 1
        step = self.script(self.opens, self.reads)
        if isinstance(step, Exception):
            raise step
        if step == "none":
            return None
        mono, wall = now_pair()
        return self._make_frame(np.zeros((4, 6, 3), np.uint8), "scripted", mono, wall)

    def close(self) -> None:
        self.closes += 1


def _config(**fields) -> CameraConfig:
    return CameraConfig(**{"id": "s1", "url": "rtsp://127.0.0.1/scripted", **FAST, **fields})


def test_stall_is_detected_and_the_source_reopened():
    # first connection: 3 frames, then nothing; second connection: frames again
    source = ScriptedSource(_config(stall_timeout_s=0.3, queue_size=50),
                            lambda conn, n: "frame" if conn > 1 or n <= 3 else "none")
    worker = CameraWorker(source.config, source)
    worker.start()
    try:
        assert wait_until(lambda: source.opens >= 2, timeout=10)
        frames = collect(worker, 6, timeout=10)
    finally:
        assert worker.stop(timeout=5)
    assert len(frames) == 6
    status = worker.status()
    assert status.reconnects >= 1 and status.errors >= 1
    assert "(stalled)" in worker.recent_errors()[0]


def test_unexpected_exceptions_do_not_end_capture(caplog):
    caplog.set_level(logging.WARNING, logger="adfm.camera")
    source = ScriptedSource(_config(queue_size=50),
                            lambda conn, n: RuntimeError("driver bug") if conn == 1 and n == 2 else "frame",
                            fail_opens=2)
    worker = CameraWorker(source.config, source)
    worker.start()
    try:
        frames = collect(worker, 5, timeout=10)
    finally:
        assert worker.stop(timeout=5)
    assert len(frames) == 5
    errors = worker.recent_errors()
    assert errors[:2] == ["rtsp://127.0.0.1/scripted: refused"] * 2
    assert "unexpected RuntimeError: driver bug" in errors[2]
    assert worker.status().reconnects == 1 and source.opens == 2
    assert any(r.exc_info for r in caplog.records)  # the traceback is logged


def test_bad_frames_are_counted_and_skipped():
    source = ScriptedSource(_config(queue_size=50),
                            lambda conn, n: FrameError(f"frame {n}: corrupt") if n % 2 else "frame")
    worker = CameraWorker(source.config, source)
    worker.start()
    try:
        frames = collect(worker, 3, timeout=10)
    finally:
        assert worker.stop(timeout=5)
    assert len(frames) == 3 and source.opens == 1  # no reconnect for a bad frame
    assert worker.status().errors >= 3 and worker.status().last_error.endswith("corrupt")


def test_slow_consumer_gets_the_newest_frames_and_drops_are_counted():
    source = ScriptedSource(_config(queue_size=2), lambda conn, n: "frame" if n <= 10 else "none")
    worker = CameraWorker(source.config, source)
    worker.start()
    try:
        assert wait_until(lambda: worker.status().captured == 10, timeout=10)
        frames = collect(worker, 10, timeout=0.3)
    finally:
        assert worker.stop(timeout=5)
    assert [f.frame_number for f in frames] == [8, 9]
    status = worker.status()
    assert (status.captured, status.dropped) == (10, 8)


def test_status_before_start_and_stop_without_start():
    worker = CameraWorker(_config())
    status = worker.status()
    assert not status.connected and status.last_frame_age_s is None and status.captured == 0
    assert worker.stop(timeout=1) and not worker.running and not worker.finished
