"""The line against a real Modbus/TCP PLC stand-in (pymodbus's server, its own process, real TCP):
every trigger gets exactly one journaled decision within its deadline, the reject coil pulses exactly
for the rejected parts when they reach the ejector, late VLM verdicts come as revisions — and the
faults: the PLC killed and restarted, the camera unplugged, the disk full.

ADFM_LINE_TEST_S sets the steady run's length (default 12 s = 60 parts at 5 parts/s; the issue's
2 minutes: ADFM_LINE_TEST_S=120, also what bench/line_rate.py runs)."""

from __future__ import annotations

import errno
import os
import time

import pytest

pytest.importorskip("pymodbus")

from adfm.appliance.config.line import DECISION_CODES, SOURCE_CODES
from adfm.appliance.journal import store as journal_mod
from adfm.appliance.journal.store import Journal
from tests.appliance_fakes import write_script
from tests.conftest import needs_llama
from tests.line_support import ENCODER_HR, Plc, free_port, line_config, start_line
from tests.plc_standin import REJECT_COIL

RATE = 5.0
DEADLINE_MS = 500.0
DELAY_MS = 700.0
#: How far a PLC-side time may lag the station's own deadline: trigger polling (5 ms), the Modbus
#: round trips and scheduling on a shared 2-core machine (at load 10 a thread can wait 150 ms for a
#: core; the link reports its longest polling gap in `stats.poll_gap_ms_max`).
TOLERANCE_MS = 200.0
# Every 5th part the model answers after 0.7 s (past the 500 ms deadline); the others at once. The
# VLM then still keeps up on average (5 parts in ~0.75 s), so every late part gets its revision; a
# VLM slower than the line gets revisions for the newest `vlm_backlog` late parts only.
ACTIONS = ["no", "yes", "no", "late", "no"]


class BusSubscriber:
    """A StationClient on the station's bus in a thread, collecting every result it delivers."""

    def __init__(self, publish: str, control: str) -> None:
        import threading

        from adfm.appliance.bus.client import StationClient

        self.results: list = []
        self._stop = threading.Event()
        self._client = StationClient(publish, control, from_seq=1, timeout_s=5.0)
        self._client.connect()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results += self._client.receive(0.2)

    def stop(self) -> list:
        self._stop.set()
        self._thread.join(5)
        self._client.close()
        return self.results


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _journal(tmp_path) -> Journal:
    return Journal(tmp_path / "state", "st1")


def _decisions(journal: Journal) -> list:
    """Revision 0 of every journaled part (the decision the line acted on)."""
    out = []
    for seq in range(1, journal.last_seq() + 1):
        revs = journal.revisions(seq)
        assert revs, f"seq {seq} has no result"
        out.append(revs[0])
    return out


