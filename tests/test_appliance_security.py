"""Security and data safety, round 2 (issue 28): one test (or more) per item, each failing on the code
before the fixes. Real SQLite files, real sockets, real processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adfm.appliance.journal.store import Journal
from adfm.schema import InspectionResult, OperatorVerdict

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0


def _part(journal: Journal, i: int, wall: float) -> InspectionResult:
    p = journal.accept(np.full((24, 32, 3), i % 250, np.uint8), part_id=f"p{i}", camera="cam0", frame_number=i,
                       captured_wall=wall)
    return journal.complete(InspectionResult(
        station=journal.station, seq=p.seq, part_id=p.part_id, camera="cam0", frame_number=i,
        captured_at=p.captured_at, verdict="fail", image_path=p.image_path, raw_response="model text " * 20))


def _journal_with_history(root: Path, parts: int = 300) -> dict:
    """`parts` parts over three day folders, a verdict on every 7th, a revision on every 11th."""
    first_day = (time.time() // DAY - 2) * DAY + 3600.0
    with Journal(root, "st1") as j:
        for i in range(1, parts + 1):
            r = _part(j, i, first_day + ((i - 1) * 3 // parts) * DAY)
            if i % 7 == 0:
                j.add_verdict(OperatorVerdict(station="st1", seq=r.seq, decision="false_alarm", operator="anna",
                                              verdict_id=f"v{i}", part_id=r.part_id))
            if i % 11 == 0:
                j.revise(r.model_copy(update={"revision": 1, "verdict": "pass"}))
        db = sqlite3.connect(j.db_path)
        counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("parts", "operator_verdicts", "revisions")}
        db.close()
    return counts


def _damage_indexes(db: Path) -> None:
    """Overwrite the pages of the parts table's indexes: the integrity check fails, every row stays."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = [r[0] for r in conn.execute(
        "SELECT pageno FROM dbstat WHERE name IN ('parts_unpruned', 'sqlite_autoindex_parts_1') AND pageno > 1")]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    assert pages
    data = bytearray(db.read_bytes())
    for p in pages:
        data[(p - 1) * size + 8:p * size] = b"\xa5" * (size - 8)
    db.write_bytes(bytes(data))


def _images(root: Path) -> list[str]:
    return sorted(str(f.relative_to(root)) for f in (root / "images").rglob("*") if f.is_file())


# ---- 1. recover keeps the evidence ---------------------------------------------------------------


def test_recover_on_a_damaged_journal_keeps_every_image_revision_and_verdict(tmp_path):
    from adfm.appliance.journal.repair import check_journal, recover_journal

    root = tmp_path / "state"
    counts = _journal_with_history(root)
    images = _images(root)
    assert len(images) == 300 and len({Path(i).parent for i in images}) == 3
    _damage_indexes(root / "journal.sqlite")
    assert not check_journal(root).ok
    report = recover_journal(root)
    assert report.rebuilt
    assert _images(root) == images  # 100 % of the images
    assert report.images_before == report.images_after == 300 and report.images_without_rows == []
    assert (report.parts_salvaged, report.verdicts_salvaged, report.revisions_salvaged) == (
        counts["parts"], counts["operator_verdicts"], counts["revisions"])
    with Journal(root, "st1") as j:
        replayed = j.replay(1, limit=5000)[0]  # each part's decision, then its later revisions
        assert [r.seq for r in replayed if r.revision == 0] == list(range(1, 301))
        assert [r.revision for r in j.revisions(11)] == [0, 1]
        assert [v.verdict_id for v in j.verdicts(7)] == ["v7"]
    assert check_journal(root).ok


def test_recover_keeps_images_whose_rows_were_lost(tmp_path):
    """Heavier damage loses rows; their images are the only record left and stay on disk."""
    from adfm.appliance.journal.repair import recover_journal
    from tests.test_appliance_hardening import _corrupt

    root = tmp_path / "state"
    _journal_with_history(root)
    images = _images(root)
    _corrupt(root / "journal.sqlite")
    report = recover_journal(root, "st1")
    assert report.rebuilt and report.parts_salvaged < 300
    assert _images(root) == images
    assert len(report.images_without_rows) == 300 - report.parts_salvaged


