"""The defects an outside review found (issue 19), one test (or more) per item; each fails on the
code before the fixes. Real sockets, real SQLite files, the real service and CLI."""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq

from adfm.appliance import service as service_mod
from adfm.appliance.bus.client import StationClient, StationError, StationUnreachable
from adfm.appliance.bus.keys import load_client_curve, load_server_curve
from adfm.appliance.bus.server import ResultBus
from adfm.appliance.config.station import ConfigError, parse_config
from adfm.appliance.inspection.worker import BackendSpec
from adfm.appliance.journal import store as journal_mod
from adfm.appliance.journal.store import Journal, JournalError
from adfm.appliance.service import Service
from adfm.appliance.system.health import Health
from adfm.schema import (
    CameraStatus,
    InspectionResult,
    OperatorVerdict,
    StationStatus,
    VerdictRequest,
)
from tests.appliance_fakes import FACTORY, BusStation, ListCamera, frame, make_keys, station_dict, write_script


def _image(i: int) -> np.ndarray:
    return np.full((24, 32, 3), i % 250, np.uint8)


def _part(journal: Journal, i: int, part_id: str | None = None, raw: str = "") -> InspectionResult:
    """Accept and complete one part (with its image path, as the pipeline records it)."""
    p = journal.accept(_image(i), part_id=part_id or f"p{i}", camera="cam0", frame_number=i,
                       captured_wall=time.time())
    return journal.complete(InspectionResult(
        station=journal.station, seq=p.seq, part_id=p.part_id, camera="cam0", frame_number=i,
        captured_at=p.captured_at, verdict="fail", raw_response=raw, image_path=p.image_path))


def _collect(client: StationClient, until, timeout_s: float = 15.0) -> list:
    events: list = []
    deadline = time.monotonic() + timeout_s
    while not until(events) and time.monotonic() < deadline:
        events += client.poll(0.2)
    return events


# ---- 1. a replaced journal: epochs, resync, verdicts checked against the part --------------------


def test_a_replaced_journal_is_a_new_epoch_and_followers_resync_from_its_start(tmp_path):
    from adfm.appliance.bus.client import JournalReplaced

    pub, ctl = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/ctl"

    def station(root: Path) -> tuple[Journal, ResultBus]:
        journal = Journal(root, "st1")
        bus = ResultBus("st1", journal, lambda: StationStatus(station="st1", healthy=True,
                                                              last_seq=journal.last_seq()),
                        publish=[pub], control=[ctl], status_interval_s=0.2)
        bus.start()
        return journal, bus

    journal, bus = station(tmp_path / "old")
    for i in range(1, 4):
        bus.publish(_part(journal, i, f"old-{i}"))
    old_epoch = journal.epoch
    client = StationClient(pub, ctl, from_seq=1, timeout_s=1.0)
    got = _collect(client, lambda ev: sum(isinstance(e, InspectionResult) for e in ev) >= 3)
    assert [e.seq for e in got if isinstance(e, InspectionResult)] == [1, 2, 3]
    assert client.epoch == old_epoch
    bus.stop()
    journal.close()

    journal, bus = station(tmp_path / "new")  # the journal replaced: seqs restart at 1
    try:
        assert journal.epoch != old_epoch
        for i in range(1, 3):
            bus.publish(_part(journal, i, f"new-{i}"))
        got = _collect(client, lambda ev: sum(isinstance(e, InspectionResult) for e in ev) >= 2)
        replaced = [e for e in got if isinstance(e, JournalReplaced)]
        results = [e for e in got if isinstance(e, InspectionResult)]
        assert replaced and replaced[0].old_epoch == old_epoch and replaced[0].new_epoch == journal.epoch
        assert [(r.seq, r.part_id, r.epoch) for r in results] == [(1, "new-1", journal.epoch),
                                                                   (2, "new-2", journal.epoch)]
        # A verdict queued against the old journal's seq 2 must not land on the new seq 2.
        with pytest.raises(StationError, match="epoch"):
            client.send_verdict(2, "confirmed_defect", "anna", part_id="old-2", epoch=old_epoch)
        assert journal.verdicts(2) == []
    finally:
        client.close()
        bus.stop()
        journal.close()


