"""Line rate under load: every trigger decided once and in time, measured at the PLC.

    python bench/line_rate.py [--parts 600] [--rate 5] [--deadline-ms 800] [--load 6]
                              [--model scripted|tiny|DIR] [--gate tiny|PATH|off] [--before REV]
                              [--modes simple,handshake] [--mqtt-on handshake] [--set KEY=VALUE ...]

The real station service in line mode against the PLC stand-in (pymodbus's Modbus/TCP server in its
own process on 127.0.0.1, tests/plc_standin.py) presenting `--parts` parts at `--rate`, a 30 fps
camera on the real capture thread delivering synthetic washers (256², adfm.synthetic), the
screening gate in screen mode (`--gate tiny`: fitted on synthetic washers like the demo's) and a
model slowed past the deadline on every `--slow-every`-th call (`tiny`: the tiny demo GGUF through
llama.cpp; `scripted`: the test backend).

The load is the bench's own: `--load N` busy processes at normal priority (a station is never
idle; the VLM worker adds its own threads beside them). The load average is recorded before and
after each run.

With `--before REV` the same measurement runs on that commit's tree too (a git worktree), one
after the other under the same load, and both land in one JSON file — side by side.

`--modes simple,handshake` measures the PLC link in each mode, one after the other under the same
load, in one JSON file (runs `<tree>-<mode>`; `after` alone for the simple mode without --modes);
`--repeat N` alternates them N times (`<tree>-<mode>-<n>`), so a machine whose load drifts
(other work on it) weighs on every mode alike.
In handshake mode the stand-in also runs the PLC side of the handshake: it scans the station's
output block every `--plc-scan-ms`, takes each new result and acknowledges it `--plc-ack-ms` later;
the reject is the station-timed pulse (`--handshake-reject pulse`) or the PLC's own (`bit`).
`--mqtt-on MODES` (e.g. `handshake`) makes those modes' runs also publish to a real mosquitto on
loopback (the `mqtt` extra and the Debian package), with a subscriber on the result topic: results
received, duplicates, seq order, and trigger → delivery to the subscriber.
`--set KEY=VALUE` overrides any station config key (dotted path, YAML value), e.g.
`--set plc.modbus.poll_ms=20` or an output section such as `--set 'mqtt={...}'` — applied to
every run, and recorded in the JSON.

Measured per run:
- at the PLC: trigger (the stand-in raising it) → the station's result write, both stamped with
  CLOCK_MONOTONIC on this machine; the share written before the deadline (handshake: the write of
  the block that first shows the part's result; and trigger → the PLC program taking it, which
  adds its scan);
- triggers with exactly one decision; decision sources; revisions;
- reject pulses against the ejector window: a pulse must rise between its part's trigger +
  `delay_ms` and that + `window_ms` + 2 × the link's poll period (the station sees a trigger up to
  one poll late); pulses matching no rejected part's window are "outside the window";
- the frame each part got: trigger → frame capture (station side), and how many parts got a
  frame later than one frame period + 20 ms (a frame skipped);
- the deciding loop's stalls (max, p99) and the link's worst poll gap, where the tree reports them.
Writes bench/results/line_rate-<model>[-load<N>].json with the command, machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the tree whose code runs (a child measuring another commit gets its worktree here)
TREE = Path(os.environ.get("ADFM_LINE_RATE_TREE", str(REPO)))
sys.path.insert(0, str(TREE))

RESULTS = REPO / "bench" / "results"
FPS = 30.0
PLC_NICE = -15


def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(float(np.percentile(values, 50)), 2),
            "p99": round(float(np.percentile(values, 99)), 2), "max": round(max(values), 2)}


# ---- one measurement, in a child process running one tree's code ------------------------------------


def _washer_frames(n: int = 25) -> list[np.ndarray]:
    from adfm.synthetic import make_sample

    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        # half the parts suspicious to the gate; 25 frames, so a trigger every 6th frame meets them all
        defect = ("spot", "missing")[i % 4 // 2] if i % 2 else None
        out.append(make_sample("washer", defect, rng, size=(256, 256), defect_scale=1.4).image)
    return out


def _patch_camera(frames: list[np.ndarray]) -> None:
    """The line tests' synthetic 30 fps camera, delivering washers instead of flat frames."""
    import tests.line_support as ls
    from adfm.camera.errors import SourceError
    from adfm.camera.source import now_pair

    bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]  # sources hand over OpenCV's BGR

    class WasherStream(ls.SyntheticStream):  # type: ignore[misc,name-defined]
        def read(self):
            if self.down or not self._open:
                raise SourceError(f"{self.name}: device unplugged")
            wait = self._next - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.05))
                if wait > 0.05:
                    return None
            self._next = max(self._next + 1.0 / self.fps, time.monotonic() - 0.5)
            mono, wall = now_pair()
            n = self._next_number
            return self._make_frame(bgr[n % len(bgr)], f"washer#{n}", mono, wall)

    ls.SyntheticStream = WasherStream


