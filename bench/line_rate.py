"""Line rate: sustained parts/s and trigger-to-decision latency, measured at the PLC.

    python bench/line_rate.py [--seconds 120] [--rate 5] [--deadline-ms 500] [--model scripted|tiny|DIR]
                              [--slow-every 5] [--slow-s 1.2] [--trigger counter|edge]

The real station service in line mode against the PLC stand-in (pymodbus's Modbus/TCP server in its
own process on 127.0.0.1, tests/plc_standin.py) presenting parts at `--rate`, a synthetic 30 fps
camera on the real capture thread, and a model slowed past the deadline on every `--slow-every`-th
call: `scripted` (the test backend: answers at once, or after --slow-s), `tiny` (the tiny demo GGUF
through llama.cpp, built once like `adfm-appliance demo`) or an exported model directory.

Latency is taken on the PLC's side: from the stand-in raising the trigger input to the station's
result write arriving at it (both stamped with CLOCK_MONOTONIC on this machine) — what a PLC
program would see. Writes bench/results/line_rate-<model>.json with the command, machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"


def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(float(np.percentile(values, 50)), 2),
            "p99": round(float(np.percentile(values, 99)), 2), "max": round(max(values), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--rate", type=float, default=5.0, help="parts per second the PLC presents")
    p.add_argument("--deadline-ms", type=float, default=500.0)
    p.add_argument("--delay-ms", type=float, default=700.0, help="trigger → ejector")
    p.add_argument("--model", default="scripted", help="scripted, tiny, or an exported model directory")
    p.add_argument("--slow-every", type=int, default=5)
    p.add_argument("--slow-s", type=float, default=1.2)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--trigger", choices=["counter", "edge"], default="counter",
                   help="PLC trigger as a part counter register or a discrete-input edge (80 ms high)")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)

    from adfm.appliance.inspection.worker import BackendSpec
    from adfm.appliance.journal.store import Journal
    from tests.appliance_fakes import make_model_dir, write_script
    from tests.line_support import Plc, free_port, line_config, start_line

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="adfm-line-rate-"))
    port = free_port()
    cfg = line_config(tmp, port, deadline_ms=a.deadline_ms, delay_ms=a.delay_ms, counter=a.trigger == "counter")
    cfg["line"]["vlm_backlog"] = 16
    cfg["model"]["max_tokens"] = a.max_tokens
    script = None
    if a.model == "scripted":
        actions = [("yes" if i % 2 else "no") for i in range(max(1, a.slow_every) - 1)] + ["late"]
        script = write_script(tmp / "script.json", actions, late_s=a.slow_s, cycle=True)
        backend = None
    else:
        if a.model == "tiny":
            from adfm.appliance.demo import default_cache, ensure_model

            model_dir = ensure_model(default_cache(), None, lambda s: print(s, file=sys.stderr))
        else:
            model_dir = Path(a.model).resolve()
        cfg["model"]["dir"] = str(model_dir)
        backend = BackendSpec("tests.appliance_fakes:make_slowed_backend", {
            "model_dir": str(model_dir), "slow_every": a.slow_every, "slow_s": a.slow_s, "check_hashes": False})
    if a.model == "scripted":
        make_model_dir(tmp / "model")
    parts = int(a.seconds * a.rate)
    plc = Plc(port, tmp / "plc.jsonl")
    plc.start(rate=a.rate, parts=parts)
    run, _ = start_line(cfg, script, backend=backend)
    t0 = time.monotonic()
    try:
        while not plc.done():
            time.sleep(0.5)
            if time.monotonic() - t0 > a.seconds * 3 + 120:
                raise SystemExit("the PLC stand-in did not finish presenting parts")
        end = time.monotonic() + 30
        while (len(plc.result_writes()) < parts or run.service.line.controller.parts) and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(a.delay_ms / 1000 + 0.3)
        link = run.service.line.link.status()
        vlm_skipped = run.service.line.controller.skipped
    finally:
        run.stop()
        plc.kill()
    load_after = os.getloadavg()

    triggers = {t["part_id"]: t["t"] for t in plc.triggers()}
    writes = {w["seq"]: w["t"] for w in plc.result_writes()}
    with Journal(tmp / "state", "st1") as journal:
        firsts = [journal.revisions(s)[0] for s in range(1, journal.last_seq() + 1)]
        revised = sum(len(journal.revisions(r.seq)) > 1 for r in firsts)
    per_part = {}
    for r in firsts:
        per_part.setdefault(r.part_id, []).append(r)
    plc_ms = [(writes[r.seq] - triggers[r.part_id]) * 1000 for r in firsts if r.seq in writes and r.part_id in triggers]
    station_ms = [r.latency_ms["trigger_to_decision"] for r in firsts if "trigger_to_decision" in r.latency_ms]
    sources: dict[str, int] = {}
    for r in firsts:
        sources[r.decision_source or "none"] = sources.get(r.decision_source or "none", 0) + 1
    span = max(triggers.values()) - min(triggers.values()) if len(triggers) > 1 else 0.0
    in_time = sum(ms <= a.deadline_ms for ms in station_ms)
    rejects = sum(r.action == "reject" for r in firsts)
    out = {
        "bench": "line_rate",
        "command": " ".join([sys.executable, *sys.argv]),
        "at": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "model": a.model,
        "settings": {"trigger": a.trigger, "seconds": a.seconds, "rate": a.rate, "deadline_ms": a.deadline_ms,
                     "delay_ms": a.delay_ms,
                     "slow_every": a.slow_every, "slow_s": a.slow_s, "max_tokens": a.max_tokens},
        "triggered": len(triggers),
        "decided": len(firsts),
        "triggers_with_exactly_one_decision": sum(len(per_part.get(pid, [])) == 1 for pid in triggers),
        # decided, but under a station-made id: the trigger counter advanced by 2 between two polls
        # (a starved machine), and the PLC's registers hold only the newest part's id
        "decided_under_station_made_id": sum(pid not in triggers for pid in per_part),
        "sustained_parts_per_s": round(len(firsts) / span, 3) if span else None,
        "decided_within_deadline": in_time,
        "latency_trigger_to_plc_write_ms": pct(plc_ms),
        "latency_trigger_to_decision_station_ms": pct(station_ms),
        "decision_sources": sources,
        "revisions": revised,
        "late_parts_the_vlm_skipped": vlm_skipped,
        "rejects": rejects,
        "reject_pulses": len(plc.pulses()),
        "link": link,
    }
    path = a.out or RESULTS / f"line_rate-{a.model if a.model in ('scripted', 'tiny') else 'model'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