def test_a_verdict_is_refused_when_its_seq_now_names_another_part(tmp_path):
    with Journal(tmp_path, "st1") as j:
        _part(j, 1, "washer-17")
        wrong = OperatorVerdict(station="st1", seq=1, decision="false_alarm", operator="anna",
                                verdict_id="v1", part_id="washer-03", epoch=j.epoch)
        with pytest.raises(JournalError, match=r"'washer-03' but seq 1 .* is part 'washer-17'"):
            j.add_verdict(wrong)
        right = wrong.model_copy(update={"part_id": "washer-17", "verdict_id": "v2"})
        assert j.add_verdict(right).stored
        assert j.verdicts(1)[0].part_id == "washer-17"


def test_results_replays_and_status_carry_the_epoch(tmp_path):
    station = BusStation(tmp_path)
    try:
        station.part()
        with station.client() as c:
            assert c.status().epoch == station.journal.epoch
            assert c.replay(1)[0].epoch == station.journal.epoch
    finally:
        station.close()
    with Journal(tmp_path, "st1") as j:  # the epoch belongs to the file: the same after reopening
        assert j.epoch == station.journal.epoch


# ---- 2. bounded memory -----------------------------------------------------------------------------


def test_the_service_keeps_counts_not_every_result(tmp_path, monkeypatch):
    monkeypatch.setattr(service_mod, "SUMMARY_RESULTS", 3)
    script = write_script(tmp_path / "script.json", ["no", "yes"])
    cam = ListCamera()
    for i in range(8):
        cam.put(frame(i))
    service = Service(parse_config(station_dict(tmp_path)), cameras={"cam0": cam},
                      backend=BackendSpec(FACTORY, {"script": str(script)}))
    summary = service.run(max_parts=8)
    assert summary.parts == 8 and sum(summary.verdicts.values()) == 8 and summary.first_seq == 1
    assert [r.seq for r in summary.results] == [6, 7, 8]  # only the newest few are held
    assert service._results.maxlen == 3


# ---- 3. size limits on the control socket; replies paged by bytes ----------------------------------


def _raw_request(endpoint: str, message: dict) -> dict:
    """A control request as any program could send it, without the client library's checks."""
    import json

    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart([b"", json.dumps(message).encode()])
        assert dealer.poll(5000), "no reply"
        return json.loads(dealer.recv_multipart()[-1])
    finally:
        dealer.close()


def test_oversized_and_overlong_requests_are_refused_and_the_bus_keeps_serving(tmp_path):
    from adfm.schema import MAX_REQUEST_BYTES

    station = BusStation(tmp_path)
    try:
        result = station.part()
        ctx = zmq.Context.instance()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(station.control_ep)
        huge = OperatorVerdict.model_construct(
            station="st1", seq=1, decision="skip", operator="x", note="n" * (30 * 1024 * 1024),
            verdict_id="huge", part_id="p1", epoch="", client="", at=result.captured_at,
            schema_version="1.0", type="operator_verdict")
        dealer.send_multipart([b"", VerdictRequest.model_construct(verdict=huge, schema_version="1.0",
                                                                   type="verdict").model_dump_json().encode()])
        assert not dealer.poll(1500)  # dropped by ZeroMQ before the bus thread saw it
        dealer.close()
        with station.client() as c:
            assert c.status().station == "st1"  # still serving
        for field, value, why in (("note", "n" * 5000, "at most 2000 characters"),
                                  ("operator", "x" * 500, "at most 128 characters"),
                                  ("verdict_id", "v" * 200, "at most 64 characters")):
            verdict = {"station": "st1", "seq": 1, "decision": "skip", "operator": "anna", "verdict_id": "v1",
                       "part_id": "p1", field: value}
            reply = _raw_request(station.control_ep, {"type": "verdict", "verdict": verdict})
            assert reply["type"] == "error" and f"verdict.{field}: String should have {why}" in reply["error"]
        assert station.journal.verdicts(1) == []
        assert MAX_REQUEST_BYTES <= 64 * 1024
    finally:
        station.close()


def test_replay_replies_are_paged_by_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_mod, "REPLAY_MAX_BYTES", 250_000)
    station = BusStation(tmp_path)
    try:
        for i in range(1, 13):
            _part(station.journal, i, raw="x" * 100_000)  # long model text, as 8,192 tokens can be
        results, last, more = station.journal.replay(1, limit=5000, max_bytes=journal_mod.REPLAY_MAX_BYTES)
        assert last == 12 and more and 1 <= len(results) <= 3
        with station.client() as c:
            assert [r.seq for r in c.replay(1)] == list(range(1, 13))  # all of it, page by page
    finally:
        station.close()


