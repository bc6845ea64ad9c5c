"""Station health: per-stage latencies, parts/min, verdict counts, cameras, the worker — and metrics.

The pipeline records into `Health` from the main loop; the bus thread reads `snapshot()` for the
status topic and status requests; the Prometheus collector reads the same snapshot, so the bus,
the text file and the HTTP endpoint never disagree.

Two levels of health:
- `StationStatus.healthy` (what operators see) is False while any problem stands — a camera
  disconnected or stalled, a full disk, a failing worker.
- `pipeline_ok()` (what the systemd watchdog is fed on) is False only for failures a restart of
  the service can cure: the main loop stuck, the bus thread gone, the worker unable to start. A
  camera problem does not stop the watchdog (the capture thread already reconnects, and a restart
  cannot plug a cable back in), nor does a full disk (a restart cannot free space: the pipeline
  holds the parts back, raises the alarm and resumes once the journal can write).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from adfm.schema import CameraStatus, GateState, InspectionResult, StationStatus

from .logs import restate

log = logging.getLogger(__name__)

STAGES = ("capture", "journal", "journal_wait", "gate", "resize", "vlm", "model", "parse", "complete", "publish",
          "total", "trigger_to_frame", "trigger_to_decision")
PARTS_RATE_WINDOW_S = 300.0

#: problems that mean the service itself is broken (watchdog stops), by key prefix. Journal and
#: disk problems are not among them: a restart cannot free a disk, so the service stays up,
#: reports the problem and resumes by itself when the journal can write again.
CRITICAL_PREFIXES = ("worker", "bus", "loop")


class Health:
    """Thread-safe health record of one station."""

    def __init__(
        self,
        station: str,
        *,
        model_id: str = "",
        window: int = 500,
        camera_stall_s: float = 60.0,
        verdict_counts: dict[str, int] | None = None,
        last_seq: Callable[[], int] | None = None,
        cameras: Callable[[], list[CameraStatus]] | None = None,
        worker: Callable[[], tuple[bool, int]] | None = None,
        counters: Callable[[], dict[str, float]] | None = None,
        gates: Callable[[], list[GateState]] | None = None,
    ) -> None:
        self.station = station
        self.model_id = model_id
        self.recipe = ""  # the product recipe in use, set by the line
        self.camera_stall_s = camera_stall_s
        self._lock = threading.Lock()
        self._latency: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}
        self._done_at: deque[float] = deque(maxlen=100_000)
        self._counts: dict[str, int] = dict(verdict_counts or {})
        self._problems: dict[str, str] = {}
        self._raised: dict[str, tuple[float, int]] = {}  # alarm → (raised at, times reported since)
        self._started = time.monotonic()
        self._heartbeat = time.monotonic()
        self._last_seq = last_seq or (lambda: 0)
        self._cameras = cameras or (lambda: [])
        self._worker = worker or (lambda: (False, 0))
        self._counters = counters or (lambda: {})  # the mode's running counters (line: misses, stalls, …)
        self.gates = gates or (lambda: [])  # each recipe's gate: bank, threshold, drift (system/gate_watch.py)

    # ---- recording (main loop) ----------------------------------------------------------------

    def record_part(self, result: InspectionResult, extra_ms: dict[str, float] | None = None) -> None:
        with self._lock:
            for stage, ms in {**result.latency_ms, **(extra_ms or {})}.items():
                if stage in self._latency:
                    self._latency[stage].append(float(ms))
            self._done_at.append(time.monotonic())
            self._counts[result.verdict] = self._counts.get(result.verdict, 0) + 1

    def record_stage(self, stage: str, ms: float) -> None:
        with self._lock:
            if stage in self._latency:
                self._latency[stage].append(float(ms))

    def problem(self, key: str, text: str) -> None:
        """Raise (or update) a standing problem, e.g. key 'camera.cam0' or 'journal'. The log says it
        once when raised, then again only at the 10th, 100th … report, with the count."""
        now = time.monotonic()
        with self._lock:
            self._problems[key] = text
            since, n = self._raised.get(key, (now, 0))
            self._raised[key] = (since, n + 1)
        if n == 0:
            log.warning("alarm %s: %s", key, text)
        elif restate(n + 1):
            log.warning("alarm %s still raised (%d reports in %.0f s): %s", key, n + 1, now - since, text)
        else:
            log.debug("alarm %s: %s", key, text)

    def clear(self, key: str) -> None:
        with self._lock:
            text = self._problems.pop(key, None)
            since, n = self._raised.pop(key, (0.0, 0))
        if text is not None:
            log.info("alarm %s cleared after %.0f s (%d report(s); last: %s)", key, time.monotonic() - since, n, text)

    def heartbeat(self) -> None:
        """The main loop is alive (called every loop turn and while waiting on the model)."""
        with self._lock:
            self._heartbeat = time.monotonic()

    # ---- reading (any thread) -----------------------------------------------------------------

    def percentiles(self, q: float) -> dict[str, float]:
        with self._lock:
            data = {s: list(v) for s, v in self._latency.items() if v}
        return {s: round(float(np.percentile(v, q)), 3) for s, v in data.items()}

    def parts_per_min(self) -> float:
        now = time.monotonic()
        span = min(PARTS_RATE_WINDOW_S, now - self._started)
        if span <= 0:
            return 0.0
        with self._lock:
            n = sum(1 for t in self._done_at if now - t <= PARTS_RATE_WINDOW_S)
        return round(n * 60.0 / span, 3)

    def _camera_problems(self, cams: Iterable[CameraStatus]) -> dict[str, str]:
        out = {}
        for c in cams:
            if not c.connected:
                out[f"camera.{c.camera}"] = f"camera {c.camera} disconnected" + (
                    f": {c.last_error}" if c.last_error else ""
                )
            elif c.streaming and c.last_frame_age_s is not None and c.last_frame_age_s > self.camera_stall_s:
                # a folder camera waits for files: a pause between parts is normal, not a stall
                out[f"camera.{c.camera}"] = f"camera {c.camera}: no frame for {c.last_frame_age_s:.0f} s"
        return out

    def snapshot(self) -> StationStatus:
        cams = self._safe(self._cameras, [])
        alive, restarts = self._safe(self._worker, (False, 0))
        with self._lock:
            problems = dict(self._problems)
            counts = dict(self._counts)
        problems.update(self._camera_problems(cams))
        return StationStatus(
            station=self.station,
            healthy=not problems,
            last_seq=self._safe(self._last_seq, 0),
            cameras=cams,
            worker_alive=alive,
            worker_restarts=restarts,
            parts_per_min=self.parts_per_min(),
            verdict_counts=counts,
            latency_ms_p50=self.percentiles(50),
            latency_ms_p95=self.percentiles(95),
            model_id=self.model_id,
            problems=[problems[k] for k in sorted(problems)],
            recipe=self.recipe,
            counters=self._safe(self._counters, {}),
            gates=self._safe(self.gates, []),
        )

    def pipeline_ok(self, max_heartbeat_age_s: float = 60.0) -> bool:
        """Whether the watchdog should be fed: no critical problem and a recent heartbeat."""
        with self._lock:
            critical = any(k.startswith(CRITICAL_PREFIXES) for k in self._problems)
            fresh = time.monotonic() - self._heartbeat <= max_heartbeat_age_s
        return fresh and not critical

    @staticmethod
    def _safe(fn, default):
        try:
            return fn()
        except Exception:
            return default


# ---- Prometheus -------------------------------------------------------------------------------


class _StationCollector:
    """Exposes a station's snapshot as Prometheus metrics (prometheus_client custom collector)."""

    def __init__(self, health: Health, extra: Callable[[], dict[str, float]] | None = None):
        self.health = health
        self.extra = extra

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.health.snapshot()
        station = [s.station]

        def gauge(name: str, doc: str, value: float, labels: tuple[str, ...] = (), values=()):
            g = GaugeMetricFamily(name, doc, labels=["station", *labels])
            g.add_metric([*station, *values], value)
            return g

        yield gauge("adfm_healthy", "1 when the station reports no problem", float(s.healthy))
        yield gauge("adfm_last_seq", "newest journaled seq with a result", float(s.last_seq))
        yield gauge("adfm_parts_per_minute", "inspected parts per minute (last 5 min)", s.parts_per_min)
        yield gauge("adfm_worker_alive", "1 while the inference worker runs", float(s.worker_alive))
        c = CounterMetricFamily("adfm_worker_restarts", "inference worker restarts", labels=["station"])
        c.add_metric(station, float(s.worker_restarts))
        yield c
        c = CounterMetricFamily("adfm_parts", "inspected parts by verdict", labels=["station", "verdict"])
        for verdict, n in sorted(s.verdict_counts.items()):
            c.add_metric([*station, verdict], float(n))
        yield c
        for q, values in (("0.5", s.latency_ms_p50), ("0.95", s.latency_ms_p95)):
            g = GaugeMetricFamily(
                f"adfm_stage_latency_ms_p{int(float(q) * 100)}",
                f"per-stage latency, {q} quantile over recent parts (ms)",
                labels=["station", "stage"],
            )
            for stage, ms in sorted(values.items()):
                g.add_metric([*station, stage], ms)
            yield g
        cams = {
            "adfm_camera_connected": ("1 while the camera delivers", lambda x: float(x.connected)),
            "adfm_camera_fps": ("frames per second", lambda x: x.fps),
            "adfm_camera_last_frame_age_seconds": (
                "seconds since the last frame", lambda x: -1.0 if x.last_frame_age_s is None else x.last_frame_age_s
            ),
        }
        for name, (doc, get) in cams.items():
            g = GaugeMetricFamily(name, doc, labels=["station", "camera"])
            for cam in s.cameras:
                g.add_metric([*station, cam.camera], get(cam))
            yield g
        for field in ("captured", "dropped", "errors", "reconnects"):
            c = CounterMetricFamily(f"adfm_camera_{field}", f"camera frames {field}", labels=["station", "camera"])
            for cam in s.cameras:
                c.add_metric([*station, cam.camera], float(getattr(cam, field)))
            yield c
        g = GaugeMetricFamily("adfm_line", "the line's running counters (deadline misses, missed ejections, "
                              "decision-loop stall ms, PLC poll gap and pulses, VLM jobs dropped)",
                              labels=["station", "counter"])
        for name, value in sorted(s.counters.items()):
            g.add_metric([*station, name], float(value))
        yield g
        gate_figures = {
            "adfm_gate_threshold": ("the recipe's gate threshold", lambda x: x.threshold),
            "adfm_gate_bank_size": ("patches in the recipe's gate memory bank", lambda x: x.bank_size),
            "adfm_gate_learned_changes": ("bank versions made on the line from operator verdicts",
                                          lambda x: x.learned_changes),
            "adfm_gate_drift_raised": ("1 while the recipe's gate scores drift from commissioning",
                                       lambda x: float(x.drift_raised)),
            "adfm_gate_drift_statistic": ("KS D of the latest gate scores against the reference",
                                          lambda x: x.drift_statistic),
            "adfm_gate_drift_critical": ("KS D above which the drift alarm is raised", lambda x: x.drift_critical),
        }
        for name, (doc, get) in gate_figures.items():
            g = GaugeMetricFamily(name, doc, labels=["station", "recipe"])
            for gs in s.gates:
                value = get(gs)
                if value is not None:
                    g.add_metric([*station, gs.recipe], float(value))
            yield g
        for name, value in (self.extra() if self.extra else {}).items():
            yield gauge(name, name.replace("_", " "), value)


class Metrics:
    """A Prometheus registry over a station's health: written to a text file and/or served."""

    def __init__(self, health: Health, extra: Callable[[], dict[str, float]] | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StationCollector(health, extra))
        self._server = None

    def write_textfile(self, path: Path) -> None:
        """Rewrite the text file atomically (for node_exporter's textfile collector)."""
        from prometheus_client import write_to_textfile

        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(port, addr=addr, registry=self.registry)

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
