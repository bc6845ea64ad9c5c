"""The dashboard against a real station bus on loopback: keys decide parts, the station's journal
holds the verdicts; the station going away shows the banner, verdicts queue locally, and coming
back fills the gap and delivers them — once."""

from __future__ import annotations

from datetime import UTC

import pytest

from adfm.appliance.bus.client import StationClient
from adfm.appliance.review.app import ReviewApp
from adfm.appliance.review.outbox import VerdictOutbox
from adfm.appliance.review.sources import LiveOptions, LiveSource
from adfm.appliance.review.widgets import Banner, MessageLine, PartImage, PartsTable
from adfm.schema import OperatorVerdict
from tests.review_support import LoopbackStation, run_async, wait_for

FAST = LiveOptions(timeout_s=0.5, heartbeat_s=0.3, retry_s=0.2, poll_s=0.05)


@pytest.fixture
def station(tmp_path):
    s = LoopbackStation(tmp_path / "journal")
    yield s
    s.close()


def live_app(station: LoopbackStation, state_dir, operator: str = "anna") -> tuple[ReviewApp, VerdictOutbox]:
    outbox = VerdictOutbox.in_dir(state_dir)
    source = LiveSource(station.publish_ep, station.control_ep, outbox, images_dir=station.root, options=FAST)
    return ReviewApp(source, operator=operator, tz=UTC), outbox


def screen_text(widget) -> str:
    return str(widget.render())


@run_async
async def test_flagged_part_arrives_live_and_the_operators_verdict_is_journaled(station, tmp_path):
    station.part("pass")
    app, outbox = live_app(station, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.connected is True and len(app.store) == 1, what="connection + history")
        station.part("fail")  # published while the dashboard listens
        await wait_for(pilot, lambda: app.store.get(2) is not None, what="the live part")

        await pilot.press("2")  # the review queue
        queue = app.screen.query_one("#queue", PartsTable)
        assert queue.seqs == [2]
        await pilot.press("enter")  # open it: the image with its box is there
        await wait_for(pilot, lambda: app.screen.query_one(PartImage).picture is not None, what="the image")
        image = app.screen.query_one(PartImage)
        assert image._problem == "" and len(image.picture.boxes) == len(station.journal.get(2).boxes)
        await pilot.press("n", *"burr on edge", "enter")
        assert app.notes == {2: "burr on edge"}
        await pilot.press("d")  # confirm defect

        await wait_for(pilot, lambda: station.journal.verdicts(2), what="the journaled verdict")
        [v] = station.journal.verdicts(2)
        assert (v.decision, v.operator, v.note) == ("confirmed_defect", "anna", "burr on edge")
        await wait_for(pilot, lambda: "journaled by the station" in app.message, what="the acknowledgement")
        assert "seq 2" in screen_text(app.screen.query_one("#message", MessageLine))
        part = app.store.get(2)
        assert part is not None and not part.decision_pending and not part.awaiting_review
        assert outbox.queued() == [] and outbox.state(v.verdict_id)[0] == "sent"
        assert station.journal.get(2).operator.verdict_id == v.verdict_id
    outbox.close()


@run_async
async def test_disconnect_shows_banner_queues_verdicts_and_reconnect_fills_the_gap(station, tmp_path):
    station.part("fail")
    station.part("fail")
    app, outbox = live_app(station, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.connected is True and app.store.last_seq == 2, what="connection")
        banner = app.screen.query_one("#banner", Banner)
        assert not banner.display

        station.stop()
        await wait_for(pilot, lambda: app.connected is False, what="the disconnection")
        assert banner.display and "DISCONNECTED" in screen_text(banner)
        assert "DISCONNECTED" in screen_text(app.screen.query_one("#topbar"))

        await pilot.press("2", "f")  # decide seq 1 (oldest in the queue) while the station is away
        [queued] = outbox.queued()
        assert (queued.seq, queued.decision) == (1, "false_alarm")
        assert "queued here" in app.message
        assert "1 verdict queued here" in screen_text(banner)
        assert app.screen.query_one("#queue", PartsTable).seqs == [2]  # decided here: left the queue

        station.part("fail", publish=False)  # journaled while nobody could hear
        station.part("pass", publish=False)
        station.start()  # same ports
        await wait_for(pilot, lambda: app.connected is True and app.store.last_seq == 4, what="reconnect + gap")
        assert [p.seq for p in app.store.parts()] == [1, 2, 3, 4]
        await wait_for(pilot, lambda: not banner.display, what="the banner to go")
        await wait_for(pilot, lambda: station.journal.verdicts(1), what="the queued verdict")
        assert [v.verdict_id for v in station.journal.verdicts(1)] == [queued.verdict_id]
        assert outbox.queued() == []
        await wait_for(pilot, lambda: app.screen.query_one("#queue", PartsTable).seqs == [2, 3], what="queue")
    outbox.close()


