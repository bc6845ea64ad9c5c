"""The result bus and its client: every seq in order, gaps filled by replay, verdicts, CURVE."""

from __future__ import annotations

import time

import pytest
import zmq

from adfm.appliance.bus.client import StationAuthError, StationClient, StationError, StationUnreachable
from adfm.appliance.bus.keys import load_client_curve, load_server_curve
from adfm.appliance.bus.server import BusError, ResultBus, check_endpoint_security, is_local_endpoint
from adfm.appliance.journal.store import Journal
from adfm.schema import OperatorVerdict
from tests.appliance_fakes import BusStation, make_keys

LOCAL = "tcp://127.0.0.1:*"


@pytest.fixture
def station(tmp_path):
    s = BusStation(tmp_path)
    yield s
    s.close()


def collect(client: StationClient, n: int, timeout_s: float = 10.0) -> list[int]:
    seqs: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(seqs) < n and time.monotonic() < deadline:
        seqs += [r.seq for r in client.receive(0.2)]
    return seqs


def test_live_subscriber_receives_every_seq_in_order(station):
    with station.client() as c:
        time.sleep(0.3)  # let the subscription reach the PUB socket
        for _ in range(30):
            station.part()
        assert collect(c, 30) == list(range(1, 31))


def test_late_subscriber_gets_everything_by_replay(station):
    for _ in range(12):
        station.part()
    with station.client(from_seq=1) as c:
        got = collect(c, 14 - 2)
        station.part()
        station.part()
        got += collect(c, 2)
    assert got == list(range(1, 15))


def test_catching_up_comes_a_replay_page_per_poll(station):
    """A subscriber far behind holds one page at a time, not the journal; live results wait for it."""
    for _ in range(12):
        station.part()
    with station.client(from_seq=1, page_size=5) as c:
        assert c.next_seq == 6  # connect fetched the first page only
        time.sleep(0.3)
        station.part()  # published live while the client is still catching up
        batches = []
        while sum(len(b) for b in batches) < 13:
            got = c.receive(2.0)
            assert got, "no progress"
            batches.append([r.seq for r in got])
    assert [s for b in batches for s in b] == list(range(1, 14))
    assert all(len(b) <= 5 for b in batches[:3]) and len(batches) >= 3
    assert c.gaps_filled >= 12


def test_page_size_is_checked():
    with pytest.raises(ValueError, match="page_size must be 1-5000, got 0"):
        StationClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", page_size=0)


def test_gap_in_publication_is_filled_from_the_journal(station):
    with station.client() as c:
        time.sleep(0.3)
        station.part()
        station.part(publish=False)  # e.g. dropped at the high-water mark
        station.part(publish=False)
        station.part()
        assert collect(c, 4) == [1, 2, 3, 4]
        assert c.gaps_filled >= 2


def test_unpublished_tail_is_found_through_status(station):
    with station.client() as c:
        station.part(publish=False)  # journaled, then the station died before publishing
        assert collect(c, 1, timeout_s=5) == [1]
        assert c.last_status is not None and c.last_status.last_seq == 1


def test_restarted_subscriber_resumes_without_loss_or_repeat(station):
    for _ in range(5):
        station.part()
    with station.client(from_seq=1) as c:
        first = collect(c, 5)
        resume = c.next_seq
    for _ in range(4):  # published while no one listened
        station.part()
    with station.client(from_seq=resume) as c:
        second = collect(c, 4)
    assert first + second == list(range(1, 10))


def test_from_seq_none_delivers_only_new_results(station):
    station.part()
    station.part()
    with station.client(from_seq=None) as c:
        assert c.next_seq == 3
        time.sleep(0.3)
        station.part()
        assert collect(c, 1) == [3]


def test_verdicts_are_acked_once_and_announced(station):
    station.part(verdict="fail")
    with station.client() as watcher, station.client() as operator:
        time.sleep(0.3)
        ack = operator.send_verdict(1, "false_alarm", "anna", note="glare", verdict_id="v-1")
        again = operator.send_verdict(1, "false_alarm", "anna", note="glare", verdict_id="v-1")
        assert ack.ok and "journaled" in ack.detail and "already" in again.detail
        events: list = []
        deadline = time.monotonic() + 5
        while not any(isinstance(e, OperatorVerdict) for e in events) and time.monotonic() < deadline:
            events += watcher.poll(0.2)
        verdicts = [e for e in events if isinstance(e, OperatorVerdict)]
        assert [(v.seq, v.operator, v.decision) for v in verdicts] == [(1, "anna", "false_alarm")]
        replayed = operator.replay(1)
        assert replayed[0].operator is not None and replayed[0].operator.note == "glare"
        with pytest.raises(StationError, match="no inspected part with seq 99"):
            operator.send_verdict(99, "skip", "anna")


