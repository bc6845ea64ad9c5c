"""The shop-floor features of adfm-review: run view, shift counts, filmstrip, heat map, the
defect-with-a-wrong-box verdict drawn with keys or mouse, unsure, refusals shown in full, and the
model's reasoning in image pixels (scripted source, Pilot, real image files)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import get_args

import numpy as np
import pytest
from pydantic import ValidationError

from adfm.appliance.journal.store import Journal, JournalError
from adfm.appliance.review.app import ReviewApp
from adfm.appliance.review.export_labels import ExportOptions, export_labels
from adfm.appliance.review.format import decision_text, gate_text, latency_words, readable_reasoning
from adfm.appliance.review.render import OPERATOR_COLOR
from adfm.appliance.review.screens import BoxEditor, DetailScreen, MainScreen
from adfm.appliance.review.store import DECISION_LABELS, Part, PartStore, shift_start, summarize_shift
from adfm.appliance.review.widgets import PartImage
from adfm.appliance.review.widgets.parts_table import columns_for
from adfm.appliance.review.widgets.run_view import Filmstrip, RunView, gate_line
from adfm.schema import Box, OperatorDecision, OperatorVerdict
from tests.review_support import (
    NOW,
    T0,
    ScriptedSource,
    fixed_results,
    make_result,
    run_async,
    settle,
    standard_events,
    write_gate_map,
    write_part_image,
)

REFUSAL = ("verdict refused: operator 'anna' is not listed for key 'review' on station st1 — the station's "
           "administrator admits her with adfm-appliance keys --dir /etc/adfm/keys --admit review=review.key "
           "--operators anna,ben; until then this verdict is kept here as refused and the part stays undecided")


@pytest.fixture
def images(tmp_path):
    for r in fixed_results():
        write_part_image(tmp_path / f"p{r.seq}.png", seed=r.seq)
    write_gate_map(tmp_path / "p9.gate.png")
    return tmp_path


def make(images, **kw) -> tuple[ReviewApp, ScriptedSource]:
    source = ScriptedSource(standard_events(images), images=images, **kw)
    return ReviewApp(source, operator="anna", tz=UTC, clock=lambda: NOW, shifts=[dt_time(6), dt_time(14)]), source


# ---- pure parts ----------------------------------------------------------------------------------


def test_every_decision_has_a_label_and_the_column_names_who_decided():
    assert set(DECISION_LABELS) == set(get_args(OperatorDecision))
    r = make_result(3, "fail")
    v = OperatorVerdict(station="st1", seq=3, decision="false_alarm", operator="anna", verdict_id="v1")
    assert str(decision_text(Part(r.model_copy(update={"operator": v})))) == "✓ false alarm · anna"


def test_shift_start_is_the_latest_change_at_or_before_now():
    starts = [dt_time(6), dt_time(14), dt_time(22)]
    at = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
    assert shift_start(at.timestamp(), UTC, starts) == datetime(2026, 3, 2, 6, tzinfo=UTC)
    early = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)
    assert shift_start(early.timestamp(), UTC, starts) == datetime(2026, 3, 1, 22, tzinfo=UTC)
    with pytest.raises(ValueError):
        shift_start(early.timestamp(), UTC, [])


def test_shift_counts_and_yield():
    store = PartStore()
    store.add_results(fixed_results())  # 6 pass, 3 fail (seq 2 a false alarm), 1 review, 08:01–08:10
    s = summarize_shift(store, T0)
    assert (s.parts, s.ok, s.ng, s.review, s.false_alarms, s.awaiting, s.partial) == (10, 6, 3, 1, 1, 3, False)
    assert s.first_pass_yield == pytest.approx(0.6) and s.reviewed_yield == pytest.approx(0.7)
    later = summarize_shift(store, T0 + timedelta(minutes=5, seconds=30))
    assert later.parts == 5  # seqs 6–10
    newer = PartStore()
    newer.add_results(fixed_results()[4:])  # the first loaded part (seq 5) is inside the shift
    assert summarize_shift(newer, T0).partial


def test_gate_score_reads_against_its_threshold():
    r = make_result(4, "fail")  # 0.83 against 0.50
    assert str(gate_text(r)) == "0.83 / 0.50" and gate_line(r) == "gate 0.83 ≥ 0.50 suspicious"
    big = r.model_copy(update={"gate_score": 53.04, "gate_threshold": 40.0})
    assert str(gate_text(big)) == "53.0 / 40.0"
    assert str(gate_text(r.model_copy(update={"gate_threshold": None}))) == "0.83"


def test_latency_says_what_the_decision_waited_for():
    r = make_result(1, "fail").model_copy(update={"latency_ms": {"capture": 797.0, "total": 212.0, "gate": 5.0}})
    assert latency_words(r).startswith("frame → decision 1009 ms = frame wait 797 + inspection 212 (gate 5)")
    line = r.model_copy(update={"latency_ms": {"trigger_to_decision": 180.0, "trigger_to_frame": 12.0},
                                "deadline_ms": 300.0})
    assert latency_words(line) == "trigger → decision 180 ms of 300 ms allowed · trigger → frame 12"


def test_reasoning_boxes_are_rewritten_in_image_pixels():
    r = make_result(1, "fail")  # 96×96 image, 112×112 model grid
    text = 'A streak. [{"bbox_2d": [10, 20, 60, 80], "label": "scratch"}] and [{"bbox_2d": [67, 75, 96, 52]}]'
    out = str(readable_reasoning(text, r))
    assert "bbox_2d" not in out and "[10, 20, 60, 80]" not in out
    assert "‹scratch [9, 17, 51, 69] px›" in out  # ×96/112
    assert "‹region [57, 45, 82, 64] px› (written with its corners swapped)" in out
    unknown = str(readable_reasoning(text, r.model_copy(update={"grid_width": 0})))
    assert "bbox_2d" not in unknown and "size not recorded" in unknown


def test_table_columns_fit_the_terminal():
    narrow, wide = columns_for(80), columns_for(120)
    assert [k for k, _, _ in narrow] == ["seq", "part", "time", "verdict", "gate", "operator"]
    assert {"camera", "ms"} <= {k for k, _, _ in wide}
    for width, cols in ((80, narrow), (120, wide)):
        assert sum(w + 2 for _, _, w in cols) + 2 == width  # cell padding, the scrollbar
    assert dict((k, w) for k, _, w in narrow)["operator"] >= len("✓ false alarm · anna")


def test_verdict_boxes_fit_the_decision():
    base = {"station": "st1", "seq": 1, "operator": "anna", "verdict_id": "v"}
    box = Box.from_xyxy([1, 2, 30, 40])
    assert OperatorVerdict(**base, decision="defect_wrong_box", boxes=[box]).boxes == [box]
    with pytest.raises(ValidationError, match="needs the corrected box"):
        OperatorVerdict(**base, decision="defect_wrong_box")
    with pytest.raises(ValidationError, match="only defect_wrong_box carries boxes"):
        OperatorVerdict(**base, decision="false_alarm", boxes=[box])
    with pytest.raises(ValidationError, match="not a box in image pixels"):
        OperatorVerdict(**base, decision="defect_wrong_box", boxes=[Box(x1=5, y1=5, x2=5, y2=9)])
    assert OperatorVerdict(**base, decision="unsure").decision == "unsure"


def test_the_journal_refuses_a_box_outside_the_image_and_the_export_masks_the_operators_box(tmp_path):
    with Journal(tmp_path / "journal", "st1") as j:
        p = j.accept(np.full((40, 60, 3), 90, np.uint8), part_id="p1", camera="cam0", frame_number=1,
                     captured_wall=time.time(), product="washer")
        j.complete(make_result(p.seq, "fail").model_copy(update={
            "part_id": "p1", "captured_at": p.captured_at, "image_path": p.image_path, "image_width": 60,
            "image_height": 40}))
        wrong = OperatorVerdict(station="st1", seq=p.seq, decision="defect_wrong_box", operator="anna",
                                verdict_id="v-out", part_id="p1", boxes=[Box.from_xyxy([50, 10, 70, 20])])
        with pytest.raises(JournalError, match=r"leaves part 'p1'.s image \(60×40 px\)"):
            j.add_verdict(wrong)
        j.add_verdict(wrong.model_copy(update={"verdict_id": "v-in", "boxes": [Box.from_xyxy([40, 10, 60, 20])]}))
        unsure = j.accept(np.zeros((40, 60, 3), np.uint8), part_id="p2", camera="cam0", frame_number=2,
                          captured_wall=time.time(), product="washer")
        j.complete(make_result(unsure.seq, "review").model_copy(update={
            "part_id": "p2", "captured_at": unsure.captured_at, "image_path": unsure.image_path}))
        j.add_verdict(OperatorVerdict(station="st1", seq=unsure.seq, decision="unsure", operator="ben",
                                      verdict_id="v-unsure", part_id="p2"))
    out = tmp_path / "labels"
    report = export_labels(ExportOptions(journal=tmp_path / "journal", out=out, masks_from_boxes=True))
    assert (report.anomalous, report.normal, report.masks) == (1, 0, 1)
    assert report.left_out == {"operator unsure": 1}
    from PIL import Image

    mask = np.asarray(Image.open(out / "masks" / "st1-0000000001.png"))
    # the operator's box [40, 10, 60, 20], not the model's [10, 20, 60, 80]
    assert mask[15, 45] == 255 and mask[30, 20] == 0 and mask[:, :40].max() == 0


# ---- the app -------------------------------------------------------------------------------------


@run_async
async def test_run_view_tile_shift_and_filmstrip(images):
    app, source = make(images)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, MainScreen) and screen.view == "run"
        tile = str(screen.query_one("#run-tile").render())
        assert "OK: passed" in tile and "p0010 · seq 10" in tile and "gate 0.12 < 0.50 ok" in tile
        shift = str(screen.query_one("#run-shift").render())
        assert "Shift 06:00–" in shift and "10 parts" in shift and "yield 60.0 %" in shift
        assert "● 3 awaiting" in shift
        strip = screen.query_one(Filmstrip)
        assert [p.seq for p in strip.parts] == [9, 6, 4, 2] and strip.current_seq == 9
        assert screen.query_one(RunView).query_one(PartImage).picture is not None
        await pilot.press("right", "f")  # the filmstrip's second part: seq 6
        await pilot.pause()
        assert [(v.seq, v.decision, v.operator) for v in source.sent] == [(6, "false_alarm", "anna")]
        await pilot.press("u")  # the pick stays on seq 6 — decided again, now unsure
        await pilot.pause()
        assert source.sent[-1].seq == 6 and source.sent[-1].decision == "unsure"
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen) and app.screen.seq == 6


@run_async
async def test_heat_map_toggles_over_the_part(images):
    app, _ = make(images)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("enter")  # seq 9 from the filmstrip: it has a heat map
        await settle(pilot)
        image = app.screen.query_one(PartImage)
        plain = image.picture
        assert plain is not None
        await pilot.press("h")
        await settle(pilot)
        heat = app.screen.query_one(PartImage).picture
        assert heat is not None and heat is not plain
        a, b = np.asarray(plain.image, np.int16), np.asarray(heat.image, np.int16)
        assert a.shape == b.shape and np.abs(a - b)[28:36, 25:45].mean() > 20  # hot along the scratch
        assert "heat map" in str(app.screen.query_one("#image-pane .caption").render())
        await pilot.press("right")  # the filmstrip's next part, seq 6, has no map
        await settle(pilot)
        assert app.screen.seq == 6 and app.screen.query_one(PartImage).picture is None
        assert "no gate heat map stored" in app.screen.query_one(PartImage)._problem


@run_async
async def test_defect_with_the_box_drawn_by_keys(images):
    app, source = make(images)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "down", "enter")  # seq 6, the model's box [10, 20, 60, 80]
        await settle(pilot)
        await pilot.press("b")
        editor = app.screen
        assert isinstance(editor, BoxEditor)
        sx, sy = editor.pixel_step()
        await pilot.press("right", "right", "shift+down", "plus", "shift+left")
        await pilot.press("enter")
        await pilot.pause()
        v = source.sent[-1]
        assert (v.seq, v.decision, v.operator) == (6, "defect_wrong_box", "anna")
        (box,) = v.boxes
        assert box.x1 == round(10 + 2 * sx) and box.y1 == 20
        assert box.x2 == round(60 + 2 * sx - 4 * sx) and box.y2 == round(80 + sy)
        assert isinstance(app.screen, DetailScreen) and app.screen.seq == 9  # from the queue: moved on
        await pilot.press("left")
        await settle(pilot)
        picture = app.screen.query_one(PartImage).picture
        assert picture is not None and OPERATOR_COLOR in picture.colors and box in picture.boxes
        details = str(app.screen.query_one("#details").render())
        assert "defect, box redrawn · anna" in details and f"anna's box [{box.x1:.0f}, {box.y1:.0f}," in details


@run_async
async def test_box_drawn_with_the_mouse_and_cancel_decides_nothing(images):
    app, source = make(images)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "enter")  # seq 4
        await settle(pilot)
        await pilot.press("b", "escape")
        assert isinstance(app.screen, DetailScreen) and source.sent == []
        assert "nothing decided" in app.message
        await pilot.press("b")
        canvas = app.screen.query_one("#box-canvas")
        start, end = canvas.cell_to_pixels(40, 5), canvas.cell_to_pixels(45, 8, end=True)
        assert start is not None and end is not None
        await pilot.mouse_down("#box-canvas", offset=(40, 5))
        await pilot.hover("#box-canvas", offset=(45, 8))
        await pilot.mouse_up("#box-canvas", offset=(45, 8))
        await pilot.press("enter")
        await pilot.pause()
        (box,) = source.sent[-1].boxes
        assert [box.x1, box.y1, box.x2, box.y2] == [round(v) for v in (*start, *end)]
        assert 0 <= box.x1 < box.x2 <= 96 and 0 <= box.y1 < box.y2 <= 96


@run_async
async def test_a_refused_verdict_is_shown_in_full_and_its_part_comes_back(images):
    app, source = make(images, refuse=REFUSAL)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "enter", "f")  # seq 4; the queue would move on to seq 6
        await settle(pilot)
        assert source.sent[-1].seq == 4
        assert isinstance(app.screen, DetailScreen) and app.screen.seq == 4
        assert REFUSAL in app.message and app.message_severity == "error"
        line = app.screen.query_one("#message")
        assert line.size.height >= 3  # wrapped, not cut at 80 columns
        rendered = " ".join(str(line.render()).split())
        assert "--operators anna,ben; until then" in rendered
        details = " ".join(str(app.screen.query_one("#details").render()).split())
        assert "the station refused false alarm · anna" in details and "until then this verdict" in details
        part = app.store.get(4)
        assert part is not None and part.awaiting_review  # back in the queue


@run_async
async def test_the_filmstrip_takes_the_mouse(images):
    app, _ = make(images)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        strip = app.screen.query_one(Filmstrip)
        strip.blur()
        await pilot.click(Filmstrip, offset=(Filmstrip.THUMB_WIDTH + 3, 2))  # the second thumb: picked
        await pilot.pause()
        assert strip.current_seq == 6 and isinstance(app.screen, MainScreen)
        await pilot.click(Filmstrip, offset=(2 * (Filmstrip.THUMB_WIDTH + 1) + 3, 2), times=2)  # opened
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen) and app.screen.seq == 4


def test_on_a_line_the_tile_and_the_shift_count_what_the_line_did():
    from adfm.appliance.review.store import line_outcome
    from adfm.appliance.review.widgets.run_view import tile_text

    timed_out = make_result(1, "review").model_copy(update={"action": "reject", "decision_source": "failsafe_timeout"})
    held = make_result(2, "review").model_copy(update={"action": "hold", "decision_source": "failsafe_model_down"})
    free = make_result(3, "review")
    assert [line_outcome(r) for r in (timed_out, held, free)] == ["ng", "review", "review"]
    assert "NG: fail-safe (timeout)" in str(tile_text(Part(timed_out), UTC, 26))
    assert "HOLD: fail-safe (model down)" in str(tile_text(Part(held), UTC, 26))
    store = PartStore()
    store.add_results([timed_out, held, free, make_result(4, "pass")])
    s = summarize_shift(store, T0)
    assert (s.ok, s.ng, s.review) == (1, 1, 2)


@run_async
async def test_a_redrawn_box_shows_while_its_verdict_waits_for_the_station(images):
    app, source = make(images, online=False)  # nothing acknowledged
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("enter")  # seq 9, from the run view's filmstrip
        await settle(pilot)
        await pilot.press("b", "enter")
        await settle(pilot)
        part = app.store.get(9)
        assert part is not None and part.decision_pending and part.result.operator is None
        picture = app.screen.query_one(PartImage).picture
        assert picture is not None and source.sent[-1].boxes[0] in picture.boxes
        assert picture.colors[-1] == OPERATOR_COLOR


def test_shift_counts_kept_as_parts_arrive_are_decided_and_dropped():
    from adfm.appliance.review.store import line_outcome

    def counted(store: PartStore, since) -> tuple:
        inside = [p for p in store.parts() if p.result.captured_at >= since]
        return (len(inside), sum(line_outcome(p.result) == "ok" for p in inside),
                sum(line_outcome(p.result) == "ng" for p in inside),
                sum(p.decision is not None and p.decision.decision == "false_alarm" and p.flagged for p in inside),
                sum(p.awaiting_review for p in inside))

    def summary(store: PartStore, since) -> tuple:
        s = summarize_shift(store, since)
        return (s.parts, s.ok, s.ng, s.false_alarms, s.awaiting)

    store = PartStore(max_parts=8)
    since = T0 + timedelta(minutes=3)
    store.add_results(fixed_results()[:6])
    assert summary(store, since) == counted(store, since)
    store.add_results([make_result(s, "fail" if s % 2 else "pass") for s in range(11, 15)])  # trims the oldest
    v = OperatorVerdict(station="st1", seq=13, decision="false_alarm", operator="anna", verdict_id="v13")
    store.set_local(v, "queued")
    assert summary(store, since) == counted(store, since)
    store.set_local(v, "rejected", "refused")
    store.apply_journaled(v.model_copy(update={"verdict_id": "v13b", "decision": "unsure"}))
    assert summary(store, since) == counted(store, since) and len(store) == 8
    later = T0 + timedelta(minutes=12)  # a new shift: counted again from the parts loaded
    assert summary(store, later) == counted(store, later)
