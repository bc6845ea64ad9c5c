"""The Modbus handshake and part accounting across outages, against the PLC stand-in (pymodbus's
server in its own process, real TCP; a TCP relay for network cuts): a PLC that scans every 50 ms
and acks slowly takes every result once in seq order; a PLC restart and a network cut leave no
count without exactly one journaled decision; a rogue writer's bursts are refused and alarmed;
recipe requests are answered; in reject-bit mode the station drives no coil."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("pymodbus")

from adfm.appliance.config.line import DECISION_CODES, SOURCE_CODES, ModbusSection
from adfm.appliance.journal.store import Journal
from adfm.appliance.modes.line import LineTrigger
from adfm.appliance.plc.modbus import FLAG_MISSED, FLAG_REJECT, STATUS_ONLINE, Inputs, ModbusLink, PlcError
from adfm.appliance.system.health import Health
from tests.appliance_fakes import write_script
from tests.line_support import CutProxy, Plc, free_port, line_config, start_line
from tests.plc_standin import REQUEST_HR, RESULT_HR

SCAN = ("--scan-ms", "50", "--high-ms", "20")


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _decisions(tmp_path) -> list:
    with Journal(tmp_path / "state", "st1") as journal:
        return [journal.revisions(s)[0] for s in range(1, journal.last_seq() + 1)]


@pytest.mark.slow
def test_a_slow_acking_plc_takes_every_result_once_in_seq_order_and_times_its_own_ejector(tmp_path):
    parts = 40
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    # 8 parts/s; the PLC shows 2 slots, scans every 50 ms and acks 250 ms after taking: it takes at
    # most 2 results per ~300 ms (6.7/s), so results pile up and must be held, not overwritten
    plc.start(rate=8, parts=parts, extra=(*SCAN, "--ack-ms", "250", "--recipes", "1,2"))
    cfg = line_config(tmp_path, port, deadline_ms=500, handshake={"slots": 2, "reject": "bit"},
                      recipes=[{"name": "a", "code": 1}, {"name": "b", "code": 2}])
    # every 3rd part answered after the deadline: its fail-safe comes after later parts' verdicts
    script = write_script(tmp_path / "script.json", ["no", "yes", "late"], late_s=0.7, cycle=True)
    run, _ = start_line(cfg, script)
    link = run.service.line.link
    try:
        _wait(plc.done, 60, "the PLC to present every part")
        _wait(lambda: len(plc.taken()) >= parts, 60, "the PLC to take every result")
        time.sleep(0.5)
        stats = link.status()
    finally:
        run.stop()
        plc.kill()
    by_count = {t["count"]: t for t in plc.triggers()}
    decisions = _decisions(tmp_path)
    taken = plc.taken()
    assert [r["seq"] for r in taken] == list(range(1, parts + 1)), "every result once, in seq order"
    assert len(decisions) == parts and sorted(r["count"] for r in taken) == list(range(1, parts + 1))
    assert stats["fifo_max"] > 2, "results were held while the PLC's slots were full"
    for r, d in zip(taken, decisions, strict=True):
        t = by_count[r["count"]]  # the PLC's count, echoed with the result
        if d.part_id.isdigit():  # read with its own id, count and recipe, in one request
            assert (d.part_id, r["part_id"]) == (t["part_id"], int(t["part_id"])), (r, d)
            assert d.recipe == {1: "a", 2: "b"}[t["recipe"]], (d.recipe, t)
        else:  # counted in the same poll as the next part (a late poll): the registers held the next one's
            assert d.part_id.endswith(f"-count{r['count']}") and r["part_id"] == 0, (r, d)
        assert r["decision"] == DECISION_CODES[d.action] and r["source"] == SOURCE_CODES[d.decision_source]
        assert bool(r["flags"] & FLAG_REJECT) == (d.action == "reject") and not r["flags"] & FLAG_MISSED
        assert r["status"] & STATUS_ONLINE
    assert sum(d.part_id.isdigit() for d in decisions) >= parts - 5
    assert any(d.action == "reject" for d in decisions) and any(d.action == "pass" for d in decisions)
    coil_writes = [e for e in plc.events() if e["ev"] == "write" and e["fc"] in (5, 15)]
    assert coil_writes == [], "reject: bit — the station drives no coil"


@pytest.mark.slow
def test_handshake_with_the_station_timed_pulse_pulses_every_rejected_part_in_its_window(tmp_path):
    parts, delay_ms = 15, 700.0
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=5, parts=parts, extra=(*SCAN, "--ack-ms", "20"))
    run, _ = start_line(line_config(tmp_path, port, deadline_ms=500, delay_ms=delay_ms, handshake={}),
                        write_script(tmp_path / "s.json", ["yes", "no"], cycle=True))
    try:
        _wait(plc.done, 30, "every part")
        _wait(lambda: len(plc.taken()) >= parts, 20, "every result taken")
        time.sleep(delay_ms / 1000 + 0.3)
        missed = run.service.line.link.stats.missed_ejections
    finally:
        run.stop()
        plc.kill()
    triggers = {t["part_id"]: t["t"] for t in plc.triggers()}
    decisions = _decisions(tmp_path)
    rejects = sorted(triggers[d.part_id] for d in decisions if d.action == "reject")
    rises = [rise for rise, fall in plc.pulses() if fall is not None]
    # a starved machine may find a part past its ejector window: never pulsed late, counted missed
    assert len(rejects) >= 7 and len(rises) + missed == len(rejects) and missed <= 2, (rises, rejects, missed)
    if not missed:
        for rise, t in zip(rises, rejects, strict=True):  # the station sees the trigger up to a poll late
            assert delay_ms <= (rise - t) * 1000 <= delay_ms + 200, (rise - t)
    assert [r["seq"] for r in plc.taken()] == [d.seq for d in decisions]
    assert [bool(r["flags"] & FLAG_REJECT) for r in plc.taken()] == [d.action == "reject" for d in decisions]


@pytest.mark.slow
def test_a_plc_restart_and_a_network_cut_leave_no_count_without_exactly_one_decision(tmp_path):
    port = free_port()
    proxy = CutProxy(port)
    plc = Plc(port, tmp_path / "plc1.jsonl")
    plc.start(rate=10, parts=10_000, extra=(*SCAN, "--ack-ms", "20"))
    cfg = line_config(tmp_path, proxy.port, deadline_ms=400, handshake={"reject": "bit"})
    cfg["plc"]["modbus"]["reconnect_max_s"] = 0.5
    run, _ = start_line(cfg, write_script(tmp_path / "script.json", ["no", "yes"], cycle=True))
    link = run.service.line.link
    plc2 = Plc(port, tmp_path / "plc2.jsonl")
    try:
        _wait(lambda: len(plc.triggers()) >= 10, 20, "parts before the cut")
        proxy.cut(2.0)  # the PLC keeps counting parts the station cannot see
        _wait(lambda: not link.connected, 5, "the link to notice the cut")
        assert not run.service.health.snapshot().healthy
        _wait(lambda: link.connected, 10, "the link back after the cut")
        seen = len(plc.triggers())
        _wait(lambda: len(plc.triggers()) >= seen + 10, 20, "parts after the cut")
        killed_at = time.monotonic()
        plc.kill()
        _wait(lambda: not link.connected, 5, "the link to notice the PLC gone")
        restart_wall = time.time()
        proxy.cut(60)  # the restarted PLC counts parts before the station reaches it again:
        plc2.start(rate=10, parts=30, first_id=1000, start_delay=0.0, extra=(*SCAN, "--ack-ms", "20", "--no-wait"))
        proxy.cut(1.5)  # unreachable from before it listens until 1.5 s after
        _wait(plc2.done, 30, "the restarted PLC's parts")
        _wait(lambda: link.connected and not run.service.line.controller.parts and link.stats.fifo == 0, 20,
              "every decision taken by the PLC")
        stats = link.status()
    finally:
        run.stop()
        plc.kill()
        plc2.kill()
        proxy.close()
    decisions = _decisions(tmp_path)
    counted: dict[tuple[int, int], list] = {}  # (PLC instance, trigger count) → decisions
    for d in decisions:
        if d.part_id.isdigit():
            pid = int(d.part_id)
            key = (2, pid - 999) if pid >= 1000 else (1, pid)  # the stand-in's ids: first_id + count - 1
        else:
            assert "-count" in d.part_id, d.part_id
            key = (2 if d.triggered_at.timestamp() >= restart_wall else 1, int(d.part_id.rsplit("-count", 1)[1]))
        counted.setdefault(key, []).append(d)
    doubles = {k: [d.seq for d in v] for k, v in counted.items() if len(v) != 1}
    assert not doubles, f"counts with more than one decision: {doubles}"
    first = sorted(c for i, c in counted if i == 1)
    last_readable = sum(t["t"] <= killed_at - 0.15 for t in plc.triggers())  # a dead PLC's last count may be unread
    assert first == list(range(1, len(first) + 1)) and last_readable <= len(first) <= len(plc.triggers())
    assert sorted(c for i, c in counted if i == 2) == list(range(1, 31)), "every count of the restarted PLC"
    for instance in (1, 2):  # journaled in count order: missed parts before the parts after them
        seqs = [counted[(instance, c)][0].seq for c in sorted(c for i, c in counted if i == instance)]
        assert seqs == sorted(seqs), f"PLC {instance}: seqs out of count order"
    missed = {k: v[0] for k, v in counted.items() if v[0].decision_source == "missed_link"}
    assert sum(i == 1 for i, _ in missed) >= 5 and sum(i == 2 for i, _ in missed) >= 5, sorted(missed)
    for d in missed.values():
        assert d.action == "reject" and d.verdict == "review" and "link was down" in d.reason
    assert any("PLC restarted" in d.reason for (i, _), d in missed.items() if i == 2)
    assert stats["missed_link_parts"] == len(missed) and stats["refused_counts"] == 0
    taken = [r["seq"] for r in plc2.taken()]
    assert taken == sorted(set(taken)), "the restarted PLC took results once, in seq order"
    assert {counted[(2, c)][0].seq for c in range(1, 31)} <= set(taken)
    flags = {r["seq"]: r["flags"] for r in plc2.taken()}
    assert all(flags[d.seq] & FLAG_MISSED and not flags[d.seq] & FLAG_REJECT
               for (i, _), d in missed.items() if i == 2 and d.seq in flags)


@pytest.mark.slow
def test_a_rogue_writers_bursts_are_refused_journaled_and_alarmed(tmp_path):
    parts = 25
    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=5, parts=parts, extra=("--rogue-after", "5", "--rogue-step", "64", "--rogue-bursts", "40",
                                          "--rogue-s", "2", "--high-ms", "20"))
    run, _ = start_line(line_config(tmp_path, port, counter=True), write_script(tmp_path / "s.json", ["no"]))
    health = run.service.health
    try:
        _wait(lambda: sum(e["ev"] == "rogue" for e in plc.events()) >= 40, 30, "the rogue bursts")
        time.sleep(0.3)
        status = health.snapshot()
        _wait(plc.done, 30, "every part")
        stats = run.service.line.link.stats
        _wait(lambda: stats.triggers + stats.refused_counts == parts + 64 * 40 and not run.service.line.controller.parts
              and len(plc.result_writes()) >= stats.triggers, 20, "every count decided or refused")
        link = run.service.line.link.status()
    finally:
        run.stop()
        plc.kill()
    assert not status.healthy and any("implausible trigger counter" in p for p in status.problems), status.problems
    decisions = _decisions(tmp_path)
    triggers = {t["part_id"] for t in plc.triggers()}
    # every count is decided or refused; a real part counted in the same poll as a rogue +64 is
    # refused with it (the alarm says so) — a few at most, unless the machine starves the polling
    assert len(decisions) + link["refused_counts"] == parts + 64 * 40
    assert parts - 10 <= len(decisions) <= parts, len(decisions)
    assert all(d.part_id in triggers or "-count" in d.part_id for d in decisions)
    assert link["refused_counts"] >= 64 * 40 and link["refused_advances"] >= 20
    with Journal(tmp_path / "state", "st1") as journal:
        refused = [c for c in journal.commands() if c["command"] == "parts"]
    assert len(refused) == link["refused_advances"] and not any(c["accepted"] for c in refused)
    assert sum(int(c["argument"]) for c in refused) == link["refused_counts"]
    assert all("refused, not decided as parts" in c["detail"] and c["client"].startswith("plc ") for c in refused)


@pytest.mark.slow
def test_a_recipe_change_request_is_answered_done_or_failed_and_journaled(tmp_path):
    from pymodbus.client import ModbusTcpClient

    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=5, parts=0)
    cfg = line_config(tmp_path, port, handshake={}, recipes=[{"name": "a", "code": 1}, {"name": "b", "code": 2}])
    run, _ = start_line(cfg, write_script(tmp_path / "s.json", ["no"]))
    program = ModbusTcpClient("127.0.0.1", port=port)  # the PLC program writing its own registers
    assert program.connect()

    def answer() -> list[int]:  # active recipe code, heartbeat, answer id, answer
        return list(program.read_holding_registers(RESULT_HR + 3, count=4, device_id=1).registers)

    try:
        program.write_registers(REQUEST_HR, [2, 1], device_id=1)  # code 2, request id 1
        _wait(lambda: (a := answer())[2:] == [1, 1] and a[0] == 2, 10, "recipe b done and active")
        program.write_registers(REQUEST_HR, [9, 2], device_id=1)  # no recipe has code 9
        _wait(lambda: answer()[2:] == [2, 2], 10, "the request failed")
        assert answer()[0] == 2, "a failed request leaves the active recipe"
        assert run.service.line.controller.active_recipe == "b"
    finally:
        program.close()
        run.stop()
        plc.kill()
    with Journal(tmp_path / "state", "st1") as journal:
        cmds = [(c["command"], c["argument"], c["accepted"]) for c in journal.commands()]
    assert cmds == [("recipe", "b", True), ("recipe", "9", False)]


class _FlakyPlc:
    """The link's client calls on a PLC whose network can be cut (`down`); records writes."""

    def __init__(self) -> None:
        self.down = False
        self.counter = 0
        self.writes: list[tuple] = []
        self.heartbeat = 0

    def _check(self) -> None:
        if self.down:
            raise PlcError("network cut (test)")

    def connect(self) -> None:
        self._check()

    def close(self) -> None: ...

    ack = 0

    def read_inputs(self) -> Inputs:
        self._check()
        return Inputs(self.counter, None, 0, self.ack)

    def read_trigger(self) -> int:
        return self.read_inputs().level

    def read_registers(self, address: int, count: int) -> list[int]:
        self._check()
        return [self.heartbeat] * count

    def write_registers(self, address: int, values: list[int]) -> None:
        self._check()
        self.writes.append(("reg", address, list(values)))
        if address == RESULT_HR + 4:
            self.heartbeat = values[0]

    def write_coil(self, address: int, value: bool) -> None:
        self._check()
        self.writes.append(("coil", address, value))