# ---- 4. verdicts attributed to the authenticated key -----------------------------------------------


def test_verdicts_are_attributed_to_the_key_and_a_forged_operator_is_refused(tmp_path):
    keys = make_keys(tmp_path / "keys", ["review", "mes"], operators={"review": ["anna", "ben"]})
    station = BusStation(tmp_path / "j", curve=load_server_curve(keys.server_secret, keys.authorized_clients))
    try:
        for _ in range(2):
            station.part()
        review = load_client_curve(keys.server_public, keys.client_secrets["review"])
        mes = load_client_curve(keys.server_public, keys.client_secrets["mes"])
        with station.client(curve=review) as c:
            with pytest.raises(StationError, match="'plant-manager' is not registered for client key 'review'"):
                c.send_verdict(1, "false_alarm", "plant-manager")
            c.send_verdict(1, "confirmed_defect", "anna")
        with station.client(curve=mes) as c:
            c.send_verdict(2, "skip", "bob")
        assert [(v.operator, v.client) for v in station.journal.verdicts(1)] == [("anna", "review")]
        assert [(v.operator, v.client) for v in station.journal.verdicts(2)] == [("bob", "mes")]
        # The client cannot set the attribution itself.
        with station.client(curve=mes) as c:
            forged = OperatorVerdict(station="st1", seq=2, decision="skip", operator="bob", verdict_id="f1",
                                     part_id="p2", client="review")
            c.request(VerdictRequest(verdict=forged))
        assert station.journal.verdicts(2)[-1].client == "mes"
        db = sqlite3.connect(station.journal.db_path)
        assert db.execute("SELECT client FROM operator_verdicts WHERE verdict_id = 'f1'").fetchone() == ("mes",)
        db.close()
    finally:
        station.close()


# ---- 6. secrets redacted ---------------------------------------------------------------------------


def test_a_camera_password_never_reaches_a_config_error_or_the_log(tmp_path, caplog):
    with pytest.raises(ConfigError) as info:
        parse_config(station_dict(tmp_path, cameras=[{"id": "cam0", "url": "rtsp://admin:S3cret@/stream1"}]))
    text = str(info.value)
    assert "S3cret" not in text and "admin:***@" in text

    from adfm.appliance.cli import RedactingFormatter

    try:
        raise RuntimeError("open failed for rtsp://u:pw9@h/x")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("adfm", logging.ERROR, __file__, 1, "cannot open %s", ("rtsp://u:pw9@h/x",),
                               exc_info)
    line = RedactingFormatter("%(message)s").format(record)
    assert line.startswith("cannot open rtsp://u:***@h/x") and "pw9" not in line
    assert "RuntimeError: open failed for rtsp://u:***@h/x" in line  # the traceback too


# ---- 7. a full disk degrades; nothing is lost; no restart loop -------------------------------------


def test_a_full_disk_holds_parts_back_keeps_the_watchdog_fed_and_resumes(tmp_path, monkeypatch):
    from PIL import Image

    drop = tmp_path / "drop"
    drop.mkdir()
    n = 6
    for i in range(n):
        Image.fromarray(frame(i).image).save(drop / f"part{i:02d}.png")
    real = journal_mod.write_durable
    full = threading.Event()
    full.set()

    def maybe_full(path, data):
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(journal_mod, "write_durable", maybe_full)
    script = write_script(tmp_path / "script.json", ["no"])
    config = parse_config(station_dict(tmp_path, cameras=[{"id": "drop", "url": f"folder:{drop}",
                                                           "folder": {"settle_s": 0.0}}]))
    service = Service(config, backend=BackendSpec(FACTORY, {"script": str(script)}))
    seen: dict = {}

    def watch():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (service.health and service.pipeline):
            time.sleep(0.02)
        time.sleep(1.5)  # the disk stays full a while
        seen["problems"] = service.health.snapshot().problems
        seen["watchdog_ok"] = service.health.pipeline_ok()
        full.clear()

    watcher = threading.Thread(target=watch)
    watcher.start()
    summary = service.run(max_parts=n, max_seconds=60)
    watcher.join()
    assert any("disk full" in p for p in seen["problems"]) and seen["watchdog_ok"]
    assert summary.parts == n and summary.last_seq == n  # every refused file was delivered again
    assert sorted(p.name for p in drop.iterdir() if p.is_file()) == []  # all journaled and moved


