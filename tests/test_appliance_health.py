"""Health: latencies, rates, problems, the watchdog condition, and the Prometheus exposition."""

from __future__ import annotations

import socket
import urllib.request
from datetime import UTC, datetime

from adfm.appliance.system.health import Health, Metrics
from adfm.schema import CameraStatus, InspectionResult


def result(seq: int, verdict: str, vlm_ms: float) -> InspectionResult:
    return InspectionResult(station="st1", seq=seq, part_id=f"p{seq}", camera="cam0", frame_number=seq,
                            captured_at=datetime.now(UTC), verdict=verdict,
                            latency_ms={"vlm": vlm_ms, "journal": 2.0, "total": vlm_ms + 5})


def make_health(cams=None, worker=(True, 3)) -> Health:
    cams = cams if cams is not None else [CameraStatus(camera="cam0", connected=True, last_frame_age_s=0.1)]
    return Health("st1", model_id="m@1", camera_stall_s=30, verdict_counts={"pass": 10},
                  last_seq=lambda: 42, cameras=lambda: cams, worker=lambda: worker)


def test_snapshot_aggregates_parts():
    h = make_health()
    for i, ms in enumerate([100.0, 200.0, 300.0, 400.0]):
        h.record_part(result(i + 1, "fail" if i == 0 else "pass", ms), {"publish": 0.5})
    s = h.snapshot()
    assert s.healthy and s.last_seq == 42 and s.model_id == "m@1"
    assert s.verdict_counts == {"pass": 13, "fail": 1}
    assert s.latency_ms_p50["vlm"] == 250.0 and s.latency_ms_p95["vlm"] == 385.0
    assert s.latency_ms_p50["publish"] == 0.5
    assert s.parts_per_min > 0 and s.worker_alive and s.worker_restarts == 3


def test_problems_and_the_watchdog_condition():
    cams = [CameraStatus(camera="cam0", connected=False, last_error="rtsp timeout"),
            CameraStatus(camera="cam1", connected=True, last_frame_age_s=95.0)]
    h = make_health(cams)
    s = h.snapshot()
    assert not s.healthy
    assert s.problems == ["camera cam0 disconnected: rtsp timeout", "camera cam1: no frame for 95 s"]
    assert h.pipeline_ok()  # cameras reconnect on their own; a restart would not help
    h.problem("journal", "disk full")  # reported, but a restart cannot free a disk: watchdog stays fed
    assert h.pipeline_ok() and "disk full" in h.snapshot().problems
    h.clear("journal")
    h.problem("worker", "the model does not load")
    assert not h.pipeline_ok()
    h.clear("worker")
    assert h.pipeline_ok()
    idle = [CameraStatus(camera="trig0", connected=True, last_frame_age_s=900.0, streaming=False)]
    assert make_health(idle).snapshot().healthy  # a triggered camera or a folder on an idle line
    assert not h.pipeline_ok(max_heartbeat_age_s=-1.0)  # a stuck main loop stops the watchdog


def test_broken_providers_do_not_break_the_status():
    def boom():
        raise RuntimeError("camera thread gone")

    h = Health("st1", last_seq=boom, cameras=boom, worker=boom)
    s = h.snapshot()
    assert s.last_seq == 0 and s.cameras == [] and not s.worker_alive


def test_prometheus_exposition(tmp_path):
    cams = [CameraStatus(camera="cam0", connected=False, captured=7, dropped=2)]
    h = make_health(cams)
    h.record_part(result(1, "review", 120.0))
    m = Metrics(h, lambda: {"adfm_journal_image_bytes": 1234.0})
    text = m.render()
    for line in ('adfm_parts_total{station="st1",verdict="pass"} 10.0',
                 'adfm_parts_total{station="st1",verdict="review"} 1.0',
                 'adfm_worker_restarts_total{station="st1"} 3.0',
                 'adfm_camera_connected{camera="cam0",station="st1"} 0.0',
                 'adfm_camera_dropped_total{camera="cam0",station="st1"} 2.0',
                 'adfm_stage_latency_ms_p95{stage="vlm",station="st1"} 120.0',
                 'adfm_healthy{station="st1"} 0.0',
                 'adfm_last_seq{station="st1"} 42.0',
                 'adfm_journal_image_bytes{station="st1"} 1234.0'):
        assert line in text.splitlines(), line
    path = tmp_path / "metrics" / "adfm.prom"
    m.write_textfile(path)
    assert path.read_text().count("adfm_parts_total{") == 2 and not list(path.parent.glob("*.tmp*"))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m.serve(port)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'adfm_last_seq{station="st1"} 42.0' in body
    finally:
        m.close()