@pytest.mark.slow
def test_steady_line_every_trigger_one_decision_in_time_and_pulses_for_rejects(tmp_path):
    seconds = float(os.environ.get("ADFM_LINE_TEST_S", "12"))
    parts = int(seconds * RATE)
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=RATE, parts=parts)
    script = write_script(tmp_path / "script.json", ACTIONS, late_s=0.7, cycle=True)
    # The trigger as a part counter: under any load no part is lost between two polls.
    run, _ = start_line(line_config(tmp_path, port, deadline_ms=DEADLINE_MS, delay_ms=DELAY_MS, counter=True), script)
    bus = run.service.bus.bound
    subscriber = BusSubscriber(bus["publish"][0], bus["control"][0])
    try:
        _wait(plc.done, seconds + 30, "the PLC to present every part")
        _wait(lambda: len(plc.result_writes()) >= parts and not run.service.line.controller.parts, 20,
              "every decision and revision")
        time.sleep(DELAY_MS / 1000 + 0.3)  # the last pulses
    finally:
        on_bus = subscriber.stop()
        run.stop()
        plc.kill()

    triggers = {t["part_id"]: t for t in plc.triggers()}
    assert len(triggers) == parts
    with _journal(tmp_path) as journal:
        decisions = _decisions(journal)
        by_part = {}
        for d in decisions:
            assert d.part_id not in by_part, f"part {d.part_id} decided twice"
            by_part[d.part_id] = d
        # When a poll comes more than a part period late (a starved 2-core machine), the counter has
        # advanced by two and the registers hold only the newest part's id: the earlier part is
        # decided under a station-made id. Pair those with the PLC's unseen ids, in time order.
        unseen = sorted((t["t"], pid) for pid, t in triggers.items() if pid not in by_part)
        made_up = sorted((d.triggered_at, pid) for pid, d in by_part.items() if pid not in triggers)
        assert len(unseen) == len(made_up) and all(pid.startswith("cam0-") for _, pid in made_up), (unseen, made_up)
        seen_late = set()  # their trigger reached the station a part period late: PLC-side timing exempt
        for (_, plc_id), (_, station_id) in zip(unseen, made_up, strict=True):
            by_part[plc_id] = by_part.pop(station_id)
            seen_late.add(plc_id)
        assert set(by_part) == set(triggers), "every trigger has exactly one journaled decision"
        assert len(made_up) <= parts // 20, f"{len(made_up)} parts without their PLC id"
        writes = {w["seq"]: w for w in plc.result_writes()}
        for part_id, d in by_part.items():
            assert d.revision == 0 and d.decision_source is not None and d.decided_at and d.triggered_at
            assert d.recipe == "default" and d.deadline_ms == DEADLINE_MS
            # decided by the deadline on the station's clock (the fail-safe goes out 50 ms before it;
            # a loaded machine may still wake the loop late — that is what the tolerance is for)
            assert d.latency_ms["trigger_to_decision"] <= DEADLINE_MS + TOLERANCE_MS, (part_id, d.latency_ms)
            w = writes[d.seq]  # written to the PLC within the deadline, measured on the PLC's side
            assert w["decision"] == DECISION_CODES[d.action] and w["source"] == SOURCE_CODES[d.decision_source]
            if part_id not in seen_late:
                assert (w["t"] - triggers[part_id]["t"]) * 1000 <= DEADLINE_MS + TOLERANCE_MS, (part_id, d, w)
        sources = {d.decision_source for d in decisions}
        assert {"vlm", "failsafe_timeout"} <= sources, sources
        late = [d for d in decisions if d.decision_source == "failsafe_timeout"]
        for d in late:  # fail-safe reject at once, the VLM's verdict later as revision 1
            assert d.action == "reject" and d.verdict == "review"
            revs = journal.revisions(d.seq)
            assert len(revs) == 2 and revs[1].revision == 1 and revs[1].decision_source == "vlm", revs
            assert revs[1].part_id == d.part_id and revs[1].action == "reject"
            main = journal.get(d.seq)  # the main row keeps what the line did
            assert (main.revision, main.decision_source, main.action) == (0, "failsafe_timeout", "reject")
        for d in decisions:
            if d.decision_source == "vlm":
                assert len(journal.revisions(d.seq)) == 1
        rejects = sorted((triggers[pid]["t"], pid) for pid, d in by_part.items() if d.action == "reject")
    # A subscriber (StationClient) got every decision once, in seq order, and every revision with the
    # same seq and part id as the decision it revises.
    firsts_on_bus = [r.seq for r in on_bus if r.revision == 0]
    assert firsts_on_bus == list(range(1, parts + 1))
    assert {(r.seq, r.part_id) for r in on_bus if r.revision == 1} == {(d.seq, d.part_id) for d in late}

    # Every pulse belongs to a rejected part, rising DELAY_MS after its trigger (+ tolerance), and every
    # rejected part has its pulse. A part whose trigger the station saw a period late shares the pulse
    # of the part seen with it (same trigger time, pulses merge).
    pulses = plc.pulses()
    waiting = list(rejects)
    for rise, fall in pulses:
        served = [(t, pid) for t, pid in waiting if DELAY_MS <= (rise - t) * 1000 <= DELAY_MS + TOLERANCE_MS
                  or (pid in seen_late and (rise - t) * 1000 >= DELAY_MS)]
        assert served, f"a reject pulse at {rise} for no rejected part"
        waiting = [w for w in waiting if w not in served]
        assert fall is not None and 50 <= (fall - rise) * 1000 <= 60 + TOLERANCE_MS
    assert not waiting, f"rejected parts without a pulse: {waiting}"
    assert len(pulses) >= len(rejects) - len(seen_late)


