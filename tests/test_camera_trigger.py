"""Trigger modes through the CameraWorker: external ZeroMQ part ids, free-run sampling."""

from __future__ import annotations

import time

import pytest
import zmq

from adfm.camera import CameraConfig, CameraWorker
from tests.camera_support import collect, free_port, wait_until, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("rec") / "line.avi", frames=5)


@pytest.fixture
def push():
    ctx = zmq.Context.instance()
    sockets: list[zmq.Socket] = []

    def make(endpoint: str, kind: int = zmq.PUSH) -> zmq.Socket:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 5000)  # PUSH waits for the worker's bind to be connected
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close(0)


def _external(video, endpoint: str, **trigger) -> CameraConfig:
    return CameraConfig(
        id="cam1", url=f"replay:{video}", fps=50, queue_size=10,
        reconnect_min_s=0.01, reconnect_max_s=0.05,
        trigger={"mode": "external", "endpoint": endpoint, **trigger},
    )


def test_each_trigger_message_names_the_next_frame(video, push):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = CameraWorker(_external(video, endpoint))
    worker.start()
    try:
        assert collect(worker, 1, timeout=0.5) == []  # no trigger, no part, though frames are read
        assert wait_until(lambda: worker.frames_read > 5, timeout=10)
        sock = push(endpoint)
        sent_at = time.monotonic()
        sock.send(b"P-0001")
        sock.send_json({"part_id": "P-0002"})
        sock.send(b"bad/id")
        sock.send_multipart([b"hdr", b"P-0003"])
        frames = collect(worker, 3, timeout=10)
        assert [f.part_id for f in frames] == ["P-0001", "P-0002", "P-0003"]
        numbers = [f.frame_number for f in frames]
        assert numbers == sorted(numbers) and len(set(numbers)) == 3  # one frame per trigger
        assert all(f.captured_mono >= sent_at for f in frames)  # taken after the trigger
        assert collect(worker, 1, timeout=0.3) == []
        status = worker.status()
        assert status.captured == 3 and status.errors == 1 and "bad/id" in status.last_error
    finally:
        assert worker.stop(timeout=5)


def test_trigger_without_a_frame_expires_as_an_error(tmp_path, push):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = _external(tmp_path / "not-there.avi", endpoint, max_age_s=0.2)
    worker = CameraWorker(config)
    worker.start()
    try:
        push(endpoint).send(b"P-77")
        expired = "trigger for part 'P-77' expired: no frame within 0.2 s"
        assert wait_until(lambda: expired in worker.recent_errors(), timeout=10)
        assert worker.status().captured == 0
    finally:
        assert worker.stop(timeout=5)


def test_sub_socket_connects_to_a_publisher(video, push):
    port = free_port()
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    config = _external(video, f"tcp://127.0.0.1:{port}", socket="sub", bind=False, topic="line3")
    worker = CameraWorker(config)
    worker.start()
    try:
        frames: list = []
        deadline = time.monotonic() + 10
        while not frames and time.monotonic() < deadline:  # PUB drops until the SUB has joined
            pub.send_multipart([b"line4", b"NOT-MINE"])
            pub.send_multipart([b"line3", b"S-1"])
            frames = collect(worker, 1, timeout=0.1)
        assert frames and frames[0].part_id == "S-1"
        assert all(f.part_id == "S-1" for f in collect(worker, 3, timeout=0.3))
    finally:
        assert worker.stop(timeout=5)
        pub.close(0)


def test_free_run_samples_fewer_parts_than_frames(video):
    config = CameraConfig(id="cam1", url=f"replay:{video}", fps=100, queue_size=100,
                          trigger={"mode": "free-run", "parts_per_s": 10})
    worker = CameraWorker(config)
    worker.start()
    try:
        assert wait_until(lambda: worker.frames_read >= 40, timeout=15)
    finally:
        assert worker.stop(timeout=5)
    captured, read = worker.status().captured, worker.frames_read
    assert 1 <= captured < read / 2
    parts = collect(worker, captured, timeout=1)
    assert len({f.part_id for f in parts}) == captured  # each part its own id
