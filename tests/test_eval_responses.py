"""The resumable responses file: appends, interrupted writes, damaged lines, answers of another run."""

from __future__ import annotations

import json

import pytest

from adfm.trainer.evaluation.responses import (
    ResponseRecord,
    ResponsesError,
    ResponseWriter,
    check_run,
    latest_by_key,
    read_responses,
    run_fingerprint,
    set_aside,
)


def _rec(sid: str, question: str = "inspect", run: str = "r1", text: str = "<answer>no</answer>") -> ResponseRecord:
    return ResponseRecord(sample_id=sid, question=question, task=question, response=text, grid=(10, 10, 28, 28),
                          run=run)


def test_written_records_read_back_and_last_answer_wins(tmp_path):
    path = tmp_path / "responses.jsonl"
    with ResponseWriter(path) as w:
        w.write([_rec("a"), _rec("a", "mmad/0")])
    with ResponseWriter(path) as w:
        w.write([_rec("a", text="<answer>yes</answer>")])
    records, notes = read_responses(path)
    assert len(records) == 3 and notes == []
    latest = latest_by_key(records)
    assert set(latest) == {("a", "inspect"), ("a", "mmad/0")}
    assert latest[("a", "inspect")].response == "<answer>yes</answer>"


def test_partial_last_line_is_set_aside_and_appending_continues(tmp_path):
    path = tmp_path / "responses.jsonl"
    with ResponseWriter(path) as w:
        w.write([_rec("a")])
    whole = _rec("b").model_dump_json()
    with path.open("a") as f:
        f.write(whole[: len(whole) // 2])  # the process died mid-line
    records, notes = read_responses(path)
    assert [r.sample_id for r in records] == ["a"] and "partial last line" in notes[0]
    records, notes = read_responses(path, repair=True)
    assert [r.sample_id for r in records] == ["a"]
    kept = list(tmp_path.glob("responses.jsonl.partial-*"))
    assert len(kept) == 1 and kept[0].read_text() == whole[: len(whole) // 2]
    with ResponseWriter(path) as w:
        w.write([_rec("b")])
    assert [r.sample_id for r in read_responses(path)[0]] == ["a", "b"]


def test_complete_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "responses.jsonl"
    path.write_text(_rec("a").model_dump_json())
    records, _ = read_responses(path, repair=True)
    assert [r.sample_id for r in records] == ["a"]
    with ResponseWriter(path) as w:
        w.write([_rec("b")])
    assert [r.sample_id for r in read_responses(path)[0]] == ["a", "b"]


def test_a_damaged_line_in_the_middle_stops_with_file_and_line(tmp_path):
    path = tmp_path / "responses.jsonl"
    path.write_text("\n".join([_rec("a").model_dump_json(), '{"sample_id": 3}', _rec("b").model_dump_json()]) + "\n")
    with pytest.raises(ResponsesError, match=r"responses\.jsonl:2: not a valid response record"):
        read_responses(path, repair=True)


def test_answers_of_another_run_are_refused_naming_what_changed(tmp_path):
    path = tmp_path / "responses.jsonl"
    before = {"model_id": "m@1", "max_new_tokens": 64, "temperature": 0.0}
    after = {**before, "max_new_tokens": 128}
    records = [_rec("a", run=run_fingerprint(before))]
    check_run(records, run_fingerprint(before), path, before, before)  # same run: fine
    with pytest.raises(ResponsesError, match=r"max_new_tokens: 64 → 128.*--fresh"):
        check_run(records, run_fingerprint(after), path, after, before)
    with pytest.raises(ResponsesError, match="fingerprint"):
        check_run(records, run_fingerprint(after), path, after, None)


def test_fingerprint_is_order_independent_and_setting_sensitive():
    assert run_fingerprint({"a": 1, "b": 2}) == run_fingerprint({"b": 2, "a": 1})
    assert run_fingerprint({"a": 1}) != run_fingerprint({"a": 2})


def test_set_aside_renames_and_never_deletes(tmp_path):
    path = tmp_path / "responses.jsonl"
    assert set_aside(path) is None
    path.write_text(json.dumps({"x": 1}) + "\n")
    moved = set_aside(path)
    assert moved is not None and moved.read_text() == json.dumps({"x": 1}) + "\n" and not path.exists()
