"""Snapshots of the dashboard's screens at 80×24 (and the shop-floor screens at 120×36 too) with
fixed parts, times, images and a gate heat map.

Regenerate with `pytest tests/test_review_snapshots.py --snapshot-update` and look at the SVGs
under tests/__snapshots__/test_review_snapshots/ before committing them.
"""

from __future__ import annotations

from datetime import UTC, time, timedelta

import pytest

from adfm.appliance.review.app import ReviewApp
from adfm.appliance.review.sources import Connection
from tests.review_support import (
    NOW,
    T0,
    ScriptedSource,
    fixed_results,
    settle,
    standard_events,
    write_gate_map,
    write_part_image,
)
from tests.test_review_run_view import REFUSAL

SMALL, LARGE = (80, 24), (120, 36)
BOTH = pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("part-images")
    for r in fixed_results():
        write_part_image(folder / f"p{r.seq}.png", seed=r.seq)
    write_gate_map(folder / "p9.gate.png")
    return folder


def make_app(images, *, online: bool = True, extra=(), read_only: bool = False, refuse: str = "") -> ReviewApp:
    source = ScriptedSource([*standard_events(images), *extra], online=online, read_only=read_only, images=images,
                            refuse=refuse)
    if read_only:
        source.description = "journal /var/lib/adfm-appliance/journal"
    return ReviewApp(source, operator="anna", tz=UTC, clock=lambda: NOW, shifts=[time(6), time(14), time(22)])


def keys(*pressed: str):
    """Press keys one by one, letting pictures load (worker threads) after each."""

    async def run(pilot) -> None:
        await settle(pilot)
        for key in pressed:
            await pilot.press(key)
            await settle(pilot)

    return run


@BOTH
def test_run_view(snap_compare, images, size):
    assert snap_compare(make_app(images), run_before=keys(), terminal_size=size)


@BOTH
def test_review_queue(snap_compare, images, size):
    assert snap_compare(make_app(images), run_before=keys("2"), terminal_size=size)


@BOTH
def test_part_detail_with_boxes_and_reasoning(snap_compare, images, size):
    assert snap_compare(make_app(images), run_before=keys("2", "down", "enter"), terminal_size=size)


@BOTH
def test_part_detail_with_the_gate_heat_map(snap_compare, images, size):
    assert snap_compare(make_app(images), run_before=keys("enter", "h"), terminal_size=size)


@BOTH
def test_drawing_the_right_box(snap_compare, images, size):
    assert snap_compare(make_app(images), run_before=keys("2", "down", "enter", "b", "right", "right", "shift+down"),
                        terminal_size=size)


@BOTH
def test_refused_verdict_in_full_with_its_part_kept(snap_compare, images, size):
    assert snap_compare(make_app(images, refuse=REFUSAL), run_before=keys("2", "enter", "f"), terminal_size=size)


def test_live_feed(snap_compare, images):
    assert snap_compare(make_app(images), run_before=keys("3"), terminal_size=SMALL)


def test_feed_filtered_to_failures_of_one_camera(snap_compare, images):
    assert snap_compare(make_app(images), run_before=keys("3", "v", "c", "c"), terminal_size=SMALL)


def test_part_detail_after_a_decision_moves_to_the_next(snap_compare, images):
    assert snap_compare(make_app(images), run_before=keys("2", "enter", "f"), terminal_size=SMALL)


def test_station_status(snap_compare, images):
    assert snap_compare(make_app(images), run_before=keys("4"), terminal_size=SMALL)


def test_disconnected_banner_with_a_queued_verdict(snap_compare, images):
    down = Connection(False, "tcp://station.test:5561: no reply to a status_request request in 1 tries of 1.5 s; "
                             "is the station running and reachable?", T0 + timedelta(minutes=20), "st1")
    assert snap_compare(make_app(images, online=False, extra=[down]), run_before=keys("2", "f"),
                        terminal_size=SMALL)


def test_note_dialog(snap_compare, images):
    assert snap_compare(make_app(images), run_before=keys("2", "n", *"oil drop"), terminal_size=SMALL)


def test_help(snap_compare, images):
    assert snap_compare(make_app(images), run_before=keys("question_mark"), terminal_size=SMALL)


def test_read_only_journal_status(snap_compare, images):
    assert snap_compare(make_app(images, read_only=True), run_before=keys("4"), terminal_size=SMALL)