def test_a_symlinked_day_folder_is_left_alone_by_open_check_and_recover(tmp_path):
    from adfm.appliance.journal.repair import check_journal, recover_journal

    root, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("0000009998.png", "0000009999.png"):
        (elsewhere / name).write_bytes(b"precious")
    with Journal(root, "st1") as j:
        _part(j, 1, time.time())
    (root / "images" / "2099-12-31").symlink_to(elsewhere, target_is_directory=True)
    (root / "images" / "2099-12-30").mkdir()
    (root / "images" / "2099-12-30" / "0000009997.png").symlink_to(elsewhere / "0000009998.png")
    Journal(root, "st1").close()  # the start-up sweep
    report = check_journal(root)
    assert sorted(report.symlinks) == ["images/2099-12-30/0000009997.png", "images/2099-12-31"]
    assert report.orphan_files == []
    done = recover_journal(root)
    _damage_indexes(root / "journal.sqlite")
    rebuilt = recover_journal(root)
    assert rebuilt.rebuilt and sorted(rebuilt.symlinks_left) == sorted(done.symlinks_left) == sorted(report.symlinks)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["0000009998.png", "0000009999.png"]
    assert (root / "images" / "2099-12-30" / "0000009997.png").is_symlink()


@pytest.fixture
def open_dir():
    """A folder other users can reach (pytest's tmp_path sits in a 0700 folder of root's)."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to hand files to another user")
    path = Path(tempfile.mkdtemp(prefix="adfm-sec-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_recover_as_root_keeps_the_service_users_owner_and_mode(open_dir):
    root = open_dir / "state"
    _journal_with_history(root, parts=30)
    _damage_indexes(root / "journal.sqlite")
    uid, gid = 4242, 4343
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid)
    os.chmod(root / "journal.sqlite", 0o640)
    out = subprocess.run([sys.executable, "-m", "adfm.appliance.cli", "journal", "recover", "--dir", str(root)],
                         capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["rebuilt"] and report["owner"] == f"{uid}:{gid}" and report["images_after"] == 30
    st = (root / "journal.sqlite").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o640)
    # the service user can write it: it is not root's any more
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", sys.executable, "-c",
                            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                            "c.execute(\"INSERT INTO meta VALUES ('probe', 'x')\"); c.commit()",
                            str(root / "journal.sqlite")], capture_output=True, text=True, check=False, timeout=60)
    assert probe.returncode == 0, probe.stderr


def test_recover_refuses_a_user_who_does_not_own_the_journal(open_dir):
    root = open_dir / "state"
    _journal_with_history(root, parts=3)
    os.chown(root, 4242, 4242)
    os.chown(root / "journal.sqlite", 4242, 4242)
    out = subprocess.run(["setpriv", "--reuid=4343", "--regid=4343", "--clear-groups", sys.executable, "-m",
                          "adfm.appliance.cli", "journal", "recover", "--dir", str(root)],
                         capture_output=True, text=True, cwd=REPO, check=False, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))})
    assert out.returncode == 1 and "owned by uid 4242" in out.stderr


# ---- 2. commands that change what the line does need authority ---------------------------------------


class _RecipeStation:
    """A bus with a recipe callback that records what it was told (the line's changeover)."""

    def __init__(self, root: Path, curve=None, plain_roles=("verdict",)):
        from adfm.appliance.bus.server import ResultBus
        from adfm.schema import StationStatus

        self.selected: list[str] = []
        self.journal = Journal(root, "st1")
        self.bus = ResultBus("st1", self.journal, lambda: StationStatus(station="st1", healthy=True),
                             publish=["tcp://127.0.0.1:*"], control=["tcp://127.0.0.1:*"], curve=curve,
                             on_recipe=self._select, plain_roles=plain_roles)
        self.bus.start()
        self.publish_ep, self.control_ep = self.bus.bound["publish"][0], self.bus.bound["control"][0]

    def _select(self, name: str) -> None:
        if name not in ("widget-a", "widget-b"):
            raise ValueError(f"unknown recipe {name!r}")
        self.selected.append(name)

    def client(self, **kw):
        from adfm.appliance.bus.client import StationClient

        return StationClient(self.publish_ep, self.control_ep, timeout_s=3.0, **kw)

    def close(self) -> None:
        self.bus.stop()
        self.journal.close()


def _commands_published(sub, n: int, timeout_s: float = 5.0) -> list[dict]:
    out: list[dict] = []
    end = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < end:
        if sub.poll(100):
            topic, _seq, body = sub.recv_multipart()
            assert topic == b"command.st1"
            out.append(json.loads(body))
    return out


def _subscribe(endpoint: str, curve=None):
    import zmq

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = (
            curve.server_public, curve.keys.public, curve.keys.secret)
    sub.setsockopt(zmq.SUBSCRIBE, b"command.st1")
    sub.connect(endpoint)
    time.sleep(0.3)  # the subscription reaches the PUB socket
    return sub


def test_a_recipe_from_a_review_key_is_refused_and_from_a_line_key_accepted_both_journaled(tmp_path):
    from adfm.appliance.bus.client import StationError
    from adfm.appliance.bus.keys import admit_client, load_client_curve, load_server_curve
    from adfm.schema import RecipeRequest
    from tests.appliance_fakes import make_keys

    keys = make_keys(tmp_path / "keys", ["review", "plc"], operators={"review": ["anna"], "plc": ["shift-lead"]})
    plc_public = keys.client_secrets["plc"].with_suffix(".key")
    admit_client(tmp_path / "keys", "plc", plc_public, ["shift-lead"], force=True, roles=["recipe"])
    station = _RecipeStation(tmp_path / "j", curve=load_server_curve(keys.server_secret, keys.authorized_clients))
    review = load_client_curve(keys.server_public, keys.client_secrets["review"])
    plc = load_client_curve(keys.server_public, keys.client_secrets["plc"])
    sub = _subscribe(station.publish_ep, review)
    try:
        with station.client(curve=review) as c, pytest.raises(
                StationError, match="client key 'review' has no role 'recipe'"):
            c.request(RecipeRequest(recipe="widget-b", operator="anna"))
        with station.client(curve=plc) as c:
            with pytest.raises(StationError, match="'anna' is not registered for client key 'plc'"):
                c.request(RecipeRequest(recipe="widget-b", operator="anna"))
            ack = c.request(RecipeRequest(recipe="widget-b", operator="shift-lead"))
            assert "key 'plc'" in ack.detail
        assert station.selected == ["widget-b"]
        rows = [(c["command"], c["argument"], c["client"], c["operator"], c["accepted"])
                for c in station.journal.commands()]
        assert rows == [("recipe", "widget-b", "review", "anna", False), ("recipe", "widget-b", "plc", "anna", False),
                        ("recipe", "widget-b", "plc", "shift-lead", True)]
        published = _commands_published(sub, 3)
        assert [(p["client"], p["accepted"]) for p in published] == [("review", False), ("plc", False), ("plc", True)]
    finally:
        sub.close()
        station.close()


def test_a_recipe_from_a_plain_loopback_client_is_refused_unless_the_config_allows_it(tmp_path):
    from adfm.appliance.bus.client import StationError
    from adfm.schema import RecipeRequest
    from tests.test_appliance_hardening import _raw_request

    station = _RecipeStation(tmp_path / "j")
    sub = _subscribe(station.publish_ep)
    try:
        reply = _raw_request(station.control_ep, {"type": "recipe", "recipe": "widget-b"})
        assert reply["type"] == "error" and "without a CURVE key may not send recipe" in reply["error"]
        assert station.selected == []
        [row] = station.journal.commands()
        assert (row["client"], row["accepted"]) == ("local", False) and "refused" in row["detail"]
        assert _commands_published(sub, 1)[0]["accepted"] is False
    finally:
        sub.close()
        station.close()
    allowed = _RecipeStation(tmp_path / "j2", plain_roles=("verdict", "recipe"))
    try:
        with allowed.client() as c:
            c.request(RecipeRequest(recipe="widget-a", operator="ben"))
            with pytest.raises(StationError, match="unknown recipe 'nope'"):
                c.request(RecipeRequest(recipe="nope"))
        assert allowed.selected == ["widget-a"]
        assert [(r["operator"], r["accepted"]) for r in allowed.journal.commands()] == [("ben", True), ("", False)]
    finally:
        allowed.close()


def test_the_config_documents_and_checks_plain_roles(tmp_path):
    from adfm.appliance.config.station import ConfigError, parse_config
    from tests.appliance_fakes import station_dict

    cfg = station_dict(tmp_path)
    assert parse_config(cfg).bus.plain_roles == ["verdict"]
    cfg.setdefault("bus", {})["plain_roles"] = ["verdict", "shutdown"]
    with pytest.raises(ConfigError, match=r"bus\.plain_roles\.1"):
        parse_config(cfg)
    for example in (REPO / "appliance" / "station.example.yaml", REPO / "systemd" / "station.example.yaml"):
        assert "plain_roles" in example.read_text()


# ---- 4. no path from a station is trusted; the station serves only its own files --------------------


@pytest.mark.parametrize("field,value", [("station", "../../../.config/autostart"), ("station", "a/b"),
                                         ("epoch", "../x"), ("epoch", ".."),
                                         ("image_path", "images/../../evil.desktop"),
                                         ("image_path", "images/x/a.desktop")])
def test_the_dashboard_refuses_traversal_ids_before_building_a_path(tmp_path, field, value):
    from adfm.appliance.review.outbox import VerdictOutbox
    from adfm.appliance.review.sources import LiveOptions, LiveSource

    station = _RecipeStation(tmp_path / "j")
    try:
        p = station.journal.accept(np.zeros((8, 8, 3), np.uint8), part_id="p1", camera="cam0", frame_number=1,
                                   captured_wall=time.time())
        good = station.journal.complete(InspectionResult(
            station="st1", seq=1, part_id="p1", camera="cam0", frame_number=1, captured_at=p.captured_at,
            verdict="fail", image_path=p.image_path))
        outbox = VerdictOutbox.in_dir(tmp_path / "dash")
        src = LiveSource(station.publish_ep, station.control_ep, outbox, options=LiveOptions(timeout_s=1.0))
        bad = good.model_copy(update={field: value, "epoch": good.epoch or "e1"} if field != "epoch"
                              else {field: value})
        assert src.image_file(bad) is None
        written = [f for f in tmp_path.rglob("*") if f.is_file() and "desktop" in f.name]
        assert written == [] and not (tmp_path / ".config").exists()
        assert src.image_file(good.model_copy(update={"epoch": station.journal.epoch})) is not None
        outbox.close()
    finally:
        station.close()


def test_the_station_does_not_serve_a_symlinked_image(tmp_path):
    from adfm.appliance.bus.client import StationError

    station = _RecipeStation(tmp_path / "j")
    try:
        results = []
        for i in (1, 2):
            p = station.journal.accept(np.full((8, 8, 3), i, np.uint8), part_id=f"p{i}", camera="cam0",
                                       frame_number=i, captured_wall=time.time())
            results.append(station.journal.complete(InspectionResult(
                station="st1", seq=i, part_id=f"p{i}", camera="cam0", frame_number=i, captured_at=p.captured_at,
                verdict="fail", image_path=p.image_path)))
        secret = tmp_path / "passwd"
        secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
        img = station.journal.root / results[0].image_path
        img.unlink()
        img.symlink_to(secret)
        day = img.parent
        other = tmp_path / "elsewhere"
        other.mkdir()
        (other / Path(results[1].image_path).name).write_text("not the journal's")
        with station.client() as c:
            with pytest.raises(StationError, match="symlink"):
                c.fetch_image(1)
            data, _ = c.fetch_image(2)  # a real file: served
            assert data.startswith(b"\x89PNG")
            day.rename(day.with_name("moved"))
            day.symlink_to(other, target_is_directory=True)  # a symlinked day folder
            with pytest.raises(StationError, match="symlink"):
                c.fetch_image(2)
    finally:
        station.close()


def test_images_come_in_pages_and_arrive_whole(tmp_path, monkeypatch):
    from adfm.appliance.bus import server as bus_server

    monkeypatch.setattr(bus_server, "IMAGE_PAGE_BYTES", 1000)
    station = _RecipeStation(tmp_path / "j")
    try:
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        p = station.journal.accept(noise, part_id="p1", camera="cam0", frame_number=1, captured_wall=time.time())
        station.journal.complete(InspectionResult(station="st1", seq=1, part_id="p1", camera="cam0", frame_number=1,
                                                  captured_at=p.captured_at, verdict="fail", image_path=p.image_path))
        whole = (station.journal.root / p.image_path).read_bytes()
        assert len(whole) > 5000
        before = station.bus.stats.requests
        with station.client() as c:
            data, media = c.fetch_image(1)
        assert data == whole and media == "image/png"
        assert station.bus.stats.requests - before >= -(-len(whole) // 1000)
    finally:
        station.close()


# ---- 5. verdicts: the station's clock, checked operator names ----------------------------------------


def test_verdicts_get_the_stations_time_and_operator_names_are_checked(tmp_path):
    from datetime import UTC, datetime

    from adfm.appliance.bus.client import StationError
    from adfm.schema import VerdictRequest

    station = _RecipeStation(tmp_path / "j")
    try:
        p = station.journal.accept(np.zeros((8, 8, 3), np.uint8), part_id="p1", camera="cam0", frame_number=1,
                                   captured_wall=time.time())
        station.journal.complete(InspectionResult(station="st1", seq=1, part_id="p1", camera="cam0", frame_number=1,
                                                  captured_at=p.captured_at, verdict="fail"))
        old = datetime(1970, 1, 1, tzinfo=UTC)
        with station.client() as c:
            for bad, why in (("anna\x1b[2J", "control characters"), ("anna\nroot", "control characters"),
                             (" anna", "spaces at either end"), ("an\u200bna", "control characters")):
                verdict = OperatorVerdict(station="st1", seq=1, decision="skip", operator=bad, verdict_id="x",
                                          part_id="p1", at=old)
                with pytest.raises(StationError, match=why):
                    c.request(VerdictRequest(verdict=verdict))
            c.request(VerdictRequest(verdict=OperatorVerdict(station="st1", seq=1, decision="skip", operator="anna",
                                                             verdict_id="ok", part_id="p1", at=old)))
        [v] = station.journal.verdicts(1)
        assert abs(v.at.timestamp() - time.time()) < 60
    finally:
        station.close()


# ---- 6. one redaction, everywhere ------------------------------------------------------------------


@pytest.mark.parametrize("text,secret", [
    ("rtsp://admin:p@ss@S3cretPW@10.0.0.5:554/stream", "S3cretPW"),
    ("rtsp://admin:pa/ss@10.0.0.5/stream", "pa/ss"),
    ("url 'rtsp://admin:pa\"ss@cam/x' refused", 'pa"ss'),
    ("url \"rtsp://admin:pa'ss@cam/x\" refused", "pa'ss"),
    ("http://cam.local/snap.jpg?user=admin&pwd=Hunter2&x=1", "Hunter2"),
    ("http://cam/snap?password=Hunter2", "Hunter2"),
    ("http://cam/snap?api_key=Hunter2#frag", "Hunter2"),
    ("http://cam/snap?token=Hunter2 and more", "Hunter2"),
    ("rtsp://:onlypass@cam/x", "onlypass"),
])
def test_redaction_handles_any_userinfo_and_credential_parameters(text, secret):
    from adfm.camera.config import redact_url
    from adfm.config import redact_secrets

    for out in (redact_secrets(text), redact_url(text)):
        assert secret not in out and "***" in out


def test_redaction_keeps_what_is_not_a_secret():
    from adfm.config import redact_secrets

    for text in ("rtsp://cam.local:554/stream?channel=1", "user@example.com wrote", "tcp://127.0.0.1:5561",
                 "http://admin@cam/snap.jpg"):
        assert redact_secrets(text) == text


def test_check_json_prints_no_password(tmp_path, capsys):
    from adfm.appliance.cli import main
    from tests.appliance_fakes import station_dict

    cfg = station_dict(tmp_path)
    cfg["cameras"][0]["url"] = "http://admin:p@ss@S3cretPW@127.0.0.1:8554/snap.jpg?pwd=Hunter2"
    path = tmp_path / "station.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    code = main(["check", "--config", str(path), "--json"])
    out, err = capsys.readouterr()
    assert "S3cretPW" not in out + err and "Hunter2" not in out + err
    if code == 0:
        assert "***" in out


# ---- 7. the systemd unit: its exposure score, and the station running under its sandbox -------------


def test_the_unit_scores_at_most_2_in_systemd_analyze_security():
    import re
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = REPO / "systemd" / "adfm-appliance.service"
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, check=False)
    score = re.search(r"Overall exposure level for adfm-appliance\.service: ([0-9.]+)", out.stdout)
    assert score, out.stdout + out.stderr
    assert float(score.group(1)) <= 2.0
    assert "SystemCallFilter=@system-service" in (REPO / "systemd" / "adfm-appliance.service").read_text()


#: the unit's sandbox as far as bubblewrap and setpriv apply it outside systemd (README "Hardening")
def sandboxed(command: list[str], *, state: Path, readable: list[Path], uid: int = 4242) -> list[str]:
    """`command` the way the unit runs it: a read-only root (ProtectSystem=strict), only the state
    folder writable, private /tmp (PrivateTmp), empty /home and /root (ProtectHome), private IPC and
    PID namespaces, a minimal /dev, a fresh /proc, a new session, an unprivileged user with no
    capabilities and no_new_privs (User=, CapabilityBoundingSet=, NoNewPrivileges=), umask 0027."""
    hidden = (Path("/tmp"), Path("/home"), Path("/root"))
    folders: list[Path] = []  # below a hidden folder: made traversable (bwrap makes them 0700)
    for p in [*readable, state]:
        for a in reversed(p.parents):
            if any(a.is_relative_to(h) and a != h for h in hidden) and a not in folders:
                folders.append(a)
    binds = [x for f in folders for x in ("--perms", "0755", "--dir", str(f))]
    binds += [a for p in readable for a in ("--ro-bind", str(p), str(p))]
    return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--tmpfs", "/home", "--tmpfs", "/root", *binds, "--bind", str(state), str(state),
            "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--new-session", "--die-with-parent", "--",
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            "--bounding-set=-all", "--inh-caps=-all", "--", "sh", "-c", 'umask 0027 && exec "$@"', "sh", *command]


