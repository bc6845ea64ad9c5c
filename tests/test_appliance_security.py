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

from adfm.appliance.journal import Journal
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
    from adfm.appliance.journal_repair import check_journal, recover_journal

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
        assert len(j.replay(1, limit=5000)[0]) == 300
        assert [r.revision for r in j.revisions(11)] == [0, 1]
        assert [v.verdict_id for v in j.verdicts(7)] == ["v7"]
    assert check_journal(root).ok


def test_recover_keeps_images_whose_rows_were_lost(tmp_path):
    """Heavier damage loses rows; their images are the only record left and stay on disk."""
    from adfm.appliance.journal_repair import recover_journal
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
    from adfm.appliance.journal_repair import check_journal, recover_journal

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