def test_a_coil_high_when_the_network_is_cut_is_driven_low_first_thing_on_reconnect():
    cfg = ModbusSection.model_validate({
        "host": "127.0.0.1", "poll_ms": 5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.05,
        "trigger": {"table": "counter", "address": 12}, "result": {"base": RESULT_HR, "heartbeat_ms": 20},
        "ejector": {"coil": 8, "pulse_ms": 400, "delay_ms": 50, "window_ms": 50}})
    plc = _FlakyPlc()
    link = ModbusLink(cfg, lambda t: None, client=plc)  # type: ignore[arg-type]
    link.start()
    try:
        link.decided(1, "reject", "vlm", LineTrigger(time.monotonic(), time.time()))
        _wait(lambda: ("coil", 8, True) in plc.writes, 5, "the pulse")
        plc.down = True  # cut while the coil is high (a 400 ms pulse)
        _wait(lambda: not link.connected, 5, "the link to notice")
        n = len(plc.writes)
        plc.down = False
        _wait(lambda: link.connected, 5, "the link back")
        time.sleep(0.05)
    finally:
        link.stop()
    assert plc.writes[n] == ("coil", 8, False), plc.writes[n:]


def test_counter_advances_beyond_the_plausible_rate_are_refused_and_alarmed():
    cfg = ModbusSection.model_validate({
        "host": "127.0.0.1", "poll_ms": 5, "trigger": {"table": "counter", "address": 12,
                                                       "max_parts_per_s": 20, "max_burst": 2},
        "result": {"base": RESULT_HR, "heartbeat_ms": 20}})
    plc = _FlakyPlc()
    health = Health("st1")
    triggers: list[LineTrigger] = []
    refused: list[tuple[int, str]] = []
    link = ModbusLink(cfg, triggers.append, health, client=plc,  # type: ignore[arg-type]
                      on_refused=lambda n, why: refused.append((n, why)))
    link.start()
    try:
        _wait(lambda: link.connected and link._count is not None, 5, "the baseline")
        plc.counter = 1  # a real part
        _wait(lambda: len(triggers) == 1, 5, "the part")
        plc.counter = 65  # +64 in one poll: no line presents that
        _wait(lambda: refused, 5, "the refusal")
        plc.counter = 66
        _wait(lambda: len(triggers) == 2, 5, "the next real part")
    finally:
        link.stop()
    assert [n for n, _ in refused] == [64] and "refused, not decided as parts" in refused[0][1]
    assert [t.count for t in triggers] == [1, 66]
    assert any("implausible trigger counter" in p for p in health.snapshot().problems)


