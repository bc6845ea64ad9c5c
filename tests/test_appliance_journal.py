"""The journal: seqs, durability across SIGKILL, replay, operator verdicts, retention, full disk."""

from __future__ import annotations

import errno
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adfm.appliance.journal import store as journal_mod
from adfm.appliance.journal.store import Journal, JournalError, JournalFullError, RetentionPolicy
from adfm.schema import InspectionResult, OperatorVerdict

DAY = 86400.0


def _image(i: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)


def _accept(j: Journal, i: int, wall: float | None = None, **kw):
    return j.accept(_image(i), part_id=f"p{i}", camera="cam0", frame_number=i,
                    captured_wall=time.time() if wall is None else wall, **kw)


def _complete(j: Journal, part, verdict="pass") -> InspectionResult:
    return j.complete(InspectionResult(
        station=j.station, seq=part.seq, part_id=part.part_id, camera=part.camera,
        frame_number=part.frame_number, captured_at=part.captured_at, verdict=verdict,
        image_path=part.image_path, image_width=part.image_width, image_height=part.image_height,
    ))


def test_seq_image_and_result_round_trip(tmp_path):
    with Journal(tmp_path, "st1") as j:
        parts = [_accept(j, i) for i in range(3)]
        assert [p.seq for p in parts] == [1, 2, 3]
        assert j.last_seq() == 0  # nothing done yet
        assert np.array_equal(j.load_image(parts[1]), _image(1))
        _complete(j, parts[0], "fail")
        assert j.last_seq() == 1
        results, last, more = j.replay(1)
        assert [r.seq for r in results] == [1] and last == 1 and not more
        assert [p.seq for p in j.pending()] == [2, 3]
        for p in parts[1:]:
            _complete(j, p)
        assert j.counts() == {"fail": 1, "pass": 2}
        again = _complete(j, parts[0], "pass")  # completing twice records nothing new
        assert again.verdict == "fail"


def test_replay_pages_and_bounds(tmp_path):
    with Journal(tmp_path, "st1") as j:
        for i in range(7):
            _complete(j, _accept(j, i))
        results, last, more = j.replay(2, limit=3)
        assert [r.seq for r in results] == [2, 3, 4] and more and last == 7
        results, _, more = j.replay(5, to_seq=6)
        assert [r.seq for r in results] == [5, 6] and not more
        assert j.replay(8)[0] == []


def test_other_station_journal_is_refused(tmp_path):
    Journal(tmp_path, "st1").close()
    with pytest.raises(JournalError, match="belongs to station 'st1'"):
        Journal(tmp_path, "st2")