#: how long before a PLC dies a trigger it raised may go unread (poll_ms 10 plus scheduling, well below
#: the 200 ms between parts at RATE): at most the last part before the kill
KILL_GRACE_S = 0.15


@pytest.mark.slow
def test_plc_killed_and_restarted_mid_run(tmp_path):
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=RATE, parts=10_000)
    script = write_script(tmp_path / "script.json", ["no", "yes"], cycle=True)
    run, _ = start_line(line_config(tmp_path, port), script)
    service = run.service
    try:
        _wait(lambda: len(plc.triggers()) >= 10, 20, "parts before the kill")
        killed_at = time.monotonic()  # the stand-in stamps its events with the same monotonic clock
        plc.kill()
        _wait(lambda: not service.line.link.connected, 5, "the link to notice")
        status = service.health.snapshot()
        assert not status.healthy and any("PLC link down" in p for p in status.problems), status.problems
        time.sleep(1.0)
        plc2 = Plc(port, tmp_path / "plc2.jsonl")
        plc2.start(rate=RATE, parts=10, first_id=1000, start_delay=0.2)
        _wait(plc2.done, 30, "the restarted PLC's parts")
        _wait(lambda: len(plc2.result_writes()) >= 10, 10, "the restarted PLC's decisions")
        time.sleep(1.0)
        assert service.line.link.connected and service.line.link.stats.disconnects >= 1
        problems = service.health.snapshot().problems
        assert not any("PLC link down" in p for p in problems), problems
        missed = service.line.link.stats.missed_ejections  # rejects due at the ejector during the outage
        assert (missed > 0) == any("passed the ejector while the PLC link was down" in p for p in problems)
    finally:
        run.stop()
        plc.kill()
        if "plc2" in locals():
            plc2.kill()
    triggered = {t["part_id"] for t in plc.triggers()} | {t["part_id"] for t in plc2.triggers()}
    # A trigger the PLC raised just before it died may never have been read: the station polls the
    # input every poll_ms, and a dead PLC's input is gone. Such a part cannot get a decision; every
    # trigger raised earlier than that must get exactly one.
    unreadable = {t["part_id"] for t in plc.triggers() if t["t"] > killed_at - KILL_GRACE_S}
    with _journal(tmp_path) as journal:
        decided = [d.part_id for d in _decisions(journal)]
    assert len(decided) == len(set(decided)), "a trigger has more than one decision"
    assert set(decided) <= triggered, "a decision for no trigger"
    assert triggered - set(decided) <= unreadable, "a trigger read by the station has no decision"


@pytest.mark.slow
def test_camera_unplugged_while_triggers_keep_coming_gives_missed_results(tmp_path):
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=RATE, parts=25)
    script = write_script(tmp_path / "script.json", ["no"])
    run, source = start_line(line_config(tmp_path, port, failsafe="hold"), script)
    try:
        _wait(lambda: len(plc.triggers()) >= 5, 20, "parts with the camera on")
        source.down = True
        _wait(lambda: len(plc.triggers()) >= 15, 20, "parts with the camera off")
        source.down = False
        _wait(plc.done, 20, "every part")
        _wait(lambda: len(plc.result_writes()) >= 25, 10, "every decision")
    finally:
        run.stop()
        plc.kill()
    with _journal(tmp_path) as journal:
        decisions = _decisions(journal)
    assert len(decisions) == 25 and len({d.part_id for d in decisions}) == 25
    missed = [d for d in decisions if d.decision_source == "failsafe_missed_frame"]
    assert len(missed) >= 5, [d.decision_source for d in decisions]
    for d in missed:
        assert d.action == "hold" and d.image_path == "" and "no frame" in d.reason
    assert sum(d.decision_source == "vlm" for d in decisions) >= 5
    assert all(w["decision"] == DECISION_CODES["hold"] for w in plc.result_writes()
               if w["source"] == SOURCE_CODES["failsafe_missed_frame"])


