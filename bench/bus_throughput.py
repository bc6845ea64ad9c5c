"""Result-bus throughput: results/s through the appliance's ZeroMQ bus, with and without CURVE.

What runs is the product's own code on both ends, on loopback TCP:
- the station side: a `Journal` and a `ResultBus` (bus thread, PUB + ROUTER, the service's
  defaults: SNDHWM 10,000, status every 5 s, 2 ZeroMQ I/O threads), results handed over with
  `ResultBus.publish` exactly as the pipeline does after `Journal.complete`;
- subscribers: `StationClient` (gap-free delivery, gap filling by replay) in separate processes,
  1 or 10 of them, each with its own CURVE key pair admitted the way `adfm-appliance keys --admit`
  does it;
- replay: a subscriber that missed everything catching up with `StationClient(from_seq=1)`, which
  pages through the station's journal over the control socket (the bus's replay path).

The results are `InspectionResult`s as a line station with a VLM writes them (a parsed
three-stage answer with two boxes, gate score, per-stage latencies; about 2 kB of JSON), stored
in the journal first (`Journal.open_part` + `Journal.complete`; no image files: images never
travel on the bus) and published as `complete` returned them. The journal is filled once per run
with SQLite's fsync turned off on the filling connection only (a fixture: durability is not what
is measured; the bus reads through its own connection as in the station).

Each subscriber checks that it got seq 1..n exactly once and in order and counts how many came
live and how many it had to fetch by replay (drops on PUB). results/s = results received by the
slowest subscriber / wall time from the first `publish` call to that subscriber's last result
(one clock: CLOCK_MONOTONIC, shared by the processes). Replay: n / time from constructing the
client to its last result. Configurations are interleaved within each round (order rotated) and
repeated; the JSON holds every round and the median with min/max.

Run: nice -n 15 python bench/bus_throughput.py  (70-90 s on 2 cores; --n, --rounds, --subscribers to change)
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

STATION = "line1"
PROMPT_VERSION = "multi-stage-v1"
#: a model answer in the three-stage format, as a fine-tuned model writes it (grid pixels)
ANSWER = (
    "<think>The housing's sealing face is uniform except for a bright irregular mark near the lower "
    "left edge and a dark spot at the upper right. Suspicious regions: "
    '[{"bbox_2d": [112, 380, 168, 432], "label": "scratch"}, '
    '{"bbox_2d": [540, 96, 590, 140], "label": "dent"}]</think>'
    "<rethink>Region 1 is a linear scratch about 40 px long, deeper than the machining marks around "
    "it. Region 2 is a reflection of the fixture clamp, not a dent; the reference shows the same "
    "highlight.</rethink><answer>yes</answer>"
)
LIVE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Config:
    mode: str  # "live" or "replay"
    curve: bool
    subscribers: int
    io_threads: int | None = None  # the bus's ZeroMQ I/O threads; None: the station's default

    @property
    def name(self) -> str:
        io = "" if self.io_threads is None else f"-io{self.io_threads}"
        return f"{self.mode}-{'curve' if self.curve else 'plain'}-{self.subscribers}sub{io}"


# ---- the results and the journal --------------------------------------------------------------


def make_result(seq: int, part_id: str, captured_at: datetime):
    """A result as the pipeline builds it from a VLM answer (see adfm.appliance.inspection.core `build_result`)."""
    from adfm.geometry import ModelGrid
    from adfm.protocol import parse_response
    from adfm.schema import Box, InspectionResult, utcnow

    parsed = parse_response(ANSWER, ModelGrid.for_image(1280, 960), PROMPT_VERSION)
    stamp = captured_at.strftime("%Y/%m/%d")
    return InspectionResult(
        station=STATION, seq=seq, part_id=part_id, camera="cam0", frame_number=seq, captured_at=captured_at,
        verdict="fail" if parsed.decision else "pass", reason="the model answered yes", decision=parsed.decision,
        boxes=[Box.from_xyxy(b, lab) for b, lab in zip(parsed.boxes, parsed.labels, strict=True)],
        think=parsed.think, rethink=parsed.rethink, answer=parsed.answer, raw_response=ANSWER,
        format_ok=parsed.format_ok, problems=list(parsed.problems), prompt_version=PROMPT_VERSION,
        model_id="qwen2.5-vl-3b-adfm-q4_k_m-3f2a9c01", image_path=f"images/{stamp}/{seq:09d}.png",
        image_width=1280, image_height=960, gate_score=0.8731, gate_map_path=f"images/{stamp}/{seq:09d}.gate.png",
        latency_ms={"capture": 1.2, "journal": 14.3, "journal_wait": 0.1, "gate": 8.7, "resize": 2.1,
                    "vlm": 1843.2, "model": 1838.9, "parse": 0.2, "total": 1871.4},
        attempts=1, decision_source="vlm", decided_at=utcnow(),
    )


def fill_journal(root: Path, n: int):
    """A station journal holding n done parts; returns (journal, the results as `complete` stored them)."""
    from adfm.appliance.journal.store import Journal

    journal = Journal(root, STATION)
    # The fixture only: this thread's connection skips fsync. The bus thread reads through its own.
    journal._conn().execute("PRAGMA synchronous = OFF")
    stored = []
    for i in range(1, n + 1):
        part = journal.open_part(part_id=f"part-{i:09d}", camera="cam0", triggered_wall=time.time())
        stored.append(journal.complete(make_result(part.seq, part.part_id, part.captured_at)))
    return journal, stored


def make_keys(key_dir: Path, clients: int) -> tuple[Path, Path, list[Path]]:
    """The station's pair and `clients` client pairs, each made in its own folder and admitted by its
    public key, as `adfm-appliance keys` / `client-key` / `keys --admit` do. Returns (server public,
    server secret, client secrets)."""
    from adfm.appliance.bus.keys import admit_client, generate_client_keys, generate_server_keys

    server = generate_server_keys(key_dir / "station")
    secrets = []
    for i in range(clients):
        public, secret = generate_client_keys(key_dir / f"client-{i}", f"sub{i}")
        admit_client(key_dir / "station", f"sub{i}", public)
        secrets.append(secret)
    return server.server_public, server.server_secret, secrets


# ---- subscriber processes ---------------------------------------------------------------------


def _cpu_s() -> float:
    """CPU seconds (user + system) this process has used, all its threads (ZeroMQ's I/O threads too)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _subscriber_main(conn) -> None:
    """A subscriber process: for each command, follow the station with `StationClient` until n results."""
    from adfm.appliance.bus.client import StationClient
    from adfm.appliance.bus.keys import load_client_curve

    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        curve = load_client_curve(cmd["server_key"], cmd["client_secret"]) if cmd["server_key"] else None
        n = cmd["n"]
        cpu_start = _cpu_s()
        t_start = time.monotonic()
        client = StationClient(cmd["publish"], cmd["control"], station=STATION, curve=curve, timeout_s=10.0,
                               from_seq=1 if cmd["mode"] == "replay" else None)
        try:
            client.connect()  # live: subscribes, asks the last seq; replay: also pages the journal in
            conn.send(("ready", time.monotonic()))
            got, expected, out_of_order, t_last = 0, 1, 0, None
            deadline = time.monotonic() + cmd["timeout_s"]
            while got < n and time.monotonic() < deadline:
                for r in client.receive(0.2):
                    out_of_order += r.seq != expected
                    expected = r.seq + 1
                    got += 1
                if got >= n and t_last is None:
                    t_last = time.monotonic()
            conn.send(("done", {
                "received": got, "replayed": client.gaps_filled, "live": got - client.gaps_filled,
                "out_of_order": out_of_order, "last_seq": expected - 1, "t_start": t_start, "t_last": t_last,
                "cpu_s": _cpu_s() - cpu_start,
            }))
        finally:
            client.close()


class Subscribers:
    """A pool of subscriber processes, started once (imports paid once), driven round by round."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_subscriber_main, args=(child,), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


# ---- one measurement --------------------------------------------------------------------------


def run_once(cfg: Config, journal, stored: list, pool: Subscribers, keys, timeout_s: float = LIVE_TIMEOUT_S) -> dict:
    """Publish (live) or replay (replay) len(stored) results to cfg.subscribers subscribers."""
    from adfm.appliance.bus.keys import CLIENTS_DIR, load_server_curve
    from adfm.appliance.bus.server import ResultBus
    from adfm.schema import StationStatus

    n = len(stored)
    server_curve = None
    if cfg.curve:
        server_secret = keys[1]
        server_curve = load_server_curve(server_secret, server_secret.parent / CLIENTS_DIR)
    # The station's status reports the journal's last seq; a station journals each part just before
    # publishing it, so here that is the last seq handed to the bus (all of them for replay).
    handed = [n if cfg.mode == "replay" else 0]

    def status() -> StationStatus:
        return StationStatus(station=STATION, healthy=True, last_seq=handed[0], epoch=journal.epoch)

    bus = ResultBus(STATION, journal, status, publish=["tcp://127.0.0.1:*"], control=["tcp://127.0.0.1:*"],
                    curve=server_curve, **({} if cfg.io_threads is None else {"io_threads": cfg.io_threads}))
    cpu_start = _cpu_s()
    bus.start()
    conns = pool.conns[: cfg.subscribers]
    try:
        for i, c in enumerate(conns):
            c.send({
                "mode": cfg.mode, "publish": bus.bound["publish"][0], "control": bus.bound["control"][0], "n": n,
                "server_key": str(keys[0]) if cfg.curve else None,
                "client_secret": str(keys[2][i]) if cfg.curve else None, "timeout_s": timeout_s,
            })
        for c in conns:
            if not c.poll(30):
                raise RuntimeError(f"{cfg.name}: a subscriber did not connect within 30 s")
            kind, _ = c.recv()
            assert kind == "ready"
        t_first = t_handed = None
        if cfg.mode == "live":
            time.sleep(0.3)  # let the subscriptions reach the PUB socket (a late one replays the start)
            t_first = time.monotonic()
            for r in stored:
                handed[0] = r.seq
                bus.publish(r)
            t_handed = time.monotonic()
        reports = []
        for c in conns:
            if not c.poll(timeout_s + 30):
                raise RuntimeError(f"{cfg.name}: a subscriber did not report within {timeout_s + 30:.0f} s")
            kind, rep = c.recv()
            assert kind == "done"
            reports.append(rep)
    finally:
        bus.stop()
    station_cpu = _cpu_s() - cpu_start
    complete = [r for r in reports if r["t_last"] is not None]
    slowest = min(r["received"] for r in reports)
    if cfg.mode == "live":
        t0 = t_first
        handover_rate = n / (t_handed - t_first)
    else:
        t0 = min(r["t_start"] for r in reports)
        handover_rate = None
    t_end = max(r["t_last"] for r in complete) if len(complete) == len(reports) else None
    wall = (t_end - t0) if t_end is not None else None
    return {
        "published": n if cfg.mode == "live" else 0,
        "journaled": n,
        "received_min": slowest,
        "all_received": all(r["received"] == n and r["out_of_order"] == 0 and r["last_seq"] == n for r in reports),
        "replayed_total": sum(r["replayed"] for r in reports if cfg.mode == "live"),
        "wall_s": wall,
        "results_per_s": (slowest / wall) if wall else None,
        "publish_handover_per_s": handover_rate,
        "bus_thread_published": bus.stats.published,
        # CPU per result, whatever the other load on the machine: where the time goes
        "station_cpu_us_per_result": round(1e6 * station_cpu / n, 2),
        "subscriber_cpu_us_per_result_max": round(1e6 * max(r["cpu_s"] for r in reports) / n, 2),
        "subscribers": [
            {k: rep[k] for k in ("received", "live", "replayed", "out_of_order", "last_seq")} for rep in reports
        ],
    }


# ---- the whole bench --------------------------------------------------------------------------


def _summary(values: list[float]) -> dict:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return {"median": None, "min": None, "max": None, "spread_pct": None, "rounds": 0}
    med = statistics.median(vals)
    return {"median": round(med, 1), "min": round(vals[0], 1), "max": round(vals[-1], 1),
            "spread_pct": round(100 * (vals[-1] - vals[0]) / med, 1), "rounds": len(vals)}


def _default_io_threads() -> int:
    from adfm.appliance.config.station import BusSection

    return int(BusSection.model_fields["io_threads"].default)


def _machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import pydantic
    import zmq

    return {"platform": platform.platform(), "cpu_model": model, "cpus": os.cpu_count(),
            "python": platform.python_version(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "pydantic": pydantic.VERSION, "nice": os.nice(0)}


def run_bench(n: int = 20_000, rounds: int = 5, subscribers: tuple[int, ...] = (1, 10), replay: bool = True,
              out: Path | None = None, command: str = "", io_threads: tuple[int, ...] = ()) -> dict:
    """Measure every configuration `rounds` times, interleaved; write JSON to `out` when given.
    `io_threads`: the bus's ZeroMQ I/O threads to compare, live configurations only (empty: the
    station's default, and names without an `-io<n>` suffix)."""
    load_start = os.getloadavg()
    ios: tuple[int | None, ...] = tuple(io_threads) or (None,)
    configs = [Config("live", curve, s, io) for s in subscribers for io in ios for curve in (False, True)]
    if replay:
        configs += [Config("replay", False, 1, ios[0]), Config("replay", True, 1, ios[0])]
    with tempfile.TemporaryDirectory(prefix="adfm-bus-bench-") as tmp:
        t = time.monotonic()
        journal, stored = fill_journal(Path(tmp) / "journal", n)
        fill_s = time.monotonic() - t
        # The n results held here for publishing are the fixture's, not the station's heap: keep
        # Python's cyclic GC from walking them on every collection (a station holds a few at a time).
        gc.freeze()
        keys = make_keys(Path(tmp) / "keys", max(subscribers))
        pool = Subscribers(max(subscribers))
        runs: dict[str, list[dict]] = {c.name: [] for c in configs}
        try:
            for rnd in range(rounds):
                shift = rnd % len(configs)
                for cfg in configs[shift:] + configs[:shift]:
                    rec = run_once(cfg, journal, stored, pool, keys)
                    rec["round"] = rnd
                    runs[cfg.name].append(rec)
                    print(f"round {rnd} {cfg.name:22s} {rec['results_per_s'] or 0:10.0f} results/s  "
                          f"received {rec['received_min']}/{n}  replayed {rec['replayed_total']}  "
                          f"cpu us/result station {rec['station_cpu_us_per_result']} "
                          f"subscriber {rec['subscriber_cpu_us_per_result_max']}",
                          file=sys.stderr, flush=True)
        finally:
            pool.close()
            journal.close()
            gc.unfreeze()
    result_bytes = len(stored[0].model_dump_json().encode())
    summary = {}
    for cfg in configs:
        recs = runs[cfg.name]
        summary[cfg.name] = {
            "results_per_s": _summary([r["results_per_s"] for r in recs]),
            "all_received_every_round": all(r["all_received"] for r in recs),
            "replayed_total": sum(r["replayed_total"] for r in recs),
            "station_cpu_us_per_result": _summary([r["station_cpu_us_per_result"] for r in recs]),
            "subscriber_cpu_us_per_result_max": _summary([r["subscriber_cpu_us_per_result_max"] for r in recs]),
        }
    def ratio(over: str, under: str) -> dict:
        """Per-round ratio of two configurations' results/s, in %, summarized."""
        return _summary([100 * a["results_per_s"] / b["results_per_s"]
                         for a, b in zip(runs[over], runs[under], strict=True)
                         if a["results_per_s"] and b["results_per_s"]])

    ratios = {}
    for s in subscribers:
        for io in ios:
            plain, curve = Config("live", False, s, io).name, Config("live", True, s, io).name
            ratios[f"{curve}_over_{plain}"] = ratio(curve, plain)
        for curve in (False, True):
            for io in ios[1:]:
                ratios[f"{Config('live', curve, s, io).name}_over_io{ios[0]}"] = ratio(
                    Config("live", curve, s, io).name, Config("live", curve, s, ios[0]).name)
    if replay:
        plain, curve = Config("replay", False, 1, ios[0]).name, Config("replay", True, 1, ios[0]).name
        ratios[f"{curve}_over_{plain}"] = ratio(curve, plain)
    load_end = [round(v, 2) for v in os.getloadavg()]
    report = {
        "benchmark": "result bus throughput (ZeroMQ PUB/ROUTER, loopback TCP), product ResultBus and StationClient",
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**_machine(), "loadavg_start_end": [[round(v, 2) for v in load_start], load_end]},
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": load_end,
        "params": {"results_per_round": n, "rounds": rounds, "subscribers": list(subscribers),
                   "result_json_bytes": result_bytes, "send_hwm": 10_000, "subscriber_rcvhwm": 100_000,
                   "status_interval_s": 5.0, "station_zmq_io_threads": list(io_threads) or _default_io_threads(),
                   "journal_fill_s": round(fill_s, 2)},
        "method": ("results/s = results received by the slowest subscriber / wall time from the first publish to "
                   "that subscriber's last result (replay: from constructing the client); every subscriber must "
                   "get seq 1..n once each in order; 'replayed' counts results a subscriber fetched from the "
                   "journal instead of live (PUB dropped them at the send high-water mark, or a status announced their "
                   "seq before they arrived); cpu_us_per_result: CPU seconds (all threads, ZeroMQ's I/O threads "
                   "included) of the station process and of the busiest subscriber process per result, which "
                   "says where the time goes whatever else loads the machine; configurations interleaved, order "
                   "rotated per round"),
        "summary": summary,
        "ratios_pct": ratios,
        "target": ">= 20,000 results/s with CURVE on loopback",
        "runs": runs,
        "note": "wall time on a shared 2-core machine: compare figures only with their load averages",
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="results per round and configuration")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--subscribers", default="1,10", help="comma-separated subscriber counts")
    ap.add_argument("--no-replay", action="store_true", help="skip the replay configurations")
    ap.add_argument("--io-threads", default="",
                    help="comma-separated ZeroMQ I/O thread counts of the bus to compare (default: the station's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bus_throughput.json")
    args = ap.parse_args(argv)
    subs = tuple(int(s) for s in args.subscribers.split(","))
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    ios = tuple(int(s) for s in args.io_threads.split(",") if s)
    report = run_bench(args.n, args.rounds, subs, not args.no_replay, args.out, command, ios)
    print(json.dumps({"summary": report["summary"], "ratios_pct": report["ratios_pct"],
                      "load_avg_start": report["load_avg_start"], "load_avg_end": report["load_avg_end"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