def test_not_a_database_is_explained(tmp_path):
    (tmp_path / "journal.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match=r"journal\.sqlite"):
        Journal(tmp_path, "st1")


def test_dedupe_key_returns_the_existing_part(tmp_path):
    with Journal(tmp_path, "st1") as j:
        a = _accept(j, 1, dedupe_key="cam0/p1/abc")
        b = _accept(j, 1, dedupe_key="cam0/p1/abc")
        assert b.duplicate and b.seq == a.seq
        assert len(list((tmp_path / "images").rglob("*.png"))) == 1


def test_operator_verdicts_are_stored_once_with_who_and_when(tmp_path):
    with Journal(tmp_path, "st1") as j:
        part = _accept(j, 1)
        v = OperatorVerdict(station="st1", seq=1, decision="false_alarm", operator="anna", verdict_id="v1")
        with pytest.raises(JournalError, match="no inspected part with seq 1"):
            j.add_verdict(v)  # still pending
        _complete(j, part, "fail")
        first = j.add_verdict(v)
        second = j.add_verdict(v)
        assert first.stored and not second.stored
        assert first.result.operator.operator == "anna" and first.result.operator.at == v.at
        v2 = OperatorVerdict(station="st1", seq=1, decision="confirmed_defect", operator="ben", verdict_id="v2")
        j.add_verdict(v2)
        assert [x.verdict_id for x in j.verdicts(1)] == ["v1", "v2"]
        assert j.get(1).operator.decision == "confirmed_defect"
        with pytest.raises(JournalError, match="station 'other'"):
            j.add_verdict(v.model_copy(update={"station": "other", "verdict_id": "v3"}))


def test_retention_by_age_keeps_rows(tmp_path):
    with Journal(tmp_path, "st1", retention=RetentionPolicy(max_age_days=1.0, min_free_bytes=0)) as j:
        now = time.time()
        old = [_accept(j, i, wall=now - 3 * DAY) for i in range(2)]
        new = _accept(j, 9, wall=now)
        for p in [*old, new]:
            _complete(j, p)
        report = j.prune(now=now)
        assert report.images_removed == 2
        assert not j.image_file(old[0].image_path).exists()
        assert j.image_file(new.image_path).exists()
        kept = j.get(old[0].seq)
        assert kept is not None and kept.image_path == "" and "image pruned" in kept.problems[-1]
        assert [r.seq for r in j.replay(1)[0]] == [1, 2, 3]


def test_quota_prunes_oldest_images_and_never_pending_ones(tmp_path):
    one = len(journal_mod.encode_image(_image(0)))
    policy = RetentionPolicy(max_age_days=None, max_image_bytes=int(one * 4.5), min_free_bytes=0)
    with Journal(tmp_path, "st1", retention=policy) as j:
        pending = _accept(j, 0)  # stays pending: its image must survive
        done = []
        for i in range(1, 10):
            p = _accept(j, i)
            _complete(j, p)
            done.append(p)
        assert j.image_bytes <= policy.max_image_bytes
        assert j.image_file(pending.image_path).exists()
        assert j.image_file(done[-1].image_path).exists()
        assert not j.image_file(done[0].image_path).exists()  # oldest went first
        files = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "images").rglob("*.png")}
        for p in done:  # rows kept; a row says pruned exactly when its file is gone
            r = j.get(p.seq)
            assert r is not None and (r.image_path == "") == (p.image_path not in files)