@pytest.mark.slow
def test_full_disk_gives_minimal_records_and_no_crash(tmp_path, monkeypatch):
    real = journal_mod.write_durable
    full = {"on": False}

    def maybe_full(path, data):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(journal_mod, "write_durable", maybe_full)
    real_open = Journal.open_part
    rows_full = {"on": False}

    def open_part(self, **kw):  # a disk so full that not even the part's row fits
        if rows_full["on"]:
            raise journal_mod.JournalFullError("database or disk is full (test)")
        return real_open(self, **kw)

    monkeypatch.setattr(Journal, "open_part", open_part)
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=RATE, parts=20)
    script = write_script(tmp_path / "script.json", ["no"])
    run, _ = start_line(line_config(tmp_path, port), script)
    try:
        _wait(lambda: len(plc.triggers()) >= 5, 20, "parts before the disk fills")
        full["on"] = True
        _wait(lambda: len(plc.triggers()) >= 9, 20, "parts on a full disk")
        rows_full["on"] = True
        _wait(lambda: len(plc.triggers()) >= 11, 20, "parts on a disk without room for a row")
        rows_full["on"] = False
        full["on"] = False
        _wait(plc.done, 20, "every part")
        _wait(lambda: len(plc.result_writes()) >= 20, 10, "every decision")
        assert run.thread.is_alive()
    finally:
        run.stop()
        plc.kill()
    with _journal(tmp_path) as journal:
        decisions = _decisions(journal)
    assert len(decisions) == 20
    minimal = [d for d in decisions if d.decision_source == "failsafe_disk_full"]
    assert len(minimal) >= 4, [d.decision_source for d in decisions]
    for d in minimal:
        assert d.action == "reject" and d.image_path == "" and any("minimal record" in p for p in d.problems)
    assert decisions[-1].decision_source == "vlm" and decisions[-1].image_path  # recovered once there is room
    rowless = [d for d in minimal if "part not journaled" in d.reason]  # journaled later, when there was room
    assert rowless and all("database or disk is full" in d.reason for d in rowless)
    # the PLC got them at once, under the seq the line gave them at the trigger (their rows came later)
    written = {w["seq"]: w for w in plc.result_writes()}
    assert all(written[d.seq]["source"] == SOURCE_CODES["failsafe_disk_full"] for d in rowless)
    assert not any(w["seq"] == 0 for w in plc.result_writes())


@pytest.mark.slow
def test_encoder_ejector_fires_when_the_part_has_travelled_its_distance(tmp_path):
    parts = 15
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=RATE, parts=parts)  # the conveyor's encoder advances 1000 counts per part
    cfg = line_config(tmp_path, port, deadline_ms=300, counter=True)
    cfg["plc"]["modbus"]["ejector"] = {"coil": REJECT_COIL, "pulse_ms": 60, "encoder_register": ENCODER_HR,
                                       "distance_counts": 3000}
    script = write_script(tmp_path / "script.json", ["yes", "no", "no"], cycle=True)
    run, _ = start_line(cfg, script)
    try:
        _wait(plc.done, 30, "the PLC's parts")
        _wait(lambda: len(plc.result_writes()) >= parts, 10, "every decision")
        time.sleep(0.5)
    finally:
        run.stop()
        plc.kill()
    triggers = plc.triggers()
    with _journal(tmp_path) as journal:
        action = {d.part_id: d.action for d in _decisions(journal)}
    # A part reaches the ejector 3000 counts on, i.e. when the third part after it is presented.
    due = [triggers[k + 3]["t"] for k, t in enumerate(triggers[:-3]) if action[t["part_id"]] == "reject"]
    pulses = plc.pulses()
    assert len(due) >= 3 and len(pulses) == len(due), (len(pulses), len(due))
    for (rise, _), t_due in zip(pulses, due, strict=True):
        assert 0 <= (rise - t_due) * 1000 <= TOLERANCE_MS