def test_the_fifo_shows_results_in_trigger_order_and_releases_them_only_on_ack():
    cfg = ModbusSection.model_validate({"host": "127.0.0.1", "poll_ms": 5, "mode": "handshake", "reject": "bit",
                                        "handshake": {"inputs": 10, "outputs": RESULT_HR, "slots": 2}})
    plc = _FlakyPlc()
    triggers: list[LineTrigger] = []
    link = ModbusLink(cfg, triggers.append, client=plc)  # type: ignore[arg-type]

    def blocks() -> list[list[int]]:  # the seqs in the slots of each block written
        out = []
        for kind, address, values in plc.writes:
            if kind == "reg" and address == RESULT_HR and len(values) > 8:
                out.append([values[8 + 8 * k] for k in range(values[2])])
        return out

    link.start()
    try:
        _wait(lambda: link.connected and link._count is not None, 5, "the baseline")
        plc.counter = 3  # three parts in one poll
        _wait(lambda: len(triggers) == 3, 5, "the parts")
        link.decided(12, "pass", "gate", triggers[1])  # decided before the part triggered first
        link.decided(13, "reject", "vlm", triggers[2])
        time.sleep(0.1)
        assert all(b == [] for b in blocks()), "nothing shown before the first part is decided"
        link.decided(11, "reject", "failsafe_timeout", triggers[0])
        _wait(lambda: blocks() and blocks()[-1] == [11, 12], 5, "the two oldest")
        time.sleep(0.1)
        assert blocks()[-1] == [11, 12] and link.stats.fifo == 3  # 13 held: the slots are full
        plc.ack = 13  # not shown yet: releases nothing
        time.sleep(0.1)
        assert blocks()[-1] == [11, 12]
        plc.ack = 12  # the PLC took 11 and 12
        _wait(lambda: blocks()[-1] == [13], 5, "13 after the ack")
        plc.ack = 13
        _wait(lambda: blocks()[-1] == [], 5, "an empty FIFO")
    finally:
        link.stop()
    shown = [b for b in blocks() if b]
    assert all(b == sorted(b) for b in shown) and [s for b in shown for s in b][:1] == [11]
    assert link.stats.results_acked == 3 and link.stats.results_written == 3
    assert [t.count for t in triggers] == [1, 2, 3]


@pytest.mark.slow
def test_plc_probe_reads_both_handshake_blocks(tmp_path):
    import json
    import subprocess
    import sys

    import yaml

    from tests.line_support import REPO

    port = free_port()
    plc = Plc(port, tmp_path / "plc.jsonl")
    plc.start(rate=0, parts=0, recipe=2)
    try:
        path = tmp_path / "station.yaml"
        path.write_text(yaml.safe_dump(line_config(tmp_path, port, handshake={"reject": "bit"},
                                                   recipes=[{"name": "a", "code": 1}, {"name": "b", "code": 2}])))
        cmd = [sys.executable, "-m", "adfm.appliance.cli", "plc-probe", str(path)]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        plc.kill()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["mode"] == "handshake" and report["trigger"] == {"table": "counter", "address": 12, "count": 0}
    assert report["recipe"] == {"code": 2, "name": "b"}
    assert report["station_side"]["status"]["online"] is False and report["station_side"]["slots"] == []
    assert report["plc_side"] == {"ack": 0, "recipe_request": {"code": 0, "id": 0}}
    writes = [(e["fc"], e["address"]) for e in plc.events() if e["ev"] == "write"]
    assert writes == [(6, 13)], writes  # the stand-in's own recipe code; the probe writes nothing unless asked