def test_a_result_the_journal_refuses_is_recorded_before_the_next_part(tmp_path, monkeypatch):
    from adfm.appliance.journal.store import JournalFullError

    real = Journal.complete
    refusals = {"left": 3}

    def complete(self, result):
        if refusals["left"]:
            refusals["left"] -= 1
            raise JournalFullError(f"{self.root}: disk full (test)")
        return real(self, result)

    monkeypatch.setattr(Journal, "complete", complete)
    monkeypatch.setattr("adfm.appliance.modes.freerun.JOURNAL_RETRY_S", (0.05, 0.1))
    script = write_script(tmp_path / "script.json", ["no"])
    cam = ListCamera()
    for i in range(4):
        cam.put(frame(i))
    summary = Service(parse_config(station_dict(tmp_path)), cameras={"cam0": cam},
                      backend=BackendSpec(FACTORY, {"script": str(script)})).run(max_parts=4, max_seconds=60)
    assert summary.parts == 4 and summary.last_seq == 4
    with Journal(tmp_path / "state", "st1") as j:
        assert [r.part_id for r in j.replay(1)[0]] == [f"part-{i}" for i in range(4)]


# ---- 8. transactions: a failed COMMIT is rolled back, no orphan file, no lock across fsync ---------


class _FailingCommit(sqlite3.Connection):
    fail_commits = 0

    def execute(self, sql, *args):
        if sql == "COMMIT" and _FailingCommit.fail_commits > 0:
            _FailingCommit.fail_commits -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


def test_a_failed_commit_is_rolled_back_and_leaves_no_image(tmp_path, monkeypatch):
    real_connect = sqlite3.connect
    monkeypatch.setattr(journal_mod.sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=_FailingCommit, **k))
    with Journal(tmp_path, "st1") as j:
        _FailingCommit.fail_commits = 1
        with pytest.raises(JournalError, match="disk I/O error"):
            j.accept(_image(0), part_id="p0", camera="cam0", frame_number=0, captured_wall=time.time())
        assert [p for p in (tmp_path / "images").rglob("*") if p.is_file()] == []
        part = j.accept(_image(1), part_id="p1", camera="cam0", frame_number=1, captured_wall=time.time())
        assert part.seq == 1 and j.image_file(part.image_path).is_file()


def test_verdicts_do_not_wait_behind_an_image_being_written(tmp_path, monkeypatch):
    with Journal(tmp_path, "st1", busy_timeout_s=0.5) as j:
        _part(j, 1)
        writing, release = threading.Event(), threading.Event()
        real = journal_mod.write_durable

        def slow_write(path, data):
            writing.set()
            release.wait(10)  # a slow disk: the PNG's fsync takes its time
            real(path, data)

        monkeypatch.setattr(journal_mod, "write_durable", slow_write)
        accepting = threading.Thread(target=lambda: j.accept(_image(2), part_id="p2", camera="cam0",
                                                             frame_number=2, captured_wall=time.time()))
        accepting.start()
        try:
            assert writing.wait(10)
            t0 = time.monotonic()
            outcome = j.add_verdict(OperatorVerdict(station="st1", seq=1, decision="skip", operator="anna",
                                                    verdict_id="v1", part_id="p1"))
            assert outcome.stored and time.monotonic() - t0 < 0.4
        finally:
            release.set()
            accepting.join(10)
        assert j.last_seq() == 1 and len(j.pending()) == 1


def _corrupt(db: Path) -> None:
    """Overwrite pages in the middle of the database file (page 1, the schema, is spared)."""
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    pages = len(data) // page
    rng = np.random.default_rng(0)
    for k in range(2, pages - 1, 3):
        data[k * page + 8:(k + 1) * page] = rng.integers(0, 256, page - 8, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))


def test_a_damaged_journal_is_found_at_open_checked_and_recovered(tmp_path, capsys):
    from adfm.appliance.cli import main
    from adfm.appliance.journal.store import JournalCorrupt

    with Journal(tmp_path, "st1") as j:
        for i in range(1, 400):
            _part(j, i, raw="model text " * 20)
        epoch = j.epoch
    _corrupt(tmp_path / "journal.sqlite")
    with pytest.raises(JournalCorrupt, match="journal recover"):
        Journal(tmp_path, "st1")
    assert main(["journal", "check", "--dir", str(tmp_path)]) == 1
    assert '"ok": false' in capsys.readouterr().out
    assert main(["journal", "recover", "--dir", str(tmp_path), "--station", "st1"]) == 0
    assert '"rebuilt": true' in capsys.readouterr().out
    with Journal(tmp_path, "st1") as j:
        assert j.epoch != epoch  # rebuilt: followers must resync
        assert 0 < len(j.replay(1, limit=5000)[0]) <= 399
    assert main(["journal", "check", "--dir", str(tmp_path)]) in (0, 1)  # readable again
    assert list(tmp_path.glob("journal.sqlite.damaged-*"))


