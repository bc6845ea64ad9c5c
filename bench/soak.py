"""Fault soak: parts through the real `adfm-appliance run` process while faults are injected; checks
that nothing is lost and nothing is recorded or delivered twice.

    python bench/soak.py [--parts 10000] [--model DIR] [--gate GATE.onnx] [--scripted]
                         [--worker-kill-every 500] [--camera-loss-every 1000]
                         [--subscriber-restart-every 2000] [--appliance-kills 5]
                         [--disk-full-s 8] [--no-journal-replace] [--max-minutes 120]

The station: a folder camera fed by this script (at most --backlog files waiting, each a new part —
a synthetic washer, every 7th scratched — written under a temporary name and renamed in), the tiny
demo model (or --model; --scripted uses the tests' scripted backend instead of llama.cpp), the
screening gate in screen mode with --gate (or --train-gate: fitted first on synthetic washers), the
journal on its own small ext4 file system (a loop-mounted image, so a full disk is real), the bus
on ipc:// endpoints. A subscriber (StationClient) follows the bus from seq 1 the whole time.

Faults, by parts journaled: the inference worker SIGKILLed every --worker-kill-every parts; the
camera lost every --camera-loss-every parts (its folder vanishes for 2 s); the subscriber closed
and resumed from its next seq every --subscriber-restart-every parts it received; the whole
appliance (its process group) SIGKILLed --appliance-kills times, evenly spread, and restarted;
one disk-full window (at 45 % of the parts, --disk-full-s seconds, the file system kept full);
one journal replaced (at 60 %: intake drained, service stopped, journal moved aside, started again:
a new epoch).

Reported (bench/results/soak.json): parts in; results journaled (over every journal); results the
subscriber received; lost (parts in but in no journal, or journaled but never received) and
duplicated (a part journaled twice, a (epoch, seq) received twice) — both must be 0; decision
latency p50/p99 (the station's per-part `latency_ms.total`, and file-in → subscriber wall time);
the appliance's RSS over time and its growth per 1,000 parts within each process lifetime; the
exact size and fault schedule that ran; the machine and its load average. Needs root for the
loop mount; without it the disk-full window is skipped (and the JSON says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing, suppress
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "soak.json"
STATION = "soak"


def load() -> list[float]:
    return [round(float(x), 2) for x in Path("/proc/loadavg").read_text().split()[:3]]


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


# ---- the journal's file system -----------------------------------------------------------------------


class LoopDisk:
    """A small ext4 file system in an image file, loop-mounted, so the journal can really fill it."""

    def __init__(self, image: Path, mount: Path, size_mb: int) -> None:
        self.image, self.mount, self.size_mb = image, mount, size_mb
        self.mounted = False

    def __enter__(self) -> LoopDisk:
        subprocess.run(["truncate", "-s", f"{self.size_mb}M", str(self.image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)], check=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)], check=True, capture_output=True)
        self.mounted = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.mount)], check=False)
            self.mounted = False

    def fill(self, seconds: float, stop: threading.Event) -> dict:
        """Keep the file system full for `seconds`: whatever the journal frees, a filler takes."""
        filler = self.mount / "filler.bin"
        chunk = b"\0" * (1 << 20)
        t_end = time.monotonic() + seconds
        refills = 0
        with open(filler, "ab") as f:
            while time.monotonic() < t_end and not stop.is_set():
                try:
                    while True:
                        f.write(chunk)
                        f.flush()
                        refills += 1
                except OSError:
                    pass
                with suppress(OSError):
                    small = b"\0" * 4096
                    while True:
                        f.write(small)
                        f.flush()
                time.sleep(0.002)  # take back at once whatever the journal's pruning frees
        size = filler.stat().st_size
        filler.unlink()
        return {"seconds": seconds, "filler_mb_at_end": round(size / 2**20, 1), "refill_rounds": refills}


# ---- the appliance process -------------------------------------------------------------------------------


class Appliance:
    def __init__(self, config: Path, log: Path, env: dict[str, str]) -> None:
        self.config, self.log, self.env = config, log, env
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.unexpected_exits: list[int] = []

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "a") as f:
            f.write(f"\n==== start {self.starts} at {time.time():.3f}\n")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adfm.appliance.cli", "--log-level", "WARNING", "run", "--config",
             str(self.config)],
            cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"),  # noqa: SIM115
            start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the appliance and its worker (the whole process group), as a power cut would."""
        if self.proc is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        with suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def worker_pids(self) -> list[int]:
        import psutil

        if not self.alive():
            return []
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []
        out = []
        for k in kids:
            with suppress(psutil.Error):
                if "resource_tracker" not in " ".join(k.cmdline()):
                    out.append(k.pid)
        return out

    def rss_mb(self) -> tuple[float | None, float | None]:
        import psutil

        if not self.alive():
            return None, None
        try:
            main = psutil.Process(self.proc.pid).memory_info().rss / 2**20
        except psutil.Error:
            return None, None
        worker = None
        for pid in self.worker_pids():
            with suppress(psutil.Error):
                worker = psutil.Process(pid).memory_info().rss / 2**20
        return round(main, 1), None if worker is None else round(worker, 1)