def test_malformed_request_gets_an_error_reply(station):
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(station.control_ep)
    try:
        dealer.send_multipart([b"", b'{"type": "replay", "from_seq": 0}'])
        assert dealer.poll(5000)
        reply = dealer.recv_multipart()[-1].decode()
        assert '"type":"error"' in reply and "from_seq" in reply
        dealer.send_multipart([b"", b"not json"])
        assert dealer.poll(5000)
        assert '"type":"error"' in dealer.recv_multipart()[-1].decode()
    finally:
        dealer.close()
    assert station.bus.stats.bad_requests == 2
    with station.client() as c:  # and the bus still serves
        assert c.status().station == "st1"


def test_unreachable_station_is_reported(tmp_path):
    c = StationClient("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", station="st1", timeout_s=0.3, retries=2)
    with pytest.raises(StationUnreachable, match="no reply to a status_request request in 2 tries"):
        c.status()
    c.close()


@pytest.mark.parametrize(
    "endpoint, local",
    [("tcp://127.0.0.1:5560", True), ("tcp://localhost:1", True), ("tcp://[::1]:1", True),
     ("ipc:///run/adfm/bus", True), ("tcp://*:5560", False), ("tcp://0.0.0.0:5560", False),
     ("tcp://10.1.2.3:5560", False), ("tcp://eth0:5560", False)],
)
def test_endpoint_locality(endpoint, local):
    assert is_local_endpoint(endpoint) is local
    assert (check_endpoint_security(endpoint, curve=False, insecure=False) is None) is local
    assert check_endpoint_security(endpoint, curve=True, insecure=False) is None


def test_open_non_loopback_bind_is_refused(tmp_path):
    with Journal(tmp_path, "st1") as j, pytest.raises(BusError, match="insecure: true"):
        ResultBus("st1", j, lambda: None, publish=["tcp://0.0.0.0:*"], control=[LOCAL])


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path / "keys", ["tui", "mes"])


def test_curve_admits_known_keys_and_refuses_others(tmp_path, keys):
    server = load_server_curve(keys.server_secret, keys.authorized_clients)
    station = BusStation(tmp_path / "j", curve=server)
    try:
        good = load_client_curve(keys.server_public, keys.client_secrets["tui"])
        with station.client(curve=good) as c:
            time.sleep(0.3)
            station.part()
            assert collect(c, 1) == [1]
            assert c.status().station == "st1"

        stranger = make_keys(tmp_path / "other", ["intruder"])
        bad = load_client_curve(keys.server_public, stranger.client_secrets["intruder"])
        c = station.client(curve=bad, station="st1", timeout_s=1.0, retries=1)
        with pytest.raises(StationAuthError, match="refused this client's CURVE key"):
            c.status()
        c.close()

        # Nor does a subscriber with an unknown key receive anything.
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = (
            bad.server_public, bad.keys.public, bad.keys.secret)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(station.publish_ep)
        time.sleep(0.3)
        station.part()
        assert not sub.poll(1000)
        sub.close()

        plain = station.client(station="st1", timeout_s=0.5, retries=1)  # no CURVE at all
        with pytest.raises(StationUnreachable):
            plain.status()
        plain.close()
    finally:
        station.close()


def test_curve_buses_run_side_by_side_in_one_process(tmp_path, keys):
    """Each bus has its own ZeroMQ context: two CURVE stations in one process each get their own ZAP
    handler (a shared context has one inproc ZAP endpoint), and a new one starts as soon as one stops."""
    server = load_server_curve(keys.server_secret, keys.authorized_clients)
    good = load_client_curve(keys.server_public, keys.client_secrets["tui"])
    first = BusStation(tmp_path / "a", curve=server)
    second = BusStation(tmp_path / "b", curve=server)
    try:
        for station in (first, second):
            assert station.bus.io_threads == 2
            with station.client(curve=good) as c:
                time.sleep(0.3)
                station.part()
                assert collect(c, 1) == [1]
        first.close()  # and another station starts in the same process right away
        third = BusStation(tmp_path / "c", curve=server)
        try:
            with third.client(curve=good) as c:
                time.sleep(0.3)
                third.part()
                assert collect(c, 1) == [1]
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def test_keys_are_not_overwritten(tmp_path, keys):
    from adfm.appliance.bus.keys import admit_client, generate_client_keys, generate_server_keys

    secret = keys.server_secret.read_bytes()
    assert generate_server_keys(tmp_path / "keys").server_secret.read_bytes() == secret  # the station key stays
    public, _ = generate_client_keys(tmp_path / "line2-pc", "line2")
    with pytest.raises(FileExistsError, match=r"line2\.key_secret"):
        generate_client_keys(tmp_path / "line2-pc", "line2")
    with pytest.raises(FileExistsError, match="admitted already"):
        admit_client(tmp_path / "keys", "tui", public)
    admit_client(tmp_path / "keys", "line2", public)
    assert (keys.authorized_clients / "line2.key").is_file()
    assert oct(keys.server_secret.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError, match="client name"):
        generate_client_keys(tmp_path / "x", "../evil")
