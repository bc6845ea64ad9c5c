"""Snapshots of the dashboard's screens at 80×24 with fixed parts, times and images.

Regenerate with `pytest tests/test_review_snapshots.py --snapshot-update` and look at the SVGs
under tests/__snapshots__/test_review_snapshots/ before committing them.
"""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest

from adfm.appliance.review.app import ReviewApp
from adfm.appliance.review.sources import Connection
from tests.review_support import NOW, T0, ScriptedSource, fixed_results, standard_events, write_part_image

SIZE = (80, 24)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("part-images")
    for r in fixed_results():
        write_part_image(folder / f"p{r.seq}.png", seed=r.seq)
    return folder


def make_app(images, *, online: bool = True, extra=(), read_only: bool = False) -> ReviewApp:
    source = ScriptedSource([*standard_events(images), *extra], online=online, read_only=read_only, images=images)
    if read_only:
        source.description = "journal /var/lib/adfm-appliance/journal"
    return ReviewApp(source, operator="anna", tz=UTC, clock=lambda: NOW)


def test_live_feed(snap_compare, images):
    assert snap_compare(make_app(images), terminal_size=SIZE)


def test_feed_filtered_to_failures_of_one_camera(snap_compare, images):
    assert snap_compare(make_app(images), press=["v", "c", "c"], terminal_size=SIZE)


def test_review_queue(snap_compare, images):
    assert snap_compare(make_app(images), press=["2"], terminal_size=SIZE)


def test_part_detail_with_boxes_and_reasoning(snap_compare, images):
    assert snap_compare(make_app(images), press=["2", "down", "enter"], terminal_size=SIZE)


def test_part_detail_after_a_decision_moves_to_the_next(snap_compare, images):
    assert snap_compare(make_app(images), press=["2", "enter", "f"], terminal_size=SIZE)


def test_station_status(snap_compare, images):
    assert snap_compare(make_app(images), press=["3"], terminal_size=SIZE)


def test_disconnected_banner_with_a_queued_verdict(snap_compare, images):
    down = Connection(False, "tcp://station.test:5561: no reply to a status_request request in 1 tries of 1.5 s; "
                             "is the station running and reachable?", T0 + timedelta(minutes=20), "st1")
    assert snap_compare(make_app(images, online=False, extra=[down]), press=["2", "f"], terminal_size=SIZE)


def test_note_dialog(snap_compare, images):
    assert snap_compare(make_app(images), press=["2", "n", *"oil drop"], terminal_size=SIZE)


def test_help(snap_compare, images):
    assert snap_compare(make_app(images), press=["question_mark"], terminal_size=SIZE)


def test_read_only_journal_status(snap_compare, images):
    assert snap_compare(make_app(images, read_only=True), press=["3"], terminal_size=SIZE)
