"""Reading a station journal read-only: the reader never writes, and `--journal` browsing follows
new parts and verdicts but refuses decisions."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC

import numpy as np
import pytest

from adfm.appliance.journal.store import Journal
from adfm.appliance.review.app import ReviewApp
from adfm.appliance.review.journal_reader import JournalReader, JournalReadError
from adfm.appliance.review.sources import JournalSource
from adfm.appliance.review.widgets import PartImage, PartsTable
from adfm.schema import InspectionResult, OperatorVerdict
from tests.review_support import run_async, wait_for


def add_part(j: Journal, verdict: str = "fail", product: str = "washer") -> InspectionResult:
    i = j.last_seq() + 1
    p = j.accept(np.full((24, 32, 3), 90, np.uint8), part_id=f"p{i}", camera="cam0", frame_number=i,
                 captured_wall=time.time(), product=product)
    return j.complete(InspectionResult(station=j.station, seq=p.seq, part_id=p.part_id, camera="cam0", frame_number=i,
                                       captured_at=p.captured_at, verdict=verdict, image_path=p.image_path,  # type: ignore[arg-type]
                                       image_width=32, image_height=24))


def digest(folder) -> dict[str, str]:
    """Every file's hash but SQLite's WAL side files (any reader of a WAL database may create them)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal", "st1")
    yield j
    j.close()


def test_reader_reads_parts_products_and_verdicts_without_writing(journal, tmp_path):
    for verdict in ("pass", "fail", "review"):
        add_part(journal, verdict)
    journal.add_verdict(OperatorVerdict(station="st1", seq=2, decision="false_alarm", operator="anna", verdict_id="a"))
    journal.close()
    root = tmp_path / "journal"
    orphan = root / "images" / "2099-01-01" / "0000000099.png"  # a file the station's writer would sweep
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    before = digest(root)

    with JournalReader(root) as reader:
        assert reader.station == "st1" and reader.last_seq() == 3
        parts = reader.parts_after(0)
        assert [(p.result.seq, p.result.verdict, p.product) for p in parts] == [
            (1, "pass", "washer"), (2, "fail", "washer"), (3, "review", "washer")]
        assert parts[1].result.operator.verdict_id == "a"
        assert [p.result.seq for p in reader.decided_parts()] == [2]
        verdicts, rowid = reader.verdicts_after(0)
        assert [v.verdict_id for v in verdicts] == ["a"] and reader.verdicts_after(rowid) == ([], rowid)
        assert reader.image_file(parts[0].result.image_path).is_file()
    assert digest(root) == before  # nothing written, nothing swept


def test_reader_names_what_is_wrong(tmp_path):
    with pytest.raises(JournalReadError, match="no journal here"):
        JournalReader(tmp_path)
    bad = tmp_path / "journal.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    with pytest.raises(JournalReadError, match=r"journal\.sqlite"):
        JournalReader(tmp_path)


@run_async
async def test_browsing_a_journal_follows_new_parts_and_refuses_decisions(journal, tmp_path):
    add_part(journal, "pass")
    add_part(journal, "fail")
    app = ReviewApp(JournalSource(tmp_path / "journal", interval_s=0.1), operator="anna", tz=UTC)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(app.store) == 2, what="the journal's parts")
        assert app.store.get(1).product == "washer"
        await pilot.press("2")
        assert app.screen.query_one("#queue", PartsTable).seqs == [2]
        await pilot.press("d")
        assert "read-only" in app.message and journal.verdicts(2) == []
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.query_one(PartImage).picture is not None,
                       what="the image, read from the journal folder")
        await pilot.press("escape")

        add_part(journal, "review")  # the station goes on writing
        journal.add_verdict(OperatorVerdict(station="st1", seq=2, decision="skip", operator="bob", verdict_id="b"))
        await wait_for(pilot, lambda: len(app.store) == 3 and app.store.get(2).decision is not None, what="updates")
        await wait_for(pilot, lambda: app.screen.query_one("#queue", PartsTable).seqs == [3], what="the queue")
