"""What a candidate model in shadow costs the line: decision latency with shadow on every part vs off.

    python bench/shadow_cost.py [--parts 300] [--rate 5] [--deadline-ms 800] [--load 2] [--rounds 2] [--gate tiny|off]
                                [--model tiny|DIR] [--shadow-nice 15]

The real station service in line mode against the PLC stand-in (tests/plc_standin.py, its own
process, Modbus/TCP on 127.0.0.1) presenting `--parts` parts at `--rate`, a 30 fps camera on the
real capture thread delivering synthetic washers, the screening gate in screen mode (`--gate tiny`:
fitted on synthetic washers like the demo's, passing about half the parts; `off`: the active model
inspects every part), the active model through llama.cpp (`tiny`: the tiny demo GGUF). Two
configurations, alternated `--rounds` times under the same load in one invocation:
- `off`: no shadow run;
- `on`: a candidate in shadow on every part (`models.shadow_share: all`) in its own worker process,
  `--shadow-nice` nicer than the service. The candidate is the same GGUF stored under another file
  name (so another model id): a second model of exactly the active one's size and cost.

The load is the bench's own: `--load N` busy processes at normal priority beside the station (a
line PC is never idle); the load average is recorded before and after each run.

Measured per run, at the PLC: trigger (the stand-in raising it) → the station's result write, both
stamped with CLOCK_MONOTONIC on this machine (p50, p99, max) and the share written within the
deadline; the station's own trigger → decision; decision sources; deadline misses; the candidate's
answers and the parts its bounded queue dropped. Writes bench/results/shadow_cost-<model>[-load<N>].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from line_rate import PLC_NICE, _patch_camera, _unit_nice, _washer_frames, pct, start_load, stop_load  # noqa: E402

RESULTS = REPO / "bench" / "results"


def candidate_copy(model_dir: Path, out: Path) -> Path:
    """The same weights as another model: the language-model file under another name (the model id
    is its file name's stem and hash), the manifest rewritten to list it."""
    from adfm.manifest import read_manifest, write_manifest

    m = read_manifest(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for f in m.files:
        name = f"candidate-{f.path}" if f.role == "model" else f.path
        shutil.copyfile(model_dir / f.path, out / name)
        files.append(f.model_copy(update={"path": name}))
    write_manifest(m.model_copy(update={"files": files}), out)
    return out


def measure(a: argparse.Namespace) -> dict:
    """One line run in this process (the child): shadow on every part when `a.shadow`."""
    unit_nice = _unit_nice(REPO)
    if unit_nice:
        os.nice(unit_nice - os.nice(0))
    import tests.line_support as ls
    from adfm.appliance.config.station import parse_config
    from adfm.appliance.journal.store import Journal
    from adfm.appliance.models.store import ModelStore
    from adfm.appliance.service import Service
    from adfm.camera.capture_thread import CameraWorker

    _patch_camera(_washer_frames())
    tmp = Path(tempfile.mkdtemp(prefix="adfm-shadow-cost-"))
    port = ls.free_port()
    cfg = ls.line_config(tmp, port, deadline_ms=a.deadline_ms, delay_ms=a.delay_ms, counter=True)
    cfg["line"]["vlm_backlog"] = 16
    cfg["model"].update(dir=a.model_dir, max_tokens=a.max_tokens)
    if a.gate_path:
        cfg["gate"] = {"mode": "screen", "path": a.gate_path}
    cfg["models"] = {"shadow_share": "all", "shadow_queue": 8, "shadow_nice": a.shadow_nice}
    config = parse_config(cfg)
    if a.shadow:
        store = ModelStore.for_state_dir(config.journal_dir)
        model_id, _ = store.add(Path(a.candidate_dir))
        state = store.state()
        state.shadow = model_id
        store.save(state)
    plc = ls.Plc(port, tmp / "plc.jsonl")
    plc.start(rate=a.rate, parts=a.parts, start_delay=20.0)  # the station is up (model loaded) by then
    os.setpriority(os.PRIO_PROCESS, plc.proc.pid, PLC_NICE)
    cam_cfg = config.cameras[0].camera_config()
    camera = CameraWorker(cam_cfg, source=ls.SyntheticStream(cam_cfg, fps=30.0))
    service = Service(config, cameras={"cam0": camera})
    thread = threading.Thread(target=service.run, name="line-service", daemon=True)
    thread.start()
    load_before = os.getloadavg()
    t0 = time.monotonic()
    try:
        while not plc.done():
            time.sleep(0.5)
            if not thread.is_alive():
                raise SystemExit("the station stopped during the run")
            if time.monotonic() - t0 > a.parts / a.rate * 3 + 180:
                raise SystemExit("the PLC stand-in did not finish presenting parts")
        end = time.monotonic() + 60
        # distinct seqs written, not writes: a result the link wrote again after a reconnect must not
        # end the wait while the last trigger is still on its way to the station
        while ((len({w["seq"] for w in plc.result_writes()}) < a.parts or service.line.controller.parts)
               and time.monotonic() < end):
            time.sleep(0.2)
        counters = service.health.snapshot().counters
    finally:
        service.request_stop("bench done")
        thread.join(60)
        plc.kill()
    load_after = os.getloadavg()
    triggers = {t["part_id"]: t["t"] for t in plc.triggers()}
    writes: dict[int, float] = {}
    for w in plc.result_writes():
        writes.setdefault(w["seq"], w["t"])
    with Journal(tmp / "state", "st1") as journal:
        firsts = [journal.revisions(s)[0] for s in range(1, journal.last_seq() + 1)]
        shadow_rows = journal._conn().execute("SELECT count(*) FROM shadow_results").fetchone()[0]
    plc_ms = [(writes[r.seq] - triggers[r.part_id]) * 1000 for r in firsts if r.seq in writes and r.part_id in triggers]
    station_ms = [r.latency_ms["trigger_to_decision"] for r in firsts if "trigger_to_decision" in r.latency_ms]
    sources: dict[str, int] = {}
    for r in firsts:
        sources[r.decision_source or "none"] = sources.get(r.decision_source or "none", 0) + 1
    decided_ids = {r.part_id for r in firsts}
    t_first = min(triggers.values()) if triggers else 0.0
    unwritten = sorted(round(t - t_first, 3) for pid, t in triggers.items() if pid not in decided_ids)
    if unwritten:  # kept for a look: the journal, the PLC's log
        print(f"triggers without a journaled decision at {unwritten} s; kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "shadow": a.shadow,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "triggered": len(triggers),
        "decided": len(firsts),
        "plc_writes_within_deadline_share": round(sum(ms <= a.deadline_ms for ms in plc_ms) / max(1, len(triggers)), 4),
        "latency_trigger_to_plc_write_ms": pct(plc_ms),
        "latency_trigger_to_decision_station_ms": pct(station_ms),
        "decision_sources": sources,
        "triggers_without_a_journaled_decision_at_s": unwritten,
        "parts_in_flight_at_end": counters.get("parts_in_flight"),
        "deadline_misses": counters.get("deadline_misses"),
        "loop_stall_ms_p99": counters.get("loop_stall_ms_p99"),
        "shadow_answered": counters.get("shadow_answered", 0),
        "shadow_dropped": counters.get("shadow_dropped", 0),
        "shadow_results_journaled": shadow_rows,
    }


def run_child(a: argparse.Namespace, shadow: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--parts", str(a.parts), "--rate", str(a.rate),
           "--deadline-ms", str(a.deadline_ms), "--delay-ms", str(a.delay_ms), "--model-dir", a.model_dir,
           "--candidate-dir", a.candidate_dir, "--max-tokens", str(a.max_tokens), "--shadow-nice", str(a.shadow_nice),
           "--gate-path", a.gate_path]
    if shadow:
        cmd.append("--shadow")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=a.parts / a.rate * 4 + 900)
    if proc.returncode != 0:
        raise SystemExit(f"the {'shadow' if shadow else 'plain'} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", type=int, default=300)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--deadline-ms", type=float, default=800.0)
    p.add_argument("--delay-ms", type=float, default=1200.0)
    p.add_argument("--load", type=int, default=0, help="busy processes the bench starts beside the station")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternated")
    p.add_argument("--model", default="tiny", help="tiny (the demo GGUF) or an exported model directory")
    p.add_argument("--gate", default="tiny", help="tiny (fitted on synthetic washers), a gate .onnx, or off")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--shadow-nice", type=int, default=15)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shadow", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--candidate-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--gate-path", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a)))
        return 0

    if a.model == "tiny":
        from adfm.appliance.demo import default_cache, ensure_model

        a.model_dir = str(ensure_model(default_cache(), None, lambda s: print(s, file=sys.stderr)))
    else:
        a.model_dir = str(Path(a.model).resolve())
    if a.gate == "tiny":
        from adfm.appliance.demo import default_cache, ensure_gate

        built = ensure_gate(default_cache(), lambda s: print(s, file=sys.stderr))
        if built is None:
            raise SystemExit("--gate tiny needs the trainer extra (torch) to fit the gate")
        a.gate_path = str(built)
    elif a.gate != "off":
        a.gate_path = str(Path(a.gate).resolve())
    a.candidate_dir = str(candidate_copy(Path(a.model_dir), Path(tempfile.mkdtemp(prefix="adfm-candidate-"))))
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = start_load(a.load)
    runs: list[dict] = []
    try:
        time.sleep(5 if a.load else 0)
        for i in range(a.rounds):
            for shadow in ((False, True) if i % 2 == 0 else (True, False)):
                print(f"round {i + 1}: shadow {'on' if shadow else 'off'} under {a.load} busy processes…",
                      file=sys.stderr, flush=True)
                r = run_child(a, shadow)
                runs.append(r)
                print(json.dumps({k: r[k] for k in ("shadow", "decided", "latency_trigger_to_plc_write_ms",
                                                    "deadline_misses", "shadow_answered", "shadow_dropped")}),
                      file=sys.stderr, flush=True)
    finally:
        stop_load(load)

    def summary(on: bool) -> dict:
        chosen = [r for r in runs if r["shadow"] == on]
        return {"runs": len(chosen),
                "p99_ms_per_run": [r["latency_trigger_to_plc_write_ms"].get("p99") for r in chosen],
                "max_ms_per_run": [r["latency_trigger_to_plc_write_ms"].get("max") for r in chosen],
                "deadline_misses": sum(r["deadline_misses"] or 0 for r in chosen),
                "within_deadline_share": [r["plc_writes_within_deadline_share"] for r in chosen],
                "shadow_answered": sum(r["shadow_answered"] for r in chosen),
                "shadow_dropped": sum(r["shadow_dropped"] for r in chosen)}

    out = {
        "bench": "shadow_cost",
        "command": " ".join([sys.executable, *sys.argv]),
        "at": datetime.now(UTC).isoformat(),
        "commit": head,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "how": "the station in line mode (real service, capture thread, journal, bus, PLC link, llama.cpp worker) "
               "against the PLC stand-in process, the gate in screen mode unless --gate off; shadow off and "
               "on (a same-size candidate on every part) alternated under the same load; latency measured at the "
               "PLC from trigger to result write",
        "model": a.model,
        "gate": a.gate,
        "settings": {"parts": a.parts, "rate": a.rate, "deadline_ms": a.deadline_ms, "load_processes": a.load,
                     "rounds": a.rounds, "max_tokens": a.max_tokens, "shadow_nice": a.shadow_nice,
                     "shadow_queue": 8, "unit_nice": _unit_nice(REPO)},
        "summary": {"off": summary(False), "on": summary(True)},
        "runs": runs,
    }
    name = f"shadow_cost-{a.model if a.model == 'tiny' else 'model'}" + (f"-load{a.load}" if a.load else "")
    path = a.out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
