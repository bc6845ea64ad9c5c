"""The station service with a scripted model: verdict policy, retries, recovery, references,
the gate, a full disk — and the real process SIGKILLed and restarted."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from adfm.appliance.config.station import parse_config
from adfm.appliance.inspection.core import verdict_for
from adfm.appliance.inspection.worker import BackendSpec
from adfm.appliance.journal import store as journal_mod
from adfm.appliance.journal.store import Journal
from adfm.appliance.service import Service
from adfm.camera.frame import Frame
from adfm.geometry import ModelGrid
from adfm.protocol import format_response, parse_response
from tests.appliance_fakes import (
    FACTORY,
    MAX_PIXELS,
    MIN_PIXELS,
    ListCamera,
    calls,
    frame,
    station_dict,
    write_script,
)

REPO = Path(__file__).resolve().parents[1]


def run_service(tmp_path, actions, n_frames, config_over=None, **run_kw):
    script = write_script(tmp_path / "script.json", actions)
    cam = ListCamera()
    for i in range(n_frames):
        cam.put(frame(i))
    config = parse_config(station_dict(tmp_path, **(config_over or {})))
    service = Service(config, cameras={"cam0": cam}, backend=BackendSpec(FACTORY, {"script": str(script)}))
    summary = service.run(max_parts=run_kw.pop("max_parts", n_frames), **run_kw)
    return summary, cam, script, config


def test_verdict_policy():
    grid = ModelGrid.for_image(200, 150)
    yes = parse_response(format_response(True, [[1, 2, 30, 40]]), grid)
    no = parse_response(format_response(False), grid)
    junk = parse_response("<answer>maybe</answer>", grid)
    assert verdict_for(yes) == ("fail", "model answered yes (1 region)")
    assert verdict_for(no) == ("pass", "model answered no")
    assert verdict_for(junk)[0] == "review" and "unreadable" in verdict_for(junk)[1]
    verdict, reason = verdict_for(None, ["attempt 1: crashed", "attempt 2: hung"])
    assert verdict == "review" and "attempt 1: crashed | attempt 2: hung" in reason


def test_parts_flow_through_journal_with_boxes_in_original_pixels(tmp_path):
    summary, cam, script, config = run_service(tmp_path, ["malformed", "yes", "no"], 3)
    assert [r.verdict for r in summary.results] == ["review", "fail", "pass"]
    assert [r.seq for r in summary.results] == [1, 2, 3] and len(cam.acked) == 3
    review, fail, ok = summary.results
    assert "unreadable model answer" in review.reason and review.raw_response.startswith("I think")
    grid = ModelGrid.for_image(200, 150, MIN_PIXELS, MAX_PIXELS)
    # The backend saw the image on its model grid, and the box came back in original pixels.
    assert calls(script)[0]["sizes"] == [[grid.width, grid.height]]
    expected = grid.to_original([[10, 20, 60, 80]])[0]
    assert np.allclose(fail.boxes[0].xyxy, expected, atol=1e-6) and fail.boxes[0].label == "scratch"
    assert fail.model_id.startswith("tiny-q4_k_m@") and fail.prompt_version == "multi-stage-v1"
    for stage in ("capture", "journal", "resize", "vlm", "parse", "total"):
        assert stage in ok.latency_ms
    with Journal(config.journal_dir, "st1") as j:
        assert j.counts() == {"review": 1, "fail": 1, "pass": 1}
        assert np.array_equal(j.load_image(j.pending()[0]) if j.pending() else
                              np.asarray(Image.open(j.image_file(ok.image_path)).convert("RGB")), frame(2).image)
    prom = (tmp_path / "metrics" / "adfm.prom").read_text()
    assert 'adfm_parts_total{station="st1",verdict="fail"} 1.0' in prom
    assert 'adfm_stage_latency_ms_p50{stage="vlm",station="st1"}' in prom


def test_worker_killed_mid_part_is_restarted_and_the_part_retried(tmp_path):
    summary, _, script, _ = run_service(tmp_path, ["crash", "yes", "no"], 2)
    first, second = summary.results
    assert (first.verdict, first.attempts) == ("fail", 2)
    assert any("SIGKILL" in p for p in first.problems)
    assert (second.verdict, second.attempts) == ("pass", 1)
    assert summary.worker_restarts == 1
    assert len({c["pid"] for c in calls(script)}) == 2


def test_failing_twice_is_review_and_the_service_goes_on(tmp_path):
    summary, _, script, _ = run_service(tmp_path, ["hang", "crash", "no"], 2, {"model": {"deadline_s": 2.5}})
    assert [c["action"] for c in calls(script)] == ["hang", "crash", "no"]
    first, second = summary.results
    assert first.verdict == "review" and first.attempts == 2
    assert "no answer within 2.5 s" in first.reason and "SIGKILL" in first.reason
    assert second.verdict == "pass"


def test_reference_image_goes_first_on_its_own_grid(tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(ref)
    summary, _, script, _ = run_service(tmp_path, ["no"], 1, {
        "products": [{"name": "washer", "reference": str(ref)}],
        "cameras": [{"id": "cam0", "url": f"replay:{tmp_path}", "product": "washer"}],
    })
    rg = ModelGrid.for_image(400, 300, MIN_PIXELS, MAX_PIXELS)
    qg = ModelGrid.for_image(200, 150, MIN_PIXELS, MAX_PIXELS)
    call = calls(script)[0]
    assert call["sizes"] == [[rg.width, rg.height], [qg.width, qg.height]]
    assert call["product"] == "washer"
    assert summary.results[0].verdict == "pass"


def test_pending_parts_are_finished_at_start(tmp_path):
    config = parse_config(station_dict(tmp_path))
    with Journal(config.journal_dir, "st1") as j:
        a = j.accept(frame(0).image, part_id="left-a", camera="cam0", frame_number=0, captured_wall=time.time())
        b = j.accept(frame(1).image, part_id="left-b", camera="cam0", frame_number=1, captured_wall=time.time())
        j.note_recovery(b.seq)
        j.note_recovery(b.seq)  # two earlier start-ups already died on it
    summary, _, script, _ = run_service(tmp_path, ["yes"], 0, max_parts=2)
    got = {r.part_id: r for r in summary.results}
    assert got["left-a"].seq == a.seq and got["left-a"].verdict == "fail"
    assert got["left-b"].verdict == "review" and "stopped 2 times" in got["left-b"].reason
    assert len(calls(script)) == 1  # the part given up on was not sent to the model again


def test_screen_gate_passes_unsuspicious_parts_without_the_model(tmp_path, monkeypatch):
    class FakeGate:  # the parts of adfm.runtime.gate.Gate the station uses
        threshold, bank_sha256 = 0.5, None
        metadata = types.SimpleNamespace(training={}, model={})

        @classmethod
        def load(cls, path, threads=None):
            return cls()

        def score(self, image):
            s = float(image.mean()) / 255.0
            return types.SimpleNamespace(score=s, heatmap=np.zeros(image.shape[:2], np.float32),
                                         threshold=0.5, suspicious=s > 0.5)

    def save_heatmap(result, path):
        Image.fromarray((result.heatmap * 255).astype(np.uint8)).save(path)

    monkeypatch.setitem(sys.modules, "adfm.runtime.gate",
                        types.SimpleNamespace(Gate=FakeGate, save_heatmap=save_heatmap, GateError=RuntimeError,
                                              metadata_path=lambda p: Path(p).with_suffix(".json")))
    gate_file = tmp_path / "gate.onnx"
    gate_file.write_bytes(b"onnx")
    script = write_script(tmp_path / "script.json", ["yes"])
    cam = ListCamera()
    dark = frame(0)
    cam.put(Frame(**{**dark.__dict__, "image": (dark.image // 4)}))
    bright = frame(1)
    cam.put(Frame(**{**bright.__dict__, "image": np.maximum(bright.image, 200)}))
    config = parse_config(station_dict(tmp_path, gate={"mode": "screen", "path": str(gate_file)}))
    summary = Service(config, cameras={"cam0": cam},
                      backend=BackendSpec(FACTORY, {"script": str(script)})).run(max_parts=2)
    passed, flagged = summary.results
    assert passed.verdict == "pass" and "screening gate" in passed.reason and passed.attempts == 0
    assert flagged.verdict == "fail" and flagged.gate_score > 0.5
    assert (passed.decision_source, flagged.decision_source) == ("gate", "vlm") and passed.decided_at
    assert passed.gate_map_path.endswith(".gate.png")
    assert (config.journal_dir / passed.gate_map_path).is_file()
    assert len(calls(script)) == 1


def test_full_disk_leaves_the_frame_unacknowledged(tmp_path, monkeypatch):
    real = journal_mod.write_durable
    full_writes = {"left": 2}  # the journal prunes and retries once, so two refusals refuse the part

    def full_then_room(path, data):
        if full_writes["left"] > 0:
            full_writes["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(journal_mod, "write_durable", full_then_room)
    script = write_script(tmp_path / "script.json", ["no"])
    cam = ListCamera()
    cam.put(frame(0))
    cam.put(frame(1))
    config = parse_config(station_dict(tmp_path))
    summary = Service(config, cameras={"cam0": cam},
                      backend=BackendSpec(FACTORY, {"script": str(script)})).run(max_parts=1)
    assert [r.part_id for r in summary.results] == ["part-1"]
    assert [f.part_id for f in cam.acked] == ["part-1"]  # the refused part stays with its camera
    assert summary.results[0].seq == 1


def test_status_and_health_reach_a_client(tmp_path):
    from adfm.appliance.bus.client import StationClient

    script = write_script(tmp_path / "script.json", ["no"])
    cam = ListCamera()
    config = parse_config(station_dict(tmp_path))
    service = Service(config, cameras={"cam0": cam}, backend=BackendSpec(FACTORY, {"script": str(script)}))
    runner = threading.Thread(target=service.run, kwargs={"max_seconds": 60})
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not (service.bus and service.bus.bound and service.pipeline) and time.monotonic() < deadline:
            time.sleep(0.05)
        bound = service.bus.bound
        with StationClient(bound["publish"][0], bound["control"][0], from_seq=1) as client:
            for i in range(3):
                cam.put(frame(i))
            seqs: list[int] = []
            while len(seqs) < 3 and time.monotonic() < deadline:
                seqs += [r.seq for r in client.receive(0.2)]
            status = client.status()
        assert seqs == [1, 2, 3]
        assert status.station == "st1" and status.last_seq == 3 and status.worker_alive
        assert status.verdict_counts == {"pass": 3} and "vlm" in status.latency_ms_p50
        assert status.cameras[0].camera == "cam0"
    finally:
        service.request_stop("test over")
        runner.join(30)
    assert not runner.is_alive()


@pytest.mark.slow
def test_appliance_sigkilled_and_restarted_keeps_journal_and_seq(tmp_path):
    """The real `adfm-appliance run` process over a folder camera, SIGKILLed twice mid-run."""
    from adfm.appliance.bus.client import StationClient

    drop = tmp_path / "drop"
    drop.mkdir()
    n = 12
    for i in range(n):
        Image.fromarray(frame(i).image).save(drop / f"part{i:02d}.png")
    write_script(tmp_path / "script.json", ["slow"])
    pub, ctl = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/ctl"
    cfg = station_dict(tmp_path, model={"backend": FACTORY},
                       cameras=[{"id": "drop", "url": f"folder:{drop}", "folder": {"settle_s": 0.0}}],
                       bus={"publish": pub, "control": ctl})
    (tmp_path / "station.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "ADFM_FAKE_SCRIPT": str(tmp_path / "script.json"), "HF_HUB_OFFLINE": "1"}
    db = tmp_path / "state" / "journal.sqlite"

    def start():
        return subprocess.Popen(
            [sys.executable, "-m", "adfm.appliance.cli", "run", "--config", str(tmp_path / "station.yaml")],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def count(where: str = "") -> int:
        try:
            with closing(sqlite3.connect(db)) as c:
                return c.execute(f"SELECT COUNT(*) FROM parts {where}").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0

    def rows() -> int:
        return count() if db.exists() else 0

    def wait_rows(k: int, proc, timeout=60.0):
        deadline = time.monotonic() + timeout
        while rows() < k:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, f"only {rows()} parts journaled"
            time.sleep(0.05)

    received: list[int] = []
    stop = threading.Event()

    def follow():  # one subscriber across every restart
        with StationClient(pub, ctl, station="st1", from_seq=1, timeout_s=1.0, retries=1) as c:
            while not stop.is_set():
                try:
                    received.extend(r.seq for r in c.receive(0.2))
                except Exception:
                    time.sleep(0.2)  # station down: try again

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    for target in (3, 7):
        proc = start()
        wait_rows(target, proc)
        time.sleep(0.15)  # into the part in hand
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = start()
    deadline = time.monotonic() + 90
    while True:
        done = count("WHERE state = 'done'")
        if done >= n and not list(drop.glob("*.png")):
            break
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{done} of {n} parts done"
        time.sleep(0.1)
    while len(received) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    stop.set()
    follower.join(10)

    with closing(sqlite3.connect(db)) as c:
        parts = c.execute("SELECT seq, part_id, state FROM parts ORDER BY seq").fetchall()
    assert [p[0] for p in parts] == list(range(1, n + 1))  # seq continued, no gap, no reuse
    assert sorted(p[1] for p in parts) == [f"part{i:02d}" for i in range(n)]  # each part once
    assert all(p[2] == "done" for p in parts)
    assert sorted(p.name for p in (drop / "done").glob("*.png")) == [f"part{i:02d}.png" for i in range(n)]
    assert received == list(range(1, n + 1))  # the subscriber got every seq once, in order
    with closing(sqlite3.connect(db)) as c:
        stored = c.execute("SELECT part_id, image_path FROM parts").fetchall()
    for part_id, image_path in stored:  # the journal kept the camera's own files, not a re-encoding
        assert (tmp_path / "state" / image_path).read_bytes() == (drop / "done" / f"{part_id}.png").read_bytes()
