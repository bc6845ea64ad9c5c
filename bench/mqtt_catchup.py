"""MQTT catch-up: how fast a station empties its backlog onto the broker after an outage, and what the
deciding loop pays per result for MQTT being on.

What runs is the product's code against a real broker on loopback TCP:
- the journal: `n` done parts written as a line station with a VLM writes them (the ~2 kB results of
  bench/bus_throughput.py: a three-stage answer with two boxes, gate score, latencies);
- the publisher: `adfm.appliance.mqtt.publisher.MqttPublisher` with its cursor at seq 0, as after a
  broker outage that lasted the whole backlog, publishing QoS 1 to a mosquitto started for the run
  (`tests/mqtt_support.Mosquitto`, persistence on, no subscriber);
- results/s = n / time from `start()` to the broker's PUBACK of seq n (the publisher's acknowledged
  seq, polled every 5 ms); CPU ms per result = this process's CPU time over the same span / n (the
  publisher thread is the only busy one; mosquitto's own CPU is not counted);
- the deciding loop's share: the mean time of `MqttPublisher.wake()` (what the loop calls per
  journaled result; it sets an event) over 200,000 calls.

`max_inflight` (results sent and not yet acknowledged) is varied; configurations are interleaved
within each round and repeated. The JSON holds every round and the median with min/max.

Run: nice -n 5 python bench/mqtt_catchup.py   (about a minute on 2 cores; --n, --rounds, --inflight)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.mqtt_support: the broker the tests run
sys.path.insert(0, str(REPO / "bench"))

from bus_throughput import STATION, fill_journal  # noqa: E402


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def catch_up(journal, port: int, n: int, inflight: int) -> dict:
    """One backlog of n results onto the broker from seq 1; returns results/s and CPU ms per result."""
    from adfm.appliance.config.mqtt import MqttSection
    from adfm.appliance.mqtt.cursor import Cursor, save_cursor
    from adfm.appliance.mqtt.publisher import MqttPublisher
    from adfm.appliance.system.health import Health

    section = MqttSection(host="127.0.0.1", port=port, site="plant1", area="bench", line="line1",
                          max_inflight=inflight, status_interval_s=60)
    cursor = journal.root / f"mqtt-cursor-{inflight}.json"
    save_cursor(cursor, Cursor(journal.epoch, 0, journal.revision_feed_end()), section.broker)
    pub = MqttPublisher(section, STATION, journal, Health(STATION), cursor_path=cursor)
    cpu, t = _cpu_s(), time.monotonic()
    pub.start()
    deadline = t + 600
    while pub.acked_seq < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {pub.acked_seq} of {n} acknowledged in 600 s")
        time.sleep(0.005)
    wall, cpu = time.monotonic() - t, _cpu_s() - cpu
    pub.stop()
    return {"results_per_s": round(n / wall, 1), "wall_s": round(wall, 3),
            "cpu_ms_per_result": round(cpu * 1000 / n, 4), "sent": pub.stats["published"]}


def wake_cost_us(journal, calls: int = 200_000) -> float:
    from adfm.appliance.config.mqtt import MqttSection
    from adfm.appliance.mqtt.publisher import MqttPublisher
    from adfm.appliance.system.health import Health

    pub = MqttPublisher(MqttSection(host="127.0.0.1", site="a", area="b", line="c"), STATION, journal,
                        Health(STATION))
    t = time.perf_counter()
    for _ in range(calls):
        pub.wake()
    return (time.perf_counter() - t) * 1e6 / calls


def run_bench(n: int, rounds: int, inflights: list[int], out: Path | None, command: str) -> dict:
    from tests.mqtt_support import Mosquitto

    load_start = os.getloadavg()
    rows: dict[str, list[dict]] = {f"inflight-{i}": [] for i in inflights}
    with tempfile.TemporaryDirectory(prefix="adfm-mqtt-bench-") as tmp:
        journal, _ = fill_journal(Path(tmp) / "journal", n)
        broker = Mosquitto(Path(tmp) / "broker").start()
        try:
            wake = wake_cost_us(journal)
            for r in range(rounds):
                for k in range(len(inflights)):  # order rotated each round
                    inflight = inflights[(k + r) % len(inflights)]
                    row = catch_up(journal, broker.port, n, inflight)
                    rows[f"inflight-{inflight}"].append(row)
                    print(f"round {r + 1} inflight {inflight}: {row}", flush=True)
        finally:
            broker.close()
            journal.close()
    summary = {}
    for name, got in rows.items():
        rates = [g["results_per_s"] for g in got]
        cpus = [g["cpu_ms_per_result"] for g in got]
        summary[name] = {"results_per_s_median": statistics.median(rates), "min": min(rates), "max": max(rates),
                         "cpu_ms_per_result_median": statistics.median(cpus)}
    import paho.mqtt

    report = {
        "bench": "mqtt_catchup", "command": command, "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "n": n, "rounds": rounds, "wake_us_mean": round(wake, 3), "summary": summary, "rounds_raw": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "paho_mqtt": paho.mqtt.__version__, "broker": "mosquitto (Debian package)",
                    "loadavg_start_end": [[round(v, 2) for v in load_start], [round(v, 2) for v in os.getloadavg()]]},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="results in the backlog")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, nargs="+", default=[20, 100, 500], help="max_inflight values")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "mqtt_catchup.json")
    args = ap.parse_args(argv)
    report = run_bench(args.n, args.rounds, args.inflight, args.out, " ".join(["python", *sys.argv]))
    print(json.dumps({"summary": report["summary"], "wake_us_mean": report["wake_us_mean"],
                      "loadavg": report["machine"]["loadavg_start_end"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