@run_async
async def test_a_verdict_left_in_the_outbox_is_sent_at_next_start_and_never_twice(station, tmp_path):
    station.part("fail")
    state = tmp_path / "state"
    left = OperatorVerdict(station="st1", seq=1, decision="confirmed_defect", operator="anna", verdict_id="v-left",
                           part_id="p1")
    box = VerdictOutbox.in_dir(state)
    box.add(left)  # the previous session quit while the station was unreachable
    box.close()

    for _session in range(2):
        app, outbox = live_app(station, state)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: outbox.state("v-left")[0] == "sent", what="delivery")  # noqa: B023
            await wait_for(pilot, lambda: app.store.get(1) is not None, what="the part")  # noqa: B023
            part = app.store.get(1)
            assert part.decision is not None and part.decision.verdict_id == "v-left"
        outbox.close()
    assert [v.verdict_id for v in station.journal.verdicts(1)] == ["v-left"]

    # A crash between the station's ack and the outbox's note of it: the same id goes again and
    # the station keeps the one it has.
    box = VerdictOutbox(tmp_path / "other.sqlite")
    box.add(left)
    app = ReviewApp(LiveSource(station.publish_ep, station.control_ep, box, options=FAST), operator="anna")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: box.state("v-left")[0] == "sent", what="re-delivery")
        assert "already journaled" in box.state("v-left")[1]
    box.close()
    assert len(station.journal.verdicts(1)) == 1


@run_async
async def test_a_verdict_the_station_refuses_is_shown_and_not_retried(station, tmp_path):
    station.part("fail")
    state = tmp_path / "state"
    box = VerdictOutbox.in_dir(state)
    box.add(OperatorVerdict(station="st1", seq=99, decision="skip", operator="anna", verdict_id="v-99",
                           part_id="p99"))
    box.close()
    app, outbox = live_app(station, state)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: outbox.state("v-99")[0] == "rejected", what="the refusal")
        assert "no inspected part with seq 99" in outbox.state("v-99")[1]
        await wait_for(pilot, lambda: "refused" in app.message, what="the refusal on screen")
    outbox.close()


@run_async
async def test_other_operators_verdicts_take_parts_out_of_the_queue(station, tmp_path):
    station.part("fail")
    app, outbox = live_app(station, tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.store.awaiting_count() == 1, what="the flagged part")
        await pilot.press("2")
        with StationClient(station.publish_ep, station.control_ep, timeout_s=2.0) as other:
            other.send_verdict(1, "false_alarm", "bob", note="oil drop")
        await wait_for(pilot, lambda: app.store.awaiting_count() == 0, what="the announcement")
        assert app.screen.query_one("#queue", PartsTable).seqs == []
        assert "p1 (seq 1): false alarm · bob" in app.message
    outbox.close()


@run_async
async def test_unreachable_station_at_start_shows_the_banner_with_the_reason(tmp_path):
    outbox = VerdictOutbox.in_dir(tmp_path / "state")
    source = LiveSource("tcp://127.0.0.1:9", "tcp://127.0.0.1:10", outbox, options=FAST)
    app = ReviewApp(source, operator="anna")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.connected is False, what="the failed connection")
        banner = screen_text(app.screen.query_one("#banner", Banner))
        assert "DISCONNECTED" in banner and "no reply to a status_request" in banner
        await pilot.press("2", "d", "3", "1")  # nothing to decide; nothing breaks
        assert outbox.queued() == []
    outbox.close()


@run_async
async def test_curve_keys_from_adfm_appliance_keys_connect_and_a_stranger_is_told_why(tmp_path):
    from adfm.appliance.bus.keys import load_client_curve, load_server_curve
    from tests.appliance_fakes import make_keys

    keys = make_keys(tmp_path / "keys", ["review"])
    station = LoopbackStation(tmp_path / "journal", curve=load_server_curve(keys.server_secret,
                                                                            keys.authorized_clients))
    try:
        station.part("fail")
        good = load_client_curve(keys.server_public, keys.client_secrets["review"])
        outbox = VerdictOutbox.in_dir(tmp_path / "state")
        app = ReviewApp(LiveSource(station.publish_ep, station.control_ep, outbox, curve=good, options=FAST),
                        operator="anna")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.store.awaiting_count() == 1, what="the part over CURVE")
            await pilot.press("2", "f")
            await wait_for(pilot, lambda: station.journal.verdicts(1), what="the verdict over CURVE")
        outbox.close()

        stranger = make_keys(tmp_path / "other", ["intruder"])
        bad = load_client_curve(keys.server_public, stranger.client_secrets["intruder"])
        outbox = VerdictOutbox.in_dir(tmp_path / "state2")
        app = ReviewApp(LiveSource(station.publish_ep, station.control_ep, outbox, curve=bad, options=FAST),
                        operator="anna")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.connected is False, what="the refusal")
            assert "refused this client's CURVE key" in screen_text(app.screen.query_one("#banner", Banner))
            assert len(app.store) == 0
        outbox.close()
    finally:
        station.close()


@run_async
async def test_a_dashboard_off_the_line_pc_fetches_the_heat_map_over_the_control_socket(station, tmp_path):
    station.part("fail", gate_map=True)
    outbox = VerdictOutbox.in_dir(tmp_path / "state")
    source = LiveSource(station.publish_ep, station.control_ep, outbox, options=FAST)  # no --images
    app = ReviewApp(source, operator="anna", tz=UTC)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.store.get(1) is not None, what="the part")
        await pilot.press("enter", "h")  # the filmstrip's part, its heat map
        await wait_for(pilot, lambda: app.screen.query_one(PartImage).picture is not None, what="the heat map")
        cached = sorted(p.name for p in (tmp_path / "state" / "images").rglob("*.png"))
        assert cached == ["0000000001.gate.png", "0000000001.png"]
        result = station.journal.get(1)
        picture = app.screen.query_one(PartImage).picture
        assert picture.source_size == (result.image_width, result.image_height)
        assert "gate heat map over the part" in str(app.screen.query_one("#image-pane .caption").render())
    outbox.close()
