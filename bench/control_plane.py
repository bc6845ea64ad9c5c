"""The control plane under abuse: station memory with a client that never reads, result latency under a
status flood. The product's own code on both ends, on loopback TCP, in separate processes.

The station (a child process, `--serve`): a `Journal` on disk with `--parts` parts (each with a 1,024×768
noise PNG of about 2.3 MB and 20 kB of model text, so a replay page and an image are full-sized) and a
`ResultBus` with the service's defaults. Memory is its VmRSS from /proc.

1. Unread replies: one DEALER (RCVHWM 1, 4 KiB receive buffer) sends 300 replay requests from seq 1
   and 50 image requests and never reads; the station's RSS is sampled before and every 0.25 s for
   5 s after the last request; growth = peak − before.
2. Flood: the station publishes a result every 0.2 s (5 parts/s, each journaled first, as the line
   does); a `StationClient` subscriber records receive time − publish time (same clock:
   CLOCK_MONOTONIC, stamped into the result's `reason`). 10 s without flood, then 10 s while two
   processes send status requests as fast as they can (each keeps 32 in flight, reading replies),
   in one run, side by side; p50/p99/max and the count of results in each phase.

Run: nice -n 10 python bench/control_plane.py   (about 60 s on 2 cores). Writes bench/results/control_plane.json
with the machine, the load average before and after, and every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "control_plane.json"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def serve(root: Path, parts: int, rate: float, publish_for: float) -> None:
    """The station: fill the journal, start the bus, print its endpoints, publish on 'go'."""
    from adfm.appliance.bus.server import ResultBus
    from adfm.appliance.journal.store import Journal
    from adfm.schema import InspectionResult, StationStatus

    journal = Journal(root, "bench")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    while journal.last_seq() < parts:
        i = journal.last_seq() + 1
        p = journal.accept(image, part_id=f"p{i}", camera="cam0", frame_number=i, captured_wall=time.time())
        journal.complete(InspectionResult(station="bench", seq=p.seq, part_id=p.part_id, camera="cam0",
                                          frame_number=i, captured_at=p.captured_at, verdict="pass",
                                          raw_response="x" * 20_000, image_path=p.image_path))
    bus = ResultBus("bench", journal, lambda: StationStatus(station="bench", healthy=True,
                                                             last_seq=journal.last_seq()),
                    publish=["tcp://127.0.0.1:*"], control=["tcp://127.0.0.1:*"])
    bus.start()
    print(json.dumps(bus.bound), flush=True)
    for line in sys.stdin:
        if line.strip() == "publish":
            end = time.monotonic() + publish_for
            nxt = time.monotonic()
            while time.monotonic() < end:
                i = journal.last_seq() + 1
                p = journal.open_part(part_id=f"live{i}", camera="cam0", triggered_wall=time.time())
                r = journal.complete(InspectionResult(station="bench", seq=p.seq, part_id=p.part_id, camera="cam0",
                                                      frame_number=i, captured_at=p.captured_at, verdict="pass",
                                                      reason=repr(time.monotonic())))
                bus.publish(r)
                nxt += 1 / rate
                time.sleep(max(0.0, nxt - time.monotonic()))
            print(json.dumps({"published": True, "stats": {"requests": bus.stats.requests,
                                                            "dropped": bus.stats.replies_dropped}}), flush=True)
        elif line.strip() == "stop":
            break
    bus.stop()
    journal.close()


def flood(control: str, seconds: float) -> None:
    """Status requests as fast as possible, 32 in flight, replies read."""
    import zmq

    d = zmq.Context.instance().socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(control)
    req = json.dumps({"type": "status_request"}).encode()
    end = time.monotonic() + seconds
    inflight = sent = 0
    while time.monotonic() < end:
        while inflight < 32:
            d.send_multipart([b"", req])
            inflight += 1
            sent += 1
        if d.poll(50):
            while True:
                try:
                    d.recv_multipart(zmq.NOBLOCK)
                    inflight -= 1
                except zmq.Again:
                    break
        else:
            inflight = 0  # replies dropped: send again
    print(json.dumps({"sent": sent}), flush=True)


def unread(station: subprocess.Popen, control: str, replays: int, images: int) -> dict:
    import zmq

    d = zmq.Context.instance().socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVHWM, 1)
    d.setsockopt(zmq.RCVBUF, 4096)
    d.connect(control)
    time.sleep(0.5)
    before = rss_mb(station.pid)
    for _ in range(replays):
        d.send_multipart([b"", json.dumps({"type": "replay", "from_seq": 1, "limit": 5000}).encode()])
    for i in range(images):
        d.send_multipart([b"", json.dumps({"type": "image_request", "seq": 1 + i % 10}).encode()])
    samples = []
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        samples.append(round(rss_mb(station.pid), 1))
        time.sleep(0.25)
    d.close()
    return {"replay_requests": replays, "image_requests": images, "rss_before_mb": round(before, 1),
            "rss_samples_mb": samples, "rss_peak_mb": max(samples), "growth_mb": round(max(samples) - before, 1)}


def latencies(station: subprocess.Popen, bound: dict, seconds: float, flooders: int) -> dict:
    from adfm.appliance.bus.client import StationClient

    procs = [subprocess.Popen([sys.executable, __file__, "--flood", bound["control"][0], "--seconds", str(seconds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(flooders)]
    lat: list[float] = []
    with StationClient(bound["publish"][0], bound["control"][0], station="bench", timeout_s=30.0) as c:
        time.sleep(0.5)
        start = time.monotonic()  # results stamped before this belong to an earlier phase
        station.stdin.write("publish\n")
        station.stdin.flush()
        end = time.monotonic() + seconds + 3.0
        while time.monotonic() < end:
            for r in c.receive(0.2):
                if r.part_id.startswith("live") and float(r.reason) >= start:
                    lat.append((time.monotonic() - float(r.reason)) * 1000)
    stats = json.loads(station.stdout.readline())
    sent = [json.loads(p.communicate()[0] or "{}").get("sent", 0) for p in procs]
    a = np.array(lat) if lat else np.array([np.nan])
    return {"flooders": flooders, "status_requests_sent": sent, "results": len(lat),
            "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2), "std_ms": round(float(a.std()), 2), "station": stats["stats"],
            "latencies_ms": [round(x, 2) for x in lat]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=Path)
    ap.add_argument("--flood")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--parts", type=int, default=40)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.parts, 5.0, args.seconds)
    if args.flood:
        return flood(args.flood, args.seconds)
    import tempfile

    load_before = os.getloadavg()
    runs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        station = subprocess.Popen([sys.executable, __file__, "--serve", tmp, "--parts", str(args.parts),
                                    "--seconds", str(args.seconds)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        try:
            bound = json.loads(station.stdout.readline())
            runs["unread"] = unread(station, bound["control"][0], 300, 50)
            runs["unflooded"] = latencies(station, bound, args.seconds, 0)
            runs["flooded"] = latencies(station, bound, args.seconds, 2)
            station.stdin.write("stop\n")
            station.stdin.flush()
            station.wait(30)
        finally:
            station.kill()
    out = {"what": "bench/control_plane.py (see its docstring)", "machine": platform.platform(),
           "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **runs,
           "p99_difference_ms": round(runs["flooded"]["p99_ms"] - runs["unflooded"]["p99_ms"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    short = {k: {kk: vv for kk, vv in v.items() if kk not in ("latencies_ms", "rss_samples_mb")}
             if isinstance(v, dict) else v for k, v in out.items()}
    print(json.dumps(short, indent=1))


if __name__ == "__main__":
    main()
