"""RTSP (H.264 over RTP, interleaved on TCP) from ffmpeg through a loopback relay.

Needs the `ffmpeg` binary (Debian: apt-get install ffmpeg); skipped without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from adfm.appliance.cli import main
from adfm.camera import CameraConfig, CameraWorker
from tests.camera_support import FRAME_SIZE, RTSP_COLOR_RGB, RtspRelay, collect, has_ffmpeg, start_rtsp_publisher

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_ffmpeg(), reason="needs the ffmpeg binary to publish a test RTSP stream"),
]
W, H = FRAME_SIZE


@pytest.fixture
def rtsp_url():
    relay = RtspRelay()
    publisher = start_rtsp_publisher(relay.url)
    try:
        if not relay.recording.wait(15):
            publisher.kill()
            pytest.fail(f"ffmpeg did not start publishing: {publisher.stderr.read().decode()[-500:]}")
        yield relay.url
    finally:
        publisher.kill()
        publisher.wait(5)
        relay.close()


def test_rtsp_frames_arrive_as_rgb(rtsp_url):
    worker = CameraWorker(CameraConfig(id="door", url=rtsp_url, open_timeout_s=10, stall_timeout_s=5))
    worker.start()
    try:
        frames = collect(worker, 5, timeout=30)
    finally:
        assert worker.stop(timeout=10)
    assert len(frames) == 5
    for frame in frames:
        assert frame.image.shape == (H, W, 3)
        mean_rgb = frame.image.reshape(-1, 3).mean(axis=0)
        assert np.allclose(mean_rgb, RTSP_COLOR_RGB, atol=6), mean_rgb  # red first: converted from BGR
    assert worker.status().errors == 0


def test_rtsp_probe(rtsp_url, capsys):
    rc = main(["camera-probe", rtsp_url, "--frames", "3", "--timeout", "30", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["frames_received"] == 3 and report["resolution"] == [W, H]
