"""The dashboard's store: order, the queue, local vs journaled verdicts, filters, bounds."""

from __future__ import annotations

from datetime import timedelta

from adfm.appliance.review.store import Filters, PartStore
from adfm.schema import OperatorVerdict
from tests.review_support import NOW, T0, fixed_results, make_result


def verdict(seq: int, decision: str = "false_alarm", vid: str = "v1", minutes: float = 0, operator: str = "anna"):
    return OperatorVerdict(station="st1", seq=seq, decision=decision, operator=operator, verdict_id=vid,  # type: ignore[arg-type]
                           at=T0 + timedelta(minutes=minutes))


def test_parts_are_kept_in_seq_order_whatever_the_arrival():
    store = PartStore()
    store.add_results([make_result(5), make_result(2), make_result(9)])
    store.add_results([make_result(3)])
    assert [p.seq for p in store.parts()] == [2, 3, 5, 9]
    assert [p.seq for p in store.feed(Filters(), NOW)] == [9, 5, 3, 2]
    assert store.last_seq == 9 and store.station == "st1"


def test_queue_holds_flagged_parts_nobody_decided_oldest_first():
    store = PartStore()
    store.add_results(fixed_results())
    assert [p.seq for p in store.queue(Filters(), NOW)] == [4, 6, 9]  # seq 2 was decided by bob
    assert store.awaiting_count() == 3


def test_a_local_verdict_takes_the_part_out_at_once_and_a_refusal_puts_it_back():
    store = PartStore()
    store.add_results([make_result(1)])
    v = verdict(1)
    store.set_local(v, "queued")
    part = store.get(1)
    assert part.decision == v and part.decision_pending and not part.awaiting_review
    assert store.queued_verdicts() == 1
    store.set_local(v, "rejected", "no inspected part")
    part = store.get(1)
    assert part.decision is None and part.awaiting_review and store.queued_verdicts() == 0


def test_an_acknowledged_verdict_becomes_the_journaled_one():
    store = PartStore()
    store.add_results([make_result(1)])
    v = verdict(1)
    store.set_local(v, "queued")
    store.set_local(v, "sent", "journaled")
    part = store.get(1)
    assert part.result.operator == v and not part.decision_pending


def test_a_newer_decision_wins_over_an_older_one_whichever_arrives_last():
    store = PartStore()
    store.add_results([make_result(1)])
    mine = verdict(1, "confirmed_defect", "mine", minutes=10)
    store.set_local(mine, "queued")
    store.apply_journaled(verdict(1, "false_alarm", "bobs", minutes=5, operator="bob"))  # older, announced late
    assert store.get(1).decision == mine
    newer = verdict(1, "skip", "bobs2", minutes=20, operator="bob")
    store.apply_journaled(newer)
    assert store.get(1).decision == newer


def test_a_verdict_for_a_part_not_loaded_yet_applies_when_it_arrives():
    store = PartStore()
    store.set_local(verdict(7), "queued")
    assert store.queued_verdicts() == 1
    store.add_results([make_result(7)])
    assert store.get(7).decision_pending


def test_filters_by_verdict_camera_and_time_window():
    store = PartStore()
    store.add_results(fixed_results())
    f = Filters().next_verdict()  # fail
    assert [p.seq for p in store.feed(f, NOW)] == [9, 6, 2]
    f = f.next_camera(store.cameras())  # cam0
    assert [p.seq for p in store.feed(f, NOW)] == [2]
    assert f.describe() == {"verdict": "fail", "camera": "cam0", "time": "all"}
    late = Filters(window_s=3600.0)
    assert len(store.feed(late, NOW)) == 10 and store.feed(late, NOW + 3 * 3600) == []
    assert Filters().next_window().next_window().window_s == 8 * 3600.0
    assert Filters(verdict="pass").next_verdict().verdict is None  # cycles back to all


def test_bounded_store_drops_the_oldest_parts_nobody_needs():
    store = PartStore(max_parts=4)
    store.add_results([make_result(i, "pass") for i in range(1, 4)] + [make_result(4, "fail")])
    store.add_results([make_result(i, "pass") for i in range(5, 8)])
    assert [p.seq for p in store.parts()] == [4, 5, 6, 7]  # the flagged one stays though oldest


def test_counts_and_latency_percentiles():
    store = PartStore()
    store.add_results(fixed_results())
    assert store.verdict_counts() == {"pass": 6, "fail": 3, "review": 1}
    assert store.decision_counts() == {"false_alarm": 1}
    p50 = store.latency_percentiles(50)
    assert p50["total"] == 417.5 and p50["vlm"] == 385.5
    assert store.parts_per_min((T0 + timedelta(minutes=10)).timestamp()) == 1.0


def test_the_awaiting_count_follows_every_change():
    from adfm.schema import OperatorVerdict
    from tests.review_support import fixed_results

    store = PartStore(max_parts=6)
    results = fixed_results()  # flagged and undecided: 4, 6, 9
    store.add_results(results)
    assert store.awaiting_count() == 3 == sum(p.awaiting_review for p in store.parts())
    v = OperatorVerdict(station="st1", seq=6, decision="unsure", operator="anna", verdict_id="v6")
    store.set_local(v, "queued")
    assert store.awaiting_count() == 2
    store.set_local(v, "rejected", "refused")
    assert store.awaiting_count() == 3
    store.apply_journaled(v.model_copy(update={"verdict_id": "v6b"}))
    assert store.awaiting_count() == 2 == sum(p.awaiting_review for p in store.parts())
    store.reset()
    assert store.awaiting_count() == 0