def test_journal_check_reports_missing_images_and_orphans_and_recover_mends_them(tmp_path):
    from adfm.appliance.journal.repair import check_journal, recover_journal

    with Journal(tmp_path, "st1") as j:
        a, b = _part(j, 1), _part(j, 2)
    (tmp_path / a.image_path).unlink()
    stray = tmp_path / Path(b.image_path).parent / "0000000099.png"
    stray.write_bytes(b"x")
    report = check_journal(tmp_path)
    assert not report.ok and report.missing_images == [1] and report.orphan_files == [str(stray.relative_to(tmp_path))]
    done = recover_journal(tmp_path)
    assert done.orphans_removed == 1 and done.missing_marked_pruned == 1 and not done.rebuilt
    assert check_journal(tmp_path).ok


# ---- 9. no crash loops -----------------------------------------------------------------------------


def test_run_exits_with_a_status_systemd_does_not_restart_for_a_damaged_journal(tmp_path, capsys):
    from adfm.appliance.cli import main

    cfg = station_dict(tmp_path)
    (tmp_path / "station.yaml").write_text(yaml.safe_dump(cfg))
    state = tmp_path / "state"
    with Journal(state, "st1") as j:
        for i in range(1, 300):
            _part(j, i, raw="model text " * 20)
    _corrupt(state / "journal.sqlite")
    assert main(["run", "--config", str(tmp_path / "station.yaml"), "--max-parts", "1"]) == 3