@pytest.mark.slow
@needs_llama
def test_the_tiny_model_slowed_past_the_deadline_on_the_line(tmp_path, tiny_gguf_dir):
    """The real model path (llama.cpp in the inference worker) with every 3rd call slowed by 1.5 s:
    the same guarantees as with the scripted model."""
    from adfm.appliance.inspection.worker import BackendSpec

    parts = 30
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=RATE, parts=parts)
    cfg = line_config(tmp_path, port, deadline_ms=1000, delay_ms=1200)
    cfg["model"].update(dir=str(tiny_gguf_dir), max_tokens=24)
    backend = BackendSpec("tests.appliance_fakes:make_slowed_backend",
                          {"model_dir": str(tiny_gguf_dir), "slow_every": 3, "slow_s": 1.5, "check_hashes": False})
    run, _ = start_line(cfg, None, backend=backend)
    try:
        _wait(plc.done, 60, "the PLC's parts")
        _wait(lambda: len(plc.result_writes()) >= parts, 20, "every decision")
        time.sleep(1.5)
    finally:
        run.stop()
        plc.kill()
    triggers = {t["part_id"]: t["t"] for t in plc.triggers()}
    with _journal(tmp_path) as journal:
        decisions = _decisions(journal)
        revised = [d for d in decisions if len(journal.revisions(d.seq)) == 2]
    assert sorted(d.part_id for d in decisions) == sorted(triggers)
    assert all(d.latency_ms["trigger_to_decision"] <= 1000 + TOLERANCE_MS for d in decisions)
    assert any(d.decision_source == "failsafe_timeout" for d in decisions) and revised
    assert all(r.model_id and r.prompt_version for r in decisions)
    rejects = sorted(triggers[d.part_id] for d in decisions if d.action == "reject")
    assert len(plc.pulses()) == len(rejects)


class _Ballast:
    """Keeps a filesystem full: a thread tops up a ballast file whenever anything freed room."""

    def __init__(self, folder) -> None:
        import threading

        self.path = folder / "ballast"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self.path, "ab", buffering=0) as f:
            while not self._stop.is_set():
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass
                self._stop.wait(0.02)

    def remove(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.path.unlink()


@pytest.mark.slow
def test_a_really_full_filesystem(tmp_path):
    """The journal on a real 8 MB tmpfs filled to the last byte while parts keep coming."""
    import subprocess

    state = tmp_path / "state"
    state.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(state)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a tmpfs")
    try:
        port = free_port()
        plc = Plc(port, tmp_path / "plc.jsonl")
        plc.start(rate=RATE, parts=25)
        cfg = line_config(tmp_path, port)
        cfg["retention"] = {"min_free_mb": 0}
        run, _ = start_line(cfg, write_script(tmp_path / "script.json", ["no"]), noise=True)
        try:
            _wait(lambda: len(plc.triggers()) >= 5, 20, "parts before the disk fills")
            ballast = _Ballast(state)
            _wait(lambda: len(plc.triggers()) >= 15, 20, "parts on a full disk")
            ballast.remove()
            _wait(plc.done, 20, "every part")
            _wait(lambda: len(plc.result_writes()) >= 25 and not run.service.line.controller.unjournaled, 20,
                  "every decision journaled")
            assert run.thread.is_alive(), "the service must not stop on a full disk"
        finally:
            run.stop()
            plc.kill()
        with _journal(tmp_path) as journal:
            decisions = _decisions(journal)
        assert sorted(d.part_id for d in decisions) == sorted(t["part_id"] for t in plc.triggers())
        full = [d for d in decisions if d.decision_source == "failsafe_disk_full"]
        assert full and all(d.action == "reject" and d.image_path == "" for d in full)
        assert decisions[-1].image_path and decisions[-1].decision_source == "vlm"
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
