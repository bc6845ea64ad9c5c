"""The plant store on a real PostgreSQL: migrations once, monthly partitions, each result and verdict once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adfm.plant.db import PlantDBError, applied, connect, migrate, migrations, require_current
from adfm.plant.partitions import existing
from adfm.plant.store import Store
from adfm.schema import OperatorVerdict
from tests.plant_support import rollups_from_results
from tests.review_support import make_result


def test_migrations_apply_once_and_a_newer_database_is_refused(plant_db):
    with connect(plant_db) as conn:
        assert applied(conn) == list(range(1, len(migrations()) + 1))
        assert migrate(conn) == []  # already current
        require_current(conn)
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (99, '0099_future.sql')")
        with pytest.raises(PlantDBError, match="schema version 99, newer than this adfm-plant knows"):
            migrate(conn)


def test_an_unmigrated_database_is_refused_with_the_command_to_run(pg_cluster):
    dsn = pg_cluster.create_database("unmigrated")
    with connect(dsn) as conn, pytest.raises(PlantDBError, match=r"version 0.*adfm-plant migrate"):
        require_current(conn)


def test_a_wrong_password_or_port_names_the_database_not_the_password():
    with pytest.raises(PlantDBError, match=r"password=\*\*\*.*cannot connect"):
        connect("host=127.0.0.1 port=1 dbname=x user=u password=hunter2 connect_timeout=2")


def test_a_batch_is_stored_once_however_often_it_arrives(plant_db):
    t0 = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
    results = [make_result(i, "fail" if i % 3 == 0 else "pass", station="st1").model_copy(
        update={"epoch": "e1", "captured_at": t0 + timedelta(minutes=30 * i)}) for i in range(1, 7)]
    verdict = OperatorVerdict(station="st1", seq=3, decision="false_alarm", operator="anna", verdict_id="v3",
                              epoch="e1", part_id="p0003")
    with connect(plant_db) as conn:
        store = Store(conn)
        first = store.write("st1", results[:4], [verdict], "e1", 5)
        again = store.write("st1", results, [verdict], "e1", 7)  # a restart re-delivers 1-4
        assert (first.results, first.verdicts, again.results, again.verdicts) == (4, 1, 2, 0)
        assert existing(conn) == ["results_202601", "results_202602"]  # the batch crossed a month
        revision = results[2].model_copy(update={"revision": 1, "verdict": "pass"})
        assert store.write("st1", [revision, revision], [], "e1", 7).results == 1
        rows = conn.execute("SELECT seq, revision, first_stored FROM results ORDER BY seq, revision").fetchall()
        assert [(s, r, f) for s, r, f in rows if s == 3] == [(3, 0, True), (3, 1, False)]
        assert len(rows) == 7
        assert store.cursor("st1").next_seq == 7
        # a replaced journal: same seqs, another epoch, stored beside the old ones
        other = [r.model_copy(update={"epoch": "e2"}) for r in results[:2]]
        assert store.write("st1", other, [], "e2", 3).results == 2
        assert (store.cursor("st1").epoch, store.cursor("st1").next_seq) == ("e2", 3)
        # the hourly counts and gate bins the view reads counted each part once, revisions not again
        kept, recomputed = rollups_from_results(conn)
        assert kept == recomputed and sum(h[4] for h in kept[0]) == 8