def test_run_reports_a_bus_that_cannot_bind_instead_of_a_traceback(tmp_path):
    from adfm.appliance.cli import main

    sock = zmq.Context.instance().socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        cfg = station_dict(tmp_path, bus={"publish": f"tcp://127.0.0.1:{port}"})
        (tmp_path / "station.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["run", "--config", str(tmp_path / "station.yaml"), "--max-parts", "1"]) == 1
    finally:
        sock.close(0)


def test_the_unit_stops_restarting_for_config_errors_and_after_a_burst():
    from adfm.appliance.system.install import render_unit

    lines = render_unit().splitlines()
    assert "RestartPreventExitStatus=2 3" in lines
    assert "StartLimitBurst=5" in lines and "StartLimitIntervalSec=600" in lines
    unit = lines.index("[Unit]"), lines.index("[Service]")
    assert unit[0] < lines.index("StartLimitBurst=5") < unit[1]  # a [Unit] setting


def test_model_files_are_hashed_once_and_again_only_when_changed(tmp_path):
    import os

    from adfm.appliance.inspection.model_check import verify_model_dir
    from adfm.manifest import ManifestError
    from tests.appliance_fakes import make_model_dir

    model = make_model_dir(tmp_path / "model")
    cache = tmp_path / "state" / "model-hashes.json"
    cache.parent.mkdir()
    assert verify_model_dir(model, cache)[1] == 2
    assert verify_model_dir(model, cache)[1] == 0  # a restart: nothing hashed
    assert verify_model_dir(model, cache, full=True)[1] == 2  # `adfm-appliance check`: everything
    gguf = model / "tiny-q4_k_m.gguf"
    data = bytearray(gguf.read_bytes())
    data[0] ^= 1  # same size, other content, new mtime
    gguf.write_bytes(bytes(data))
    os.utime(gguf, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(ManifestError, match="sha256"):
        verify_model_dir(model, cache)


# ---- 10. every source kind is bounded in time; folder pauses are not stalls ------------------------


def test_a_stuck_device_read_is_given_up_after_the_stall_timeout():
    from adfm.camera.capture import VideoCaptureSource
    from adfm.camera.config import CameraConfig
    from adfm.camera.errors import SourceError

    unblock = threading.Event()

    class StuckCapture:
        released = False

        def read(self):
            unblock.wait(30)
            return False, None

        def release(self):
            StuckCapture.released = True

    src = VideoCaptureSource(CameraConfig(id="cam0", url="usb:0", stall_timeout_s=0.5))
    src._cap = StuckCapture()
    outcome: dict = {}

    def read():
        try:
            src.read()
        except SourceError as exc:
            outcome["error"] = str(exc)

    t = threading.Thread(target=read, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(5)
    try:
        assert not t.is_alive() and time.monotonic() - t0 < 3
        assert "no frame within stall_timeout_s 0.5 s" in outcome["error"]
    finally:
        unblock.set()
    deadline = time.monotonic() + 5
    while not StuckCapture.released and time.monotonic() < deadline:
        time.sleep(0.01)
    assert StuckCapture.released  # released once the stuck read returned, never during it


def test_a_folder_camera_waiting_for_files_is_not_a_stalled_camera():
    cams = [CameraStatus(camera="drop", connected=True, streaming=False, last_frame_age_s=900.0),
            CameraStatus(camera="cam1", connected=True, last_frame_age_s=900.0)]
    h = Health("st1", camera_stall_s=60.0, cameras=lambda: cams)
    assert h.snapshot().problems == ["camera cam1: no frame for 900 s"]


# ---- 12. images over the control socket --------------------------------------------------------------


def test_a_remote_dashboard_gets_images_over_the_control_socket(tmp_path, monkeypatch):
    from adfm.appliance.bus import server as bus_mod
    from adfm.appliance.review.outbox import VerdictOutbox
    from adfm.appliance.review.sources import LiveSource

    station = BusStation(tmp_path / "j")
    try:
        result = _part(station.journal, 1)
        with station.client() as c:
            data, media = c.fetch_image(1)
            assert media == "image/png" and data == station.journal.image_file(result.image_path).read_bytes()
            with pytest.raises(StationError, match="epoch"):
                c.fetch_image(1, epoch="another-journal")
            monkeypatch.setattr(bus_mod, "MAX_IMAGE_BYTES", 10)
            with pytest.raises(StationError, match="over the 10-byte limit"):
                c.fetch_image(1)
            monkeypatch.undo()
        outbox = VerdictOutbox.in_dir(tmp_path / "dashboard")
        src = LiveSource(station.publish_ep, station.control_ep, outbox)  # no --images: no file access
        path = src.image_file(result)
        assert path is not None and path.read_bytes() == data and tmp_path / "j" not in path.parents
        outbox.close()
    finally:
        station.close()


def test_an_unreachable_station_gives_no_image_and_no_hang(tmp_path):
    from adfm.appliance.review.outbox import VerdictOutbox
    from adfm.appliance.review.sources import LiveOptions, LiveSource

    outbox = VerdictOutbox.in_dir(tmp_path / "dashboard")
    src = LiveSource(f"ipc://{tmp_path}/nobody-pub", f"ipc://{tmp_path}/nobody-ctl", outbox,
                     options=LiveOptions(timeout_s=0.3))
    r = InspectionResult(station="st1", seq=1, part_id="p1", camera="cam0", frame_number=1,
                         captured_at=time.time(), verdict="pass", image_path="images/x/0000000001.png")
    assert src.image_file(r) is None
    outbox.close()
    with pytest.raises(StationUnreachable):
        StationClient(f"ipc://{tmp_path}/p", f"ipc://{tmp_path}/c", station="st1", timeout_s=0.2,
                      retries=1).fetch_image(1)


# ---- 1 (the dashboard): a replaced journal clears what it showed; decisions carry the part --------


def test_the_dashboard_clears_on_a_new_epoch_and_its_verdicts_name_the_part():
    from datetime import UTC

    from adfm.appliance.review.app import ReviewApp
    from adfm.appliance.review.sources import Replaced, Results
    from tests.review_support import NOW, ScriptedSource, fixed_results, run_async, standard_events

    @run_async
    async def scenario():
        source = ScriptedSource(standard_events(None))
        app = ReviewApp(source, operator="anna", tz=UTC, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert len(app.store) == len(fixed_results())
            assert app.decide(3, "confirmed_defect")
            sent = source.sent[-1]
            assert (sent.seq, sent.part_id) == (3, "p0003")
            app.apply(Replaced("st1", "old", "new"))
            assert len(app.store) == 0
            fresh = fixed_results()[0].model_copy(update={"part_id": "other-part", "epoch": "new"})
            app.apply(Results([fresh]))
            assert app.decide(1, "false_alarm")
            assert (source.sent[-1].part_id, source.sent[-1].epoch) == ("other-part", "new")

    scenario()
