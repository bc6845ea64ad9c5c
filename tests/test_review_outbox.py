"""The verdict outbox: durable, ordered, idempotent per verdict id, clear about a bad file."""

from __future__ import annotations

import pytest

from adfm.appliance.review.outbox import OutboxError, VerdictOutbox, default_state_dir
from adfm.schema import OperatorVerdict


def v(seq: int, vid: str, station: str = "st1") -> OperatorVerdict:
    return OperatorVerdict(station=station, seq=seq, decision="confirmed_defect", operator="anna", verdict_id=vid)


def test_queued_verdicts_survive_a_restart_in_order(tmp_path):
    box = VerdictOutbox.in_dir(tmp_path)
    for i, vid in enumerate(["a", "b", "c"], start=1):
        box.add(v(i, vid))
    box.add(v(9, "other", station="st2"))
    box.close()
    box = VerdictOutbox.in_dir(tmp_path)
    assert [x.verdict_id for x in box.queued("st1")] == ["a", "b", "c"]
    assert len(box.queued()) == 4
    box.close()


def test_sent_and_rejected_leave_the_queue_and_keep_the_reason(tmp_path):
    box = VerdictOutbox(tmp_path / "o.sqlite")
    box.add(v(1, "a"))
    box.add(v(2, "b"))
    box.mark_sent("a", "journaled")
    box.mark_rejected("b", "no inspected part with seq 2")
    assert box.queued() == []
    assert box.state("a") == ("sent", "journaled")
    assert box.state("b") == ("rejected", "no inspected part with seq 2")
    assert box.state("zzz") is None
    box.mark_rejected("a", "late")  # an acknowledged verdict stays acknowledged
    assert box.state("a")[0] == "sent"
    assert box.counts() == {"sent": 1, "rejected": 1}


def test_adding_the_same_verdict_twice_keeps_one(tmp_path):
    box = VerdictOutbox(tmp_path / "o.sqlite")
    box.add(v(1, "a"))
    box.mark_sent("a")
    box.add(v(1, "a"))
    assert box.queued() == [] and box.counts() == {"sent": 1}


def test_an_unusable_file_is_named(tmp_path):
    bad = tmp_path / "verdicts.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=str(bad)):
        VerdictOutbox(bad)


def test_default_state_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "adfm-review"
