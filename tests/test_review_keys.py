"""Every key does what the help says (scripted source, Pilot at 80×24)."""

from __future__ import annotations

from datetime import UTC

from adfm.appliance.review.app import ReviewApp
from adfm.appliance.review.screens import DetailScreen, HelpScreen, MainScreen, NoteScreen
from adfm.appliance.review.widgets import FilterBar, PartImage, PartsTable
from adfm.appliance.review.widgets.image_pane import ImagePane
from tests.review_support import (
    NOW,
    ScriptedSource,
    fixed_results,
    run_async,
    settle,
    standard_events,
    write_part_image,
)


def make(tmp_path=None, **kw) -> tuple[ReviewApp, ScriptedSource]:
    images = None
    if tmp_path is not None:
        images = tmp_path
        for r in fixed_results():
            write_part_image(images / f"p{r.seq}.png", seed=r.seq)
    source = ScriptedSource(standard_events(images), images=images, **kw)
    return ReviewApp(source, operator="anna", tz=UTC, clock=lambda: NOW), source


def table(app: ReviewApp, view: str) -> PartsTable:
    return app.screen.query_one(f"#{view}", PartsTable)


@run_async
async def test_views_cursor_and_part_navigation():
    app, _ = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.screen.view == "run"
        await pilot.press("3")
        assert table(app, "feed").seqs == list(range(10, 0, -1))
        await pilot.press("j", "j", "k", "down")
        assert table(app, "feed").current_seq == 8
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen) and app.screen.seq == 8
        await pilot.press("right", "right", "left", "j")
        assert app.screen.seq == 6
        await pilot.press("escape", "4")
        assert isinstance(app.screen, MainScreen) and app.screen.view == "status"
        await pilot.press("2")
        assert app.screen.view == "queue" and table(app, "queue").seqs == [4, 6, 9]
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        await pilot.press("q")
    assert app.return_code == 0


@run_async
async def test_decisions_from_the_queue_go_to_the_station_and_the_cursor_moves_on():
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "s")  # skip seq 4
        await pilot.pause()
        assert [(v.seq, v.decision, v.operator) for v in source.sent] == [(4, "skip", "anna")]
        assert table(app, "queue").seqs == [6, 9] and table(app, "queue").current_seq == 6
        await pilot.press("down", "d")  # seq 9
        await pilot.pause()
        assert source.sent[-1].seq == 9 and source.sent[-1].decision == "confirmed_defect"
        assert table(app, "queue").seqs == [6]
        assert "journaled by the station" in app.message
        await pilot.press("3")  # the feed shows who decided
        await pilot.pause()
        assert str(table(app, "feed").get_row("9")[-1]) == "✓ defect · anna"


@run_async
async def test_queue_detail_advances_after_each_decision_and_closes_when_done(tmp_path):
    app, source = make(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "enter")
        assert app.screen.seq == 4
        await settle(pilot)
        image = app.screen.query_one(PartImage)
        assert image.picture is not None and image.render_line(0).cell_length == image.size.width
        await pilot.press("f")
        assert app.screen.seq == 6
        await pilot.press("d", "d")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen) and table(app, "queue").seqs == []
        assert [(v.seq, v.decision) for v in source.sent] == [(4, "false_alarm"), (6, "confirmed_defect"),
                                                             (9, "confirmed_defect")]


@run_async
async def test_a_note_goes_with_the_next_decision_and_can_be_added_after_it():
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "n")
        assert isinstance(app.screen, NoteScreen)
        await pilot.press(*"oil", "space", *"drop", "enter")
        assert app.notes == {4: "oil drop"} and source.sent == []
        await pilot.press("f")
        await pilot.pause()
        assert (source.sent[-1].seq, source.sent[-1].note) == (4, "oil drop") and app.notes == {}
        await pilot.press("3")  # seq 4 in the feed: decided by anna → a note re-sends her decision
        table(app, "feed").move_cursor(row=table(app, "feed").seqs.index(4))
        await pilot.press("n", "space", *"(wiped)", "enter")
        await pilot.pause()
        assert [(v.seq, v.decision, v.note) for v in source.sent[-1:]] == [(4, "false_alarm", "oil drop (wiped)")]
        assert source.sent[-1].verdict_id != source.sent[0].verdict_id
        table(app, "feed").move_cursor(row=table(app, "feed").seqs.index(2))  # decided by bob: kept as a draft
        await pilot.press("n", *"looks", "space", *"real", "enter")
        assert app.notes == {2: "looks real"} and len(source.sent) == 2
        await pilot.press("n", "escape")
        assert app.notes == {2: "looks real"}


@run_async
async def test_filters_cycle_and_say_so():
    app, _ = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("v")  # the run view has no filters
        assert app.filters.verdict is None
        await pilot.press("3", "v", "v")  # review
        assert table(app, "feed").seqs == [4]
        await pilot.press("v", "c")  # pass, cam0
        assert table(app, "feed").seqs == [10, 8, 7, 5, 1]
        bar = str(app.screen.query_one("#filters", FilterBar).render())
        assert "verdict: pass" in bar and "camera: cam0" in bar and "5 of 10 parts" in bar
        await pilot.press("t")
        assert "time: last 1 h" in str(app.screen.query_one("#filters", FilterBar).render())
        await pilot.press("v", "c", "c")  # back to all
        assert len(table(app, "feed").seqs) == 10


@run_async
async def test_status_view_takes_no_decisions_and_read_only_refuses_them():
    app, source = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4", "d", "n")
        assert source.sent == [] and isinstance(app.screen, MainScreen)
    app, source = make(read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "d")
        assert "read-only" in app.message and source.sent == []
        await pilot.press("n")
        assert not isinstance(app.screen, NoteScreen)


@run_async
async def test_graphics_terminals_get_the_textual_image_widget(tmp_path):
    app, _ = make(tmp_path)
    app.graphics = True
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        from textual_image.widget._base import Image as TIImage

        assert isinstance(app.screen.query_one("#run-image").query_one(".graphics"), TIImage)  # the run view too
        await pilot.press("2", "down", "enter")
        await settle(pilot)
        pane = app.screen.query_one(ImagePane)
        assert isinstance(pane.query_one(".graphics"), TIImage)
        assert not pane.query_one(PartImage).display
        await pilot.press("right")
        await settle(pilot)
        assert len(pane.query(".graphics")) == 1