@pytest.mark.slow
def test_the_station_runs_the_tiny_model_under_the_units_sandbox(open_dir, tiny_gguf_dir):
    import shutil

    import yaml

    from adfm.synthetic import make_synthetic_dataset

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap not installed")
    data = make_synthetic_dataset(open_dir / "parts", layout="folder", categories=("washer",), n_train=2,
                                  n_test_good=0, n_test_defect=1, defects=("scratch",), size=(128, 96), seed=3)
    model = open_dir / "model"
    shutil.copytree(tiny_gguf_dir, model)
    state = open_dir / "state"
    state.mkdir(mode=0o750)
    os.chown(state, 4242, 4242)
    for p in [open_dir, *open_dir.rglob("*")]:
        if not p.is_relative_to(state):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    config = open_dir / "station.yaml"
    config.write_text(yaml.safe_dump({
        "station": "sandboxed", "state_dir": str(state),
        "model": {"dir": str(model), "max_tokens": 16, "n_ctx": 2048, "deadline_s": 300},
        "cameras": [{"id": "cam0", "url": f"replay:{data / 'anomalous'}", "fps": 20, "loop": False}],
        "bus": {"publish": f"ipc://{state}/pub", "control": f"ipc://{state}/ctl"},
    }))
    venv = Path(sys.executable).parent.parent
    command = [sys.executable, "-m", "adfm.appliance.cli", "run", "--config", str(config), "--until-sources-end"]
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "HOME": str(state)}
    python_home = Path(os.path.realpath(sys.executable)).parents[1]  # the interpreter behind the venv
    readable = [open_dir / "parts", model, config, REPO, python_home]
    out = subprocess.run(sandboxed(command, state=state, readable=readable),
                         capture_output=True, text=True, check=False, timeout=900, env=env, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    db = sqlite3.connect(state / "journal.sqlite")
    rows = db.execute("SELECT state, verdict FROM parts").fetchall()
    db.close()
    n = len(list((data / "anomalous").glob("*.png")))
    assert len(rows) == n and all(s == "done" and v in ("pass", "fail", "review") for s, v in rows)
    st = (state / "journal.sqlite").stat()
    assert st.st_uid == 4242 and st.st_mode & 0o007 == 0  # written by the service user, umask 0027