def measure(a: argparse.Namespace) -> dict:
    """Run the line once with this interpreter's tree; returns what the PLC and the journal saw.

    The station runs at the priority its systemd unit gives it (`Nice=` in
    systemd/adfm-appliance.service, read from the measuring tree's unit), as on a line PC."""
    unit_nice = _unit_nice(TREE)
    if unit_nice:
        os.nice(unit_nice - os.nice(0))
    try:
        from adfm.appliance.inspection.worker import BackendSpec
        from adfm.appliance.journal.store import Journal
    except ImportError:  # the tree before the appliance's subpackages
        from adfm.appliance.inference_worker import BackendSpec  # type: ignore[no-redef]
        from adfm.appliance.journal import Journal  # type: ignore[no-redef]
    from tests.appliance_fakes import make_model_dir, write_script
    from tests.line_support import Plc, free_port, line_config, start_line

    _patch_camera(_washer_frames())
    tmp = Path(tempfile.mkdtemp(prefix="adfm-line-rate-"))
    port = free_port()
    handshake = None
    if a.mode == "handshake":
        handshake = {"reject": a.handshake_reject}
    cfg = line_config(tmp, port, deadline_ms=a.deadline_ms, delay_ms=a.delay_ms, counter=a.trigger == "counter",
                      **({"handshake": handshake} if handshake is not None else {}))
    for key, value in a.set or []:
        apply_override(cfg, key, value)
    broker = subscriber = None
    if a.mqtt:  # a real mosquitto on loopback and a subscriber on the station's result topic
        from tests.mqtt_support import Mosquitto, Subscriber

        broker = Mosquitto(tmp / "broker").start()
        cfg["mqtt"] = {"host": "127.0.0.1", "port": broker.port, "site": "plant1", "area": "bench", "line": "line1"}
        subscriber = Subscriber(broker.port, "plant1/bench/line1/+/result", client_id="line-rate").start()
    cfg["line"]["vlm_backlog"] = 16
    cfg["model"]["max_tokens"] = a.max_tokens
    if a.gate_path:
        cfg["gate"] = {"mode": "screen", "path": a.gate_path}
    script = None
    backend = None
    if a.model == "scripted":
        actions = [("yes" if i % 2 else "no") for i in range(max(1, a.slow_every) - 1)] + ["late"]
        script = write_script(tmp / "script.json", actions, late_s=a.slow_s, cycle=True)
        make_model_dir(tmp / "model")
    else:
        cfg["model"]["dir"] = a.model_dir
        backend = BackendSpec("tests.appliance_fakes:make_slowed_backend", {
            "model_dir": a.model_dir, "slow_every": a.slow_every, "slow_s": a.slow_s, "check_hashes": False})
    plc = Plc(port, tmp / "plc.jsonl")
    extra = ("--scan-ms", str(a.plc_scan_ms), "--ack-ms", str(a.plc_ack_ms)) if a.mode == "handshake" else ()
    plc.start(rate=a.rate, parts=a.parts, extra=extra)  # it presents parts once the station's heartbeat shows
    # The PLC is a machine of its own on a line; here its stand-in shares the CPU, so it runs above
    # the station and the load: its own starvation must not be counted against the station.
    os.setpriority(os.PRIO_PROCESS, plc.proc.pid, PLC_NICE)
    run, _ = start_line(cfg, script, backend=backend)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    try:
        while not plc.done():
            time.sleep(0.5)
            if time.monotonic() - t0 > a.parts / a.rate * 3 + 120:
                raise SystemExit("the PLC stand-in did not finish presenting parts")
        end = time.monotonic() + 60
        while (len(_written(plc, a.mode)) < a.parts or run.service.line.controller.parts) and time.monotonic() < end:
            time.sleep(0.2)
        while a.mode == "handshake" and len(plc.taken()) < a.parts and time.monotonic() < end:
            time.sleep(0.2)
        while subscriber is not None and len(subscriber.on("result")) < a.parts and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(a.delay_ms / 1000 + 0.5)
        line = run.service.line
        link = line.link.status()
        counters = line.counters() if hasattr(line, "counters") else {}
        vlm_skipped = line.controller.skipped
    finally:
        run.stop()
        plc.kill()
        if subscriber is not None:
            subscriber.stop()
        if broker is not None:
            broker.close()
    load_after = os.getloadavg()

    triggers = {t["part_id"]: t["t"] for t in plc.triggers()}
    writes = _written(plc, a.mode)
    taken = {r["seq"]: r["t"] for r in plc.taken()}
    taken_order = [r["seq"] for r in plc.taken()]
    with Journal(tmp / "state", "st1") as journal:
        firsts = [journal.revisions(s)[0] for s in range(1, journal.last_seq() + 1)]
        revised = sum(len(journal.revisions(r.seq)) > 1 for r in firsts)
    per_part: dict[str, list] = {}
    for r in firsts:
        per_part.setdefault(r.part_id, []).append(r)
    plc_ms = [(writes[r.seq] - triggers[r.part_id]) * 1000 for r in firsts if r.seq in writes and r.part_id in triggers]
    taken_ms = [(taken[r.seq] - triggers[r.part_id]) * 1000 for r in firsts if r.seq in taken and r.part_id in triggers]
    station_ms = [r.latency_ms["trigger_to_decision"] for r in firsts if "trigger_to_decision" in r.latency_ms]
    frame_ms = [r.latency_ms["trigger_to_frame"] for r in firsts if "trigger_to_frame" in r.latency_ms]
    frame_limit_ms = 1000.0 / FPS + 20.0
    sources: dict[str, int] = {}
    for r in firsts:
        sources[r.decision_source or "none"] = sources.get(r.decision_source or "none", 0) + 1
    span = max(triggers.values()) - min(triggers.values()) if len(triggers) > 1 else 0.0

    # pulses against the ejector windows of the rejected parts (PLC-side trigger times)
    poll_ms = float(cfg["plc"]["modbus"]["poll_ms"])
    window_ms = a.window_ms + 2 * poll_ms
    due = sorted(triggers[r.part_id] + a.delay_ms / 1000.0 for r in firsts
                 if r.action == "reject" and r.part_id in triggers)
    rises = [rise for rise, _ in plc.pulses()]
    unmatched_due = list(due)
    outside, lateness = 0, []
    for rise in rises:
        hit = next((d for d in unmatched_due if 0.0 <= (rise - d) * 1000.0 <= window_ms), None)
        if hit is None:
            outside += 1
        else:
            unmatched_due.remove(hit)
            lateness.append((rise - hit) * 1000.0)
    handshake_out = {}
    if a.mode == "handshake":
        handshake_out = {
            "latency_trigger_to_plc_taking_ms": pct(taken_ms),
            "results_the_plc_took": len(taken_order),
            "plc_took_every_result_once_in_seq_order": taken_order == sorted(writes),
            "plc_scan_ms": a.plc_scan_ms, "plc_ack_ms": a.plc_ack_ms, "reject": a.handshake_reject,
        }
    mqtt_out = {}
    if subscriber is not None:
        got = subscriber.on("result")
        seqs = [m.payload["seq"] for m in got]
        arrived = {m.payload["seq"]: m.at for m in got}
        mqtt_ms = [(arrived[r.seq] - triggers[r.part_id]) * 1000 for r in firsts
                   if r.seq in arrived and r.part_id in triggers]
        mqtt_out = {"mqtt": {
            "results_received": len(got), "distinct_seqs": len(set(seqs)),
            "in_seq_order": seqs == sorted(seqs), "duplicates": len(seqs) - len(set(seqs)),
            "latency_trigger_to_broker_delivery_ms": pct(mqtt_ms),
        }}
    return {
        "mode": a.mode,
        **mqtt_out,
        "overrides": {k: v for k, v in a.set or []},
        **handshake_out,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "triggered": len(triggers),
        "decided": len(firsts),
        "triggers_with_exactly_one_decision": sum(len(per_part.get(pid, [])) == 1 for pid in triggers),
        "decided_under_station_made_id": sum(pid not in triggers for pid in per_part),
        "sustained_parts_per_s": round(len(firsts) / span, 3) if span else None,
        "plc_writes_within_deadline": sum(ms <= a.deadline_ms for ms in plc_ms),
        "plc_writes_within_deadline_share": round(sum(ms <= a.deadline_ms for ms in plc_ms) / max(1, len(triggers)), 4),
        "latency_trigger_to_plc_write_ms": pct(plc_ms),
        "latency_trigger_to_decision_station_ms": pct(station_ms),
        "trigger_to_frame_ms": pct(frame_ms),
        "parts_with_a_frame_later_than_one_period_plus_20ms": sum(ms > frame_limit_ms for ms in frame_ms),
        "decision_sources": sources,
        "revisions": revised,
        "late_parts_the_vlm_skipped": vlm_skipped,
        "rejects": sum(r.action == "reject" for r in firsts),
        "reject_pulses": len(rises),
        "pulses_outside_the_ejector_window": outside,
        "pulse_window_ms": window_ms,
        "pulse_lateness_ms": pct(lateness),
        "rejects_without_a_pulse": len(unmatched_due),
        "decision_loop": {k: counters[k] for k in ("loop_stall_ms_max", "loop_stall_ms_p99", "deadline_misses",
                                                    "missed_ejections", "vlm_dropped") if k in counters},
        "link": link,
    }