def test_full_disk_is_a_clear_error_and_nothing_is_half_written(tmp_path, monkeypatch):
    with Journal(tmp_path, "st1", retention=RetentionPolicy(min_free_bytes=0)) as j:
        _complete(j, _accept(j, 0))

        def full(path, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(journal_mod, "write_durable", full)
        with pytest.raises(JournalFullError, match=r"disk full.*part 'p1'.*was not accepted"):
            _accept(j, 1)
        monkeypatch.undo()
        assert j.pending() == [] and j.last_seq() == 1
        nxt = _accept(j, 2)
        assert nxt.seq == 2  # the refused part used no seq


def _file(image: np.ndarray, ext: str) -> bytes:
    import cv2

    return cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_a_cameras_own_file_is_stored_as_it_is(tmp_path):
    import cv2

    image = _image(1)
    png, jpg = _file(image, ".png"), _file(image, ".jpg")
    jpg_pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with Journal(tmp_path / "png", "st1") as j:
        a = j.accept(image, part_id="a", camera="cam0", frame_number=0, captured_wall=time.time(), encoded=png)
        b = j.accept(jpg_pixels, part_id="b", camera="cam0", frame_number=1, captured_wall=time.time(),
                     encoded=jpg)
        assert a.image_path.endswith(".png") and j.image_file(a.image_path).read_bytes() == png
        assert b.image_path.endswith(".jpg") and j.image_file(b.image_path).read_bytes() == jpg
        assert np.array_equal(j.load_image(a), image) and np.array_equal(j.load_image(b), jpg_pixels)
        assert j.image_bytes == len(png) + len(jpg)
        # bytes not every reader decodes alike (16-bit) are not kept: the journal encodes the pixels
        wide = cv2.imencode(".png", image.astype(np.uint16) * 257)[1].tobytes()
        c = j.accept(image, part_id="c", camera="cam0", frame_number=2, captured_wall=time.time(), encoded=wide)
        assert j.image_file(c.image_path).read_bytes() != wide and np.array_equal(j.load_image(c), image)
    with Journal(tmp_path / "jpg", "st1", image_format="jpg") as j:
        # a JPEG journal asked for small files: a camera's PNG is encoded as JPEG, its JPEG kept
        d = j.accept(image, part_id="d", camera="cam0", frame_number=0, captured_wall=time.time(), encoded=png)
        assert d.image_path.endswith(".jpg") and j.image_file(d.image_path).read_bytes()[:3] == b"\xff\xd8\xff"
        row = j.open_part(part_id="e", camera="cam0", triggered_wall=time.time())
        e = j.attach_image(row, jpg_pixels, frame_number=1, captured_wall=time.time(), encoded=jpg)
        assert j.image_file(e.image_path).read_bytes() == jpg


def test_corrupt_image_is_named(tmp_path):
    with Journal(tmp_path, "st1") as j:
        part = _accept(j, 0)
        j.image_file(part.image_path).write_bytes(b"\x89PNG broken")
        with pytest.raises(JournalError, match=re.escape(part.image_path.split("/")[-1])):
            j.load_image(part)


def test_orphan_image_from_an_interrupted_accept_is_swept(tmp_path):
    with Journal(tmp_path, "st1") as j:
        part = _accept(j, 0)
    orphan = tmp_path / Path(part.image_path).parent / "0000000002.png"
    orphan.write_bytes(b"x")
    (orphan.parent / "0000000003.png.tmp").write_bytes(b"x")
    with Journal(tmp_path, "st1") as j:
        assert not orphan.exists() and not (orphan.parent / "0000000003.png.tmp").exists()
        assert j.image_file(part.image_path).exists()


_WRITER = r"""
import sys, time
from pathlib import Path
import cv2
import numpy as np
from adfm.appliance.journal.store import Journal
from adfm.schema import InspectionResult
# A camera that keeps its parts until acknowledged (a folder): part i is acknowledged by a line
# in acked.txt written after accept() returned; after a kill, the first part not acknowledged
# is delivered again, with the same dedupe key — it must not be journaled a second time.
j = Journal(sys.argv[1], "st1")
acked = Path(sys.argv[1]) / "acked.txt"
i = len(acked.read_text().split()) if acked.exists() else 0
while True:
    for p in j.pending():
        j.complete(InspectionResult(station="st1", seq=p.seq, part_id=p.part_id, camera=p.camera,
            frame_number=p.frame_number, captured_at=p.captured_at, verdict="pass", image_path=p.image_path))
    img = np.full((48, 64, 3), i % 250, np.uint8)
    # every other part arrives as a camera's JPEG file, which the journal keeps as it is
    encoded = cv2.imencode(".jpg", img)[1].tobytes() if i % 2 else None
    p = j.accept(img, part_id=f"p{i}", camera="cam0", frame_number=i, captured_wall=time.time(),
                 dedupe_key=f"cam0/p{i}", encoded=encoded)
    time.sleep(0.02)  # the station's work between journaling a part and the camera's acknowledgement
    with open(acked, "a") as f:
        f.write(f"{p.seq}\n")
    print(p.seq, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_and_duplicates_nothing(tmp_path):
    """A writer accepting and completing parts is SIGKILLed at varied moments, then restarted; the
    part it was handed when killed is delivered again, as a folder camera does."""
    acknowledged: list[int] = []
    for delay in (0.3, 0.45, 0.6, 0.75, 0.9):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                                text=True)
        time.sleep(delay + 0.8)  # interpreter start-up, then some parts
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged += [int(x) for x in out.split()]
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    rows = db.execute("SELECT seq, state, part_id, image_path FROM parts ORDER BY seq").fetchall()
    seqs = [r[0] for r in rows]
    assert seqs == list(range(1, len(seqs) + 1))  # contiguous: no seq lost or reused
    assert set(acknowledged) <= set(seqs)  # every accepted part is in the journal
    part_ids = [r[2] for r in rows]
    assert len(set(part_ids)) == len(part_ids), "a re-delivered part was journaled twice"
    assert part_ids == [f"p{i}" for i in range(len(rows))]  # and none was skipped
    pending = [r for r in rows if r[1] == "pending"]
    assert len(pending) <= 1  # only the part in hand at the last kill
    for _, _, part_id, image_path in rows:
        assert (tmp_path / image_path).is_file()  # every row's image is on disk
        assert image_path.endswith(".jpg" if int(part_id[1:]) % 2 else ".png")
    with Journal(tmp_path, "st1") as j:  # and the journal opens and continues
        assert j.accept(_image(0), part_id="after", camera="cam0", frame_number=0,
                        captured_wall=time.time()).seq == len(seqs) + 1