# ---- the camera's folder and the subscriber ----------------------------------------------------------------


def part_png(i: int, size: int) -> bytes:
    """Part i: a synthetic washer, every 7th with a scratch."""
    import cv2

    from adfm.synthetic import make_sample

    sample = make_sample("washer", "scratch" if i % 7 == 0 else None, np.random.default_rng(i), (size, size))
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def train_gate(work: Path, size: int) -> Path:
    """A screening gate fitted on synthetic washers (the parts this soak feeds), like `adfm-train gate`."""
    from adfm.synthetic import make_synthetic_dataset
    from adfm.trainer.gate import GateTrainConfig
    from adfm.trainer.gate import train_gate as fit

    data = make_synthetic_dataset(work / "gate-data", layout="folder", categories=("washer",), n_train=24,
                                  n_test_good=6, n_test_defect=6, size=(size, size), seed=3)
    out = work / "gate" / "gate.onnx"
    fit(GateTrainConfig(data=data, out=out, progress=False))
    return out


def restore_folder(drop: Path, away: Path) -> None:
    """Bring the camera's folder back; the station may have re-made it meanwhile (moving a done
    file into done/), so merge what it holds into the returning folder first."""
    for _ in range(100):
        if not drop.exists():
            break
        for f in sorted(drop.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            target = away / f.relative_to(drop)
            if f.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                with suppress(OSError):
                    os.replace(f, target)
            else:
                with suppress(OSError):
                    f.rmdir()
        with suppress(OSError):
            drop.rmdir()
        time.sleep(0.02)
    os.rename(away, drop)


class Feeder(threading.Thread):
    """Drops parts into the camera's folder, at most `backlog` waiting; pauses on request."""

    def __init__(self, drop: Path, staging: Path, parts: int, backlog: int, size: int) -> None:
        super().__init__(name="feeder", daemon=True)
        self.drop, self.staging, self.parts, self.backlog, self.size = drop, staging, parts, backlog, size
        self.dropped = 0
        self.dropped_at: dict[str, float] = {}
        self.paused = threading.Event()
        self.stop = threading.Event()

    def waiting(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.drop) if e.is_file() and e.name.endswith(".png"))
        except OSError:
            return self.backlog  # the folder is away (camera loss)

    def run(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        while self.dropped < self.parts and not self.stop.is_set():
            if self.paused.is_set() or self.waiting() >= self.backlog or not self.drop.is_dir():
                time.sleep(0.01)
                continue
            name = f"part-{self.dropped:06d}"
            tmp = self.staging / f"{name}.png"
            tmp.write_bytes(part_png(self.dropped, self.size))
            try:
                os.rename(tmp, self.drop / f"{name}.png")
            except OSError:
                continue  # the folder went away between the check and the rename: try again
            self.dropped_at[name] = time.time()
            self.dropped += 1


class Subscriber(threading.Thread):
    """Follows the bus from seq 1; restarts itself (resuming from its next seq) every N results."""

    def __init__(self, publish: str, control: str, restart_every: int | None) -> None:
        super().__init__(name="subscriber", daemon=True)
        self.publish, self.control, self.restart_every = publish, control, restart_every
        self.received: list[tuple[str, int, str, float, float]] = []  # epoch, seq, part, total ms, at
        self.replaced = 0
        self.restarts = 0
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from adfm.appliance.bus.client import JournalReplaced, StationClient, StationError
        from adfm.schema import InspectionResult

        next_seq, epoch, since_restart = 1, None, 0
        while not self.stop.is_set():
            client = StationClient(self.publish, self.control, station=STATION, from_seq=next_seq, epoch=epoch,
                                   timeout_s=2.0, retries=1)
            try:
                client.connect()
                while not self.stop.is_set():
                    for e in client.poll(0.2):
                        if isinstance(e, JournalReplaced):
                            self.replaced += 1
                        elif isinstance(e, InspectionResult):
                            self.received.append((e.epoch, e.seq, e.part_id, e.latency_ms.get("total", 0.0),
                                                  time.time()))
                            since_restart += 1
                    next_seq, epoch = client.next_seq or next_seq, client.epoch
                    if self.restart_every and since_restart >= self.restart_every:
                        since_restart = 0
                        self.restarts += 1
                        break
            except StationError:
                self.errors += 1
                time.sleep(0.5)
            finally:
                if client.next_seq is not None:
                    next_seq, epoch = client.next_seq, client.epoch
                client.close()


def log_counts(log: Path) -> dict[str, int]:
    """How often the appliance logged what the faults should make it log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    keys = {"journal write refused (disk full)": "disk is full", "part not accepted (disk full)": "disk full (",
            "journal writes again": "the journal writes again",
            "worker failure, part retried": "inference attempt 1 failed", "re-delivered part not journaled twice":
            "was journaled before", "camera folder missing": "does not exist", "traceback": "Traceback"}
    return {name: text.count(needle) for name, needle in keys.items()}


def rss_growth(rss: list[dict]) -> list[dict]:
    """The appliance's RSS change per 1,000 parts within each process lifetime: median of the last
    fifth of its samples minus the first fifth, once it is running (start-up samples — before the
    worker exists, the imports still loading — left out)."""
    out = []
    for start in sorted({r["start"] for r in rss}):
        seg = [r for r in rss if r["start"] == start and r["worker_mb"] is not None][1:]
        if len(seg) < 6 or seg[-1]["parts"] - seg[0]["parts"] < 200:
            continue
        k = max(1, len(seg) // 5)
        first, last = seg[:k], seg[-k:]
        dmb = statistics.median(r["appliance_mb"] for r in last) - statistics.median(r["appliance_mb"] for r in first)
        dparts = statistics.median(r["parts"] for r in last) - statistics.median(r["parts"] for r in first)
        out.append({"start": start, "parts": dparts, "appliance_mb_change": round(dmb, 1),
                    "mb_per_1000_parts": round(1000 * dmb / dparts, 2) if dparts else None})
    return out


# ---- reading the journals ----------------------------------------------------------------------------------


def journal_rows(db: Path) -> tuple[str, list[tuple[int, str, str]]]:
    """(epoch, [(seq, state, part_id)]) of one journal file, read-only."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
        epoch = dict(c.execute("SELECT key, value FROM meta").fetchall()).get("epoch", "")
        return epoch, c.execute("SELECT seq, state, part_id FROM parts ORDER BY seq").fetchall()


def done_count(db: Path) -> tuple[int, int]:
    """(done, pending) in a journal being written (0, 0 before it exists)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
            row = c.execute("SELECT SUM(state = 'done'), SUM(state = 'pending') FROM parts").fetchone()
            return int(row[0] or 0), int(row[1] or 0)
    except sqlite3.Error:
        return 0, 0


# ---- the run ---------------------------------------------------------------------------------------------


def write_config(work: Path, state: Path, model: Path, gate: Path | None, drop: Path, scripted: bool,
                 image_quota_mb: float) -> Path:
    config = {
        "station": STATION,
        "state_dir": str(state),
        "model": {"dir": str(model), "max_tokens": 24, "deadline_s": 60, "load_timeout_s": 300},
        "cameras": [{"id": "drop", "url": f"folder:{drop}", "folder": {"settle_s": 0.0, "poll_interval_s": 0.05},
                     "reconnect_min_s": 0.2, "reconnect_max_s": 2.0}],
        "retention": {"days": None, "max_image_mb": image_quota_mb, "min_free_mb": 1, "prune_interval_s": 5},
        "bus": {"publish": f"ipc://{work}/pub", "control": f"ipc://{work}/ctl", "status_interval_s": 1},
    }
    if scripted:
        config["model"]["backend"] = "tests.appliance_fakes:make_backend"
    if gate is not None:
        config["gate"] = {"mode": "screen", "path": str(gate)}
    path = work / "station.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="adfm-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    drop, staging, lost_drop = work / "drop", work / "staging", work / "drop-away"
    drop.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if args.scripted:
        script = work / "script.json"
        script.write_text(json.dumps({"actions": ["no", "yes", "no", "malformed"]}))
        env["ADFM_FAKE_SCRIPT"] = str(script)
        from tests.appliance_fakes import make_model_dir

        model = make_model_dir(work / "model")
    elif args.model is not None:
        model = args.model
    else:
        from adfm.appliance.demo import default_cache, ensure_model

        model = ensure_model(default_cache(), None)

    disk: LoopDisk | None = None
    disk_note = ""
    if args.disk_full_s > 0:
        try:
            disk = LoopDisk(work / "journal-disk.img", work / "journal-disk", args.disk_mb).__enter__()
        except (subprocess.CalledProcessError, OSError) as exc:
            disk, disk_note = None, f"no loop mount ({exc}); the disk-full window was skipped"
    state = (disk.mount / "state") if disk else (work / "state")
    if args.train_gate and args.gate is None:
        t = time.monotonic()
        args.gate = train_gate(work, args.image_size)
        print(f"gate trained in {time.monotonic() - t:.0f} s: {args.gate}", flush=True)
    config = write_config(work, state, model, args.gate, drop, args.scripted, args.image_quota_mb)
    db = state / "journal.sqlite"
    retired: list[Path] = []

    n = args.parts
    appliance = Appliance(config, work / "appliance.log", env)
    feeder = Feeder(drop, staging, n, args.backlog, args.image_size)
    subscriber = Subscriber(f"ipc://{work}/pub", f"ipc://{work}/ctl", args.subscriber_restart_every)
    kill_at = sorted({round(n * k / (args.appliance_kills + 1)) for k in range(1, args.appliance_kills + 1)})
    disk_at = round(n * 0.45) if disk else None
    replace_at = round(n * 0.6) if args.journal_replace else None
    events: list[dict] = []
    rss: list[dict] = []
    t0 = time.monotonic()
    deadline = t0 + args.max_minutes * 60

    def journaled_total() -> tuple[int, int]:
        done, pending = done_count(db)
        return done + sum(done_count(r)[0] for r in retired), pending

    def note(kind: str, **kw) -> None:
        events.append({"t_s": round(time.monotonic() - t0, 2), "event": kind, **kw})
        print(f"[{time.monotonic() - t0:8.1f}s] {kind} {kw}", flush=True)

    appliance.start()
    feeder.start()
    subscriber.start()
    next_worker_kill = args.worker_kill_every or None
    next_camera_loss = args.camera_loss_every or None
    next_rss = 0.0
    filler: threading.Thread | None = None
    fill_stop = threading.Event()
    fill_report: dict = {}
    completed = False
    stopped_early = ""
    try:
        while time.monotonic() < deadline:
            done, pending = journaled_total()
            now = time.monotonic()
            if now >= next_rss:
                next_rss = now + args.rss_every_s
                main_mb, worker_mb = appliance.rss_mb()
                if main_mb is not None:
                    rss.append({"t_s": round(now - t0, 1), "parts": done, "start": appliance.starts,
                                "appliance_mb": main_mb, "worker_mb": worker_mb})
            if not appliance.alive():
                code = appliance.proc.returncode if appliance.proc else None
                appliance.unexpected_exits.append(code)
                note("appliance exited unexpectedly", code=code)
                if code in (2, 3):  # config error / damaged journal: systemd would not restart it either
                    raise SystemExit(f"the appliance refused to start (exit {code}); see {work / 'appliance.log'}")
                appliance.start()
            if next_worker_kill and done >= next_worker_kill:
                pids = appliance.worker_pids()  # none while the appliance starts: try again later
                for pid in pids:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if pids:
                    note("worker SIGKILL", parts=done, pids=pids)
                    next_worker_kill += args.worker_kill_every
            if next_camera_loss and done >= next_camera_loss:
                note("camera lost", parts=done)
                os.rename(drop, lost_drop)
                time.sleep(2.0)
                restore_folder(drop, lost_drop)
                note("camera back")
                next_camera_loss += args.camera_loss_every
            if kill_at and done >= kill_at[0]:
                kill_at.pop(0)
                note("appliance SIGKILL", parts=done)
                appliance.kill()
                appliance.start()
            if disk_at is not None and done >= disk_at and disk is not None:
                disk_at = None
                note("disk full: start", parts=done, seconds=args.disk_full_s)
                filler = threading.Thread(target=lambda: fill_report.update(disk.fill(args.disk_full_s, fill_stop)),
                                          daemon=True)
                filler.start()
            if filler is not None and not filler.is_alive():
                filler = None
                note("disk full: end", **fill_report)
            if replace_at is not None and done >= replace_at and filler is None:
                replace_at = None
                note("journal replace: draining", parts=done)
                feeder.paused.set()
                drain_until = time.monotonic() + 300
                while (feeder.waiting() or journaled_total()[1]) and time.monotonic() < drain_until:
                    time.sleep(0.1)
                appliance.stop()
                aside = state.parent / f"journal-epoch-{len(retired) + 1}"
                aside.mkdir()
                for f in state.glob("journal.sqlite*"):
                    shutil.move(str(f), aside / f.name)
                retired.append(aside / "journal.sqlite")
                appliance.start()
                feeder.paused.clear()
                note("journal replaced", parts=done)
            if feeder.dropped >= n and not feeder.waiting() and not pending and done >= n and filler is None:
                got = len(subscriber.received)
                if got >= done:
                    completed = True
                    break
            time.sleep(0.05)
    except KeyboardInterrupt as exc:
        stopped_early = f"interrupted ({exc})"
    finally:
        settle_until = time.monotonic() + 20
        while len(subscriber.received) < journaled_total()[0] and time.monotonic() < settle_until:
            time.sleep(0.2)
        fill_stop.set()
        feeder.stop.set()
        exit_code = appliance.stop()
        subscriber.stop.set()
        subscriber.join(10)
        elapsed = time.monotonic() - t0
        journals = [journal_rows(p) for p in [*retired, db] if p.exists()]
        if disk:
            disk.__exit__()

    # ---- accounting ----------------------------------------------------------------------------------
    journaled: list[tuple[str, int, str]] = [(ep, seq, pid) for ep, rows in journals for seq, st, pid in rows
                                             if st == "done"]
    pending_left = sum(1 for _, rows in journals for _, st, _ in rows if st == "pending")
    part_ids = [pid for _, _, pid in journaled]
    dropped_ids = set(feeder.dropped_at)
    received_keys = [(ep, seq) for ep, seq, *_ in subscriber.received]
    journaled_keys = {(ep, seq) for ep, seq, _ in journaled}
    by_key_part = {(ep, seq): pid for ep, seq, pid in journaled}
    wrong_part = sum(1 for ep, seq, pid, *_ in subscriber.received if by_key_part.get((ep, seq)) not in (None, pid))
    totals = [ms for *_, ms, _ in subscriber.received]
    e2e = [1000 * (at - feeder.dropped_at[pid]) for _, _, pid, _, at in subscriber.received
           if pid in feeder.dropped_at]
    growth = rss_growth(rss)
    return {
        "bench": "soak",
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "loadavg_1_5_15_end": load(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "completed": completed,
        "stopped_early": stopped_early or (None if completed else f"--max-minutes {args.max_minutes} reached"),
        "elapsed_s": round(elapsed, 1),
        "size_run": {"parts": n, "backlog": args.backlog, "image_px": args.image_size,
                     "model": "scripted backend (no llama.cpp)" if args.scripted else str(model),
                     "gate": str(args.gate) if args.gate else "off",
                     "journal_fs": f"ext4 loop image, {args.disk_mb} MB" if disk else "work dir (no loop mount)",
                     "image_quota_mb": args.image_quota_mb},
        "fault_schedule": {"worker_kill_every": args.worker_kill_every, "camera_loss_every": args.camera_loss_every,
                           "subscriber_restart_every": args.subscriber_restart_every,
                           "appliance_kills": args.appliance_kills, "disk_full_s": args.disk_full_s if disk else 0,
                           "journal_replaced": bool(args.journal_replace), "note": disk_note},
        "faults_done": {k: sum(1 for e in events if e["event"] == k) for k in
                        ("worker SIGKILL", "camera lost", "appliance SIGKILL", "disk full: start", "journal replaced")}
        | {"subscriber restarts": subscriber.restarts, "subscriber saw journal replaced": subscriber.replaced},
        "parts_in": feeder.dropped,
        "results_journaled": len(journaled),
        "results_received": len(subscriber.received),
        "lost": {"parts_in_no_journal": len(dropped_ids - set(part_ids)),
                 "journaled_not_received": len(journaled_keys - set(received_keys)),
                 "pending_left": pending_left},
        "duplicated": {"part_journaled_twice": len(part_ids) - len(set(part_ids)),
                       "received_twice": len(received_keys) - len(set(received_keys)),
                       "received_with_wrong_part": wrong_part},
        "latency_ms": {"station_total_p50": pct(totals, 50), "station_total_p99": pct(totals, 99),
                       "file_in_to_subscriber_p50": pct(e2e, 50), "file_in_to_subscriber_p99": pct(e2e, 99)},
        "rss": {"samples": len(rss), "growth_per_process_lifetime": growth,
                "appliance_mb_min_max": [min((r["appliance_mb"] for r in rss), default=None),
                                         max((r["appliance_mb"] for r in rss), default=None)],
                "series": rss[:: max(1, len(rss) // 200)]},
        "appliance": {"starts": appliance.starts, "unexpected_exits": appliance.unexpected_exits,
                      "last_exit_code": exit_code, "log_lines": log_counts(work / "appliance.log")},
        "subscriber_errors": subscriber.errors,
        "events": events,
        "workdir": str(work),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", type=int, default=10_000)
    p.add_argument("--model", type=Path, help="an exported model directory (default: the tiny demo model)")
    p.add_argument("--scripted", action="store_true", help="the tests' scripted backend instead of llama.cpp")
    p.add_argument("--gate", type=Path, help="a gate .onnx: run with the gate in screen mode")
    p.add_argument("--train-gate", action="store_true", help="fit a gate on synthetic washers first and use it")
    p.add_argument("--worker-kill-every", type=int, default=500)
    p.add_argument("--camera-loss-every", type=int, default=1000)
    p.add_argument("--subscriber-restart-every", type=int, default=2000)
    p.add_argument("--appliance-kills", type=int, default=5)
    p.add_argument("--disk-full-s", type=float, default=8.0, help="0: no disk-full window")
    p.add_argument("--no-journal-replace", action="store_false", dest="journal_replace")
    p.add_argument("--disk-mb", type=int, default=256, help="size of the journal's file system")
    p.add_argument("--image-quota-mb", type=float, default=96.0, help="retention.max_image_mb")
    p.add_argument("--backlog", type=int, default=4, help="files waiting in the camera folder at most")
    p.add_argument("--image-size", type=int, default=160, help="side of the square part images")
    p.add_argument("--rss-every-s", type=float, default=2.0)
    p.add_argument("--max-minutes", type=float, default=120.0)
    p.add_argument("--workdir", type=Path, help="keep the run here (default: a new temporary folder)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Stop cleanly (appliance stopped, file system unmounted, JSON written) on SIGTERM or SIGINT,
    # also when started in the background, where SIGINT is ignored by default.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("completed", "parts_in", "results_journaled", "results_received", "lost",
                                       "duplicated", "latency_ms", "faults_done")}
    print(json.dumps(summary, indent=2))
    ok = (report["completed"] and not any(report["lost"].values()) and not any(report["duplicated"].values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