def _written(plc, mode: str) -> dict[int, float]:
    """seq → when the station first wrote it to the PLC (simple: its result block; handshake: the
    first output block that shows it in a slot)."""
    from tests.plc_standin import RESULT_HR

    out: dict[int, float] = {}
    if mode != "handshake":
        for w in plc.result_writes():
            out.setdefault(w["seq"], w["t"])  # the first write of a seq is the decision the PLC got
        return out
    for e in plc.events():
        v = e.get("values", [])
        if e["ev"] == "write" and e["address"] == RESULT_HR and len(v) > 8:
            for k in range(v[2]):
                out.setdefault(v[8 + 8 * k] | v[9 + 8 * k] << 16, e["t"])
    return out


def apply_override(cfg: dict, key: str, value) -> None:
    """Set a dotted station config key (`plc.modbus.poll_ms`), making the sections on the way."""
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SystemExit(f"--set {key}: {part!r} is not a section")
    node[last] = value


def parse_set(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE (e.g. plc.modbus.poll_ms=20)")
    return key.strip(), yaml.safe_load(value)


def _unit_nice(tree: Path) -> int:
    unit = tree / "systemd" / "adfm-appliance.service"
    for line in unit.read_text().splitlines() if unit.is_file() else []:
        if line.startswith("Nice="):
            return int(line.split("=", 1)[1])
    return 0


# ---- the driver: load, trees, JSON --------------------------------------------------------------------


def start_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(10)


def worktree(rev: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"adfm-tree-{rev[:12]}"
    if not (path / "adfm").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--force", "--detach", str(path), rev], check=True,
                       capture_output=True)
    return path


def run_child(tree: Path, a: argparse.Namespace, model_dir: str, gate: str, mode: str = "simple") -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--parts", str(a.parts), "--rate", str(a.rate),
           "--deadline-ms", str(a.deadline_ms), "--delay-ms", str(a.delay_ms), "--window-ms", str(a.window_ms),
           "--model", a.model, "--model-dir", model_dir, "--gate-path", gate, "--slow-every", str(a.slow_every),
           "--slow-s", str(a.slow_s), "--max-tokens", str(a.max_tokens), "--trigger", a.trigger]
    if mode != "simple":  # a tree from before the handshake knows neither option
        cmd += ["--mode", mode, "--plc-scan-ms", str(a.plc_scan_ms), "--plc-ack-ms", str(a.plc_ack_ms),
                "--handshake-reject", a.handshake_reject]
    if mode in a.mqtt_modes:
        cmd += ["--mqtt"]
    for key, value in a.set or []:
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "PYTHONPATH": str(tree), "ADFM_LINE_RATE_TREE": str(tree)}
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=a.parts / a.rate * 4 + 600)
    if proc.returncode != 0:
        raise SystemExit(f"the run on {tree} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", type=int, default=600)
    p.add_argument("--rate", type=float, default=5.0, help="parts per second the PLC presents")
    p.add_argument("--deadline-ms", type=float, default=800.0)
    p.add_argument("--delay-ms", type=float, default=1200.0, help="trigger → ejector")
    p.add_argument("--window-ms", type=float, default=50.0, help="the ejector window (station config)")
    p.add_argument("--load", type=int, default=0, help="busy processes the bench starts beside the station")
    p.add_argument("--model", default="tiny", help="scripted, tiny, or an exported model directory")
    p.add_argument("--gate", default="tiny", help="tiny (fitted on synthetic washers), a gate .onnx, or off")
    p.add_argument("--before", help="also measure this commit's tree (side by side, same load)")
    p.add_argument("--slow-every", type=int, default=5)
    p.add_argument("--slow-s", type=float, default=1.2)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--trigger", choices=["counter", "edge"], default="counter",
                   help="PLC trigger as a part counter register or a discrete-input edge (80 ms high)")
    p.add_argument("--modes", default="simple", help="PLC link modes to measure side by side: simple,handshake")
    p.add_argument("--repeat", type=int, default=1, help="measure the trees × modes this many times, alternating")
    p.add_argument("--plc-scan-ms", type=float, default=20.0, help="handshake: the PLC program's scan")
    p.add_argument("--plc-ack-ms", type=float, default=20.0, help="handshake: the PLC acks this long after taking")
    p.add_argument("--handshake-reject", choices=["pulse", "bit"], default="pulse")
    p.add_argument("--set", action="append", type=parse_set, metavar="KEY=VALUE",
                   help="override a station config key in every run (dotted path, YAML value); repeatable")
    p.add_argument("--mqtt-on", default="", metavar="MODES",
                   help="link modes whose runs also publish to a real mosquitto (the mqtt extra): e.g. handshake")
    p.add_argument("--out", type=Path)
    p.add_argument("--mode", choices=["simple", "handshake"], default="simple", help=argparse.SUPPRESS)
    p.add_argument("--mqtt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--gate-path", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.mqtt_modes = {m.strip() for m in a.mqtt_on.split(",") if m.strip()}

    if a.child:
        import adfm

        out = measure(a)
        out["code"] = str(Path(adfm.__file__).resolve().parents[1])  # which tree's code ran
        out["station_nice"] = os.nice(0)
        out["commit"] = subprocess.run(["git", "-C", str(TREE), "rev-parse", "HEAD"], capture_output=True,
                                       text=True).stdout.strip()  # the tree as it was when this run began
        print(json.dumps(out))
        return 0

    model_dir = gate = ""
    if a.model == "tiny" or a.gate == "tiny":
        from adfm.appliance.demo import default_cache, ensure_gate, ensure_model

        if a.model == "tiny":
            model_dir = str(ensure_model(default_cache(), None, lambda s: print(s, file=sys.stderr)))
        if a.gate == "tiny":
            built = ensure_gate(default_cache(), lambda s: print(s, file=sys.stderr))
            if built is None:
                raise SystemExit("--gate tiny needs the trainer extra (torch) to fit the gate")
            gate = str(built)
    if a.model not in ("tiny", "scripted"):
        model_dir = str(Path(a.model).resolve())
    if a.gate not in ("tiny", "off"):
        gate = str(Path(a.gate).resolve())

    trees = {"after": REPO}
    if a.before:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", a.before], check=True, capture_output=True,
                             text=True).stdout.strip()
        trees = {"before": worktree(rev), "after": REPO}
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"simple", "handshake"}:
        raise SystemExit(f"--modes {a.modes!r}: simple and/or handshake, comma-separated")
    load = start_load(a.load)
    runs = {}
    try:
        time.sleep(5 if a.load else 0)  # let the load settle into the load average
        # the runs alternate (ABAB…): a load that drifts during the bench weighs on every run alike
        plan = [(t, p, m, r) for r in range(1, a.repeat + 1) for t, p in trees.items() for m in modes]
        for tree_name, tree, mode, rep in plan:
            name = tree_name if modes == ["simple"] else f"{tree_name}-{mode}"
            name += "-mqtt" if mode in a.mqtt_modes else ""
            name += f"-{rep}" if a.repeat > 1 else ""
            print(f"measuring {name} ({tree}) under {a.load} busy processes…", file=sys.stderr, flush=True)
            runs[name] = run_child(tree, a, model_dir, gate, mode)
            print(json.dumps({name: {k: runs[name].get(k) for k in (
                "triggered", "decided", "sustained_parts_per_s", "latency_trigger_to_plc_write_ms",
                "latency_trigger_to_plc_taking_ms", "plc_writes_within_deadline_share",
                "pulses_outside_the_ejector_window", "decision_loop", "mqtt")}}), file=sys.stderr, flush=True)
    finally:
        stop_load(load)
    out = {
        "bench": "line_rate",
        "command": " ".join([sys.executable, *sys.argv]),
        "at": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "how": "the station in line mode (real service, capture thread, journal, bus, PLC link) against the PLC "
               "stand-in process; load = busy processes at normal priority started by the bench; the runs of the "
               "trees one after the other under the same load",
        "commits": {"after": head, **({"before": a.before} if a.before else {})},
        "model": a.model,
        "gate": a.gate,
        "settings": {"parts": a.parts, "rate": a.rate, "deadline_ms": a.deadline_ms, "delay_ms": a.delay_ms,
                     "window_ms": a.window_ms, "load_processes": a.load, "slow_every": a.slow_every,
                     "slow_s": a.slow_s, "max_tokens": a.max_tokens, "trigger": a.trigger, "camera_fps": FPS,
                     "modes": modes, "plc_scan_ms": a.plc_scan_ms, "plc_ack_ms": a.plc_ack_ms,
                     "handshake_reject": a.handshake_reject, "overrides": {k: v for k, v in a.set or []},
                     "mqtt_on": sorted(a.mqtt_modes),
                     "repeat": a.repeat},
        "runs": runs,
    }
    name = f"line_rate-{a.model if a.model in ('scripted', 'tiny') else 'model'}" + (f"-load{a.load}" if a.load else "")
    name += ("" if modes == ["simple"] else "-" + "-".join(modes)) + (f"-x{a.repeat}" if a.repeat > 1 else "")
    name += "-mqtt-" + "-".join(sorted(a.mqtt_modes)) if a.mqtt_modes else ""
    path = a.out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
