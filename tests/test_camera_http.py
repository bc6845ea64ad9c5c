"""HTTP MJPEG from a loopback server; the server killed mid-stream and restarted.

The source must reconnect (backoff with jitter) and frames resume, while another camera keeps
delivering throughout.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from adfm.camera import CameraConfig, CameraWorker
from tests.camera_support import FRAME_SIZE, MjpegServer, collect, free_port, wait_until, write_video

W, H = FRAME_SIZE


def _shade(frame) -> int:
    return int(np.median(frame.image))


@pytest.mark.slow
def test_mjpeg_stream_survives_a_server_kill_and_restart(tmp_path):
    port = free_port()
    stream = CameraWorker(CameraConfig(
        id="ipcam", url=f"http://127.0.0.1:{port}/stream.mjpg", stall_timeout_s=1.0, open_timeout_s=1.0,
        reconnect_min_s=0.05, reconnect_max_s=0.4, queue_size=4,
    ))
    other = CameraWorker(CameraConfig(
        id="bench", url=f"replay:{write_video(tmp_path / 'bench.avi', frames=4)}", fps=40, queue_size=2,
    ))
    server = MjpegServer(port, shade=60).start()
    stream.start()
    other.start()
    try:
        before = collect(stream, 5, timeout=15)
        assert len(before) == 5
        assert all(abs(_shade(f) - 60) <= 2 for f in before)
        assert all(f.image.shape == (H, W, 3) for f in before)
        assert stream.status().connected

        server.kill()
        killed_at = time.monotonic()
        while other.get(timeout=0) is not None:  # start the other camera's count from the kill
            pass
        assert wait_until(lambda: not stream.status().connected, timeout=10)
        assert wait_until(lambda: stream.status().errors >= 2, timeout=10)  # failed read, refused reopen
        while stream.get(timeout=0.05) is not None:  # frames buffered before the kill
            pass

        # the other camera is not held up by this one's outage
        other_during = collect(other, 5, timeout=10)
        assert len(other_during) == 5 and all(f.captured_mono > killed_at for f in other_during)

        server = MjpegServer(port, shade=180).start()
        after = collect(stream, 5, timeout=20)
        assert len(after) == 5
        assert all(abs(_shade(f) - 180) <= 2 for f in after)  # really from the restarted server
        assert after[0].frame_number > before[-1].frame_number  # one numbering across reconnects
        status = stream.status()
        assert status.connected and status.reconnects >= 1 and status.last_error
        assert status.camera == "ipcam" and status.url.startswith("http://127.0.0.1")
    finally:
        server.kill()
        assert stream.stop(timeout=10)
        assert other.stop(timeout=5)


@pytest.mark.slow
def test_silent_stream_counts_as_stalled_and_is_reopened():
    port = free_port()
    worker = CameraWorker(CameraConfig(
        id="ipcam", url=f"http://127.0.0.1:{port}/stream.mjpg", stall_timeout_s=0.5, open_timeout_s=2.0,
        reconnect_min_s=0.05, reconnect_max_s=0.2, queue_size=20,
    ))
    with MjpegServer(port, shade=70, stall_after=3):  # 3 frames per connection, then silence
        worker.start()
        try:
            assert wait_until(lambda: worker.status().reconnects >= 1, timeout=20)
            frames = collect(worker, 6, timeout=20)
        finally:
            assert worker.stop(timeout=10)
    assert len(frames) == 6  # frames from the first connection and from the reopened one
    status = worker.status()
    assert status.errors >= 1 and "timed out after 0.5 s" in worker.recent_errors()[0]


def test_unreachable_stream_is_retried_with_backoff():
    port = free_port()  # nothing listens there
    worker = CameraWorker(CameraConfig(
        id="ipcam", url=f"http://127.0.0.1:{port}/x.mjpg", open_timeout_s=1.0,
        reconnect_min_s=0.02, reconnect_max_s=0.1,
    ))
    worker.start()
    try:
        assert wait_until(lambda: worker.status().errors >= 3, timeout=10)
        status = worker.status()
        assert not status.connected and status.captured == 0
        assert "cannot open" in status.last_error and str(port) in status.last_error
    finally:
        assert worker.stop(timeout=5)
