"""The station service (`adfm-appliance run`): wires config, journal, bus, cameras, gate and a mode.

`start()` is a short list of named steps; the mode — free-run (frames as they come) or line
(triggers, deadlines, the PLC) — is the only thing that differs, and both run on the same
inspection core (docs/architecture.md). The main loop only beats the heartbeat, feeds the systemd
watchdog while the station is sound, and steps the mode; pruning the journal, writing metrics
and the systemd status line run in a housekeeping thread, so nothing slow sits in the loop that
decides. SIGTERM/SIGINT stop it between parts, or abandon the part in hand (it stays pending in
the journal and is finished on the next start), so a stop never waits for a slow model.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adfm.schema import InspectionResult

from .bus.server import ResultBus
from .config.station import ModelLimits, StationConfig, model_limits
from .inspection.core import GenerationOptions, ModelInfo, load_reference
from .inspection.live_gate import GateSet
from .inspection.worker import BackendSpec, InferenceWorker
from .journal.store import (
    Journal,
    JournalCorrupt,
    JournalError,
    JournalFullError,
    RetentionPolicy,
    journal_summary,
)
from .models.control import ModelControl, with_store_model
from .models.store import ModelStore
from .modes.freerun import Camera, FreeRunStation
from .modes.line_station import LineStation
from .modes.outputs import Outputs
from .system.gate_watch import GateWatch
from .system.health import Health, Metrics
from .system.logs import part_line
from .system.notify import SystemdNotifier
from .system.priority import lower_this_thread

log = logging.getLogger(__name__)


class ServiceStopping(Exception):
    """Raised inside a wait to abandon the part in hand when a stop was requested."""


#: exit statuses of `adfm-appliance run`; the unit's RestartPreventExitStatus lists those a
#: restart cannot fix (a config to edit, a damaged journal to recover)
EXIT_FAIL, EXIT_CONFIG, EXIT_JOURNAL = 1, 2, 3
#: results kept for the end-of-run summary (the journal keeps them all); bounds the service's memory
SUMMARY_RESULTS = 100


class ServiceError(RuntimeError):
    """The service cannot start or go on; the message says what to fix, `exit_code` whether a
    restart could help (EXIT_FAIL) or not (EXIT_CONFIG, EXIT_JOURNAL)."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunSummary:
    """What one run did: parts, verdicts, latency percentiles, where the results are."""

    station: str
    parts: int
    verdicts: dict[str, int]
    latency_ms_p50: dict[str, float]
    latency_ms_p95: dict[str, float]
    first_seq: int | None
    last_seq: int
    worker_restarts: int
    journal: dict[str, Any]
    bus: dict[str, list[str]]
    stopped_because: str
    results: list[InspectionResult] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "station": self.station,
            "parts": self.parts,
            "verdicts": self.verdicts,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "worker_restarts": self.worker_restarts,
            "journal": self.journal,
            "bus": self.bus,
            "stopped_because": self.stopped_because,
        }


class Service:
    """One station's service. `run()` starts everything, loops, and always cleans up.

    `cameras` replaces the capture workers built from the config (tests, tools);
    `backend` replaces the inference backend (tests use scripted ones).
    """

    def __init__(
        self,
        config: StationConfig,
        *,
        cameras: dict[str, Camera] | None = None,
        backend: BackendSpec | None = None,
        notifier: SystemdNotifier | None = None,
        on_result: Callable[[InspectionResult], None] | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier or SystemdNotifier()
        self.on_result = on_result
        self._cameras_given = cameras
        self._backend = backend
        self._stop = threading.Event()
        self._stop_reason = ""
        self.journal: Journal | None = None
        self.bus: ResultBus | None = None
        self.health: Health | None = None
        self.metrics: Metrics | None = None
        self.gates = GateSet()
        self.gate_watch: GateWatch | None = None
        self.outputs = Outputs()
        self.mode: FreeRunStation | LineStation | None = None
        self.mqtt: Any = None  # MqttPublisher when the station file has an `mqtt` section
        self.cameras: dict[str, Camera] = {}
        self._housekeeper: threading.Thread | None = None
        self._housekeeping_stop = threading.Event()
        self._results: deque[InspectionResult] = deque(maxlen=SUMMARY_RESULTS)
        self._parts = 0
        self._verdicts: dict[str, int] = {}
        self._first_seq: int | None = None
        self.model_control: ModelControl | None = None

    # ---- the mode's parts, by name (tests, tools, benchmarks) ------------------------------------

    @property
    def line(self) -> LineStation | None:
        return self.mode if isinstance(self.mode, LineStation) else None

    @property
    def pipeline(self) -> Any:
        return self.mode.pipeline if isinstance(self.mode, FreeRunStation) else None

    @property
    def worker(self) -> InferenceWorker | None:
        return self.mode.worker if isinstance(self.mode, FreeRunStation) else None

    # ---- control --------------------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop (safe from signal handlers and other threads)."""
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def _install_signals(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        old = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            old.append((sig, signal.getsignal(sig)))
            signal.signal(sig, lambda s, _f: self.request_stop(f"{signal.Signals(s).name} received"))
        return old

    # ---- start-up -------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the model, open the journal, load references and gate, build the mode, start."""
        config_model_dir = self.config.model.dir
        self.config = with_store_model(self.config)  # a promoted model outlives a restart
        model, limits = self._check_model()
        self._open_journal()
        references = self._load_references(model)
        gate = self._load_gate()
        self._make_cameras()
        self._make_health(model)
        self._make_outputs()
        self.mode = self._make_mode(model, limits, references, gate)
        self._make_gate_watch()
        assert self.bus is not None
        self.model_control = ModelControl(
            self.config, self.journal, ModelStore.for_state_dir(self.config.journal_dir), active=model,
            line=self.line, backend=self._backend, publish=self.bus.shadow_publisher(), health=self.health,
            config_model_dir=config_model_dir)
        self.bus.on_model = self.model_control.handle
        self.bus.start()
        self._start_mqtt()
        self._start_metrics()
        self._start_cameras()
        self.mode.start()
        if self.gate_watch is not None:
            self.gate_watch.start()
        self.model_control.start()
        self._start_housekeeping()
        # Everything loaded so far lives as long as the service: keep it out of the garbage
        # collector's full passes, which otherwise stop every thread for tens of ms on a busy CPU.
        gc.freeze()

    def _check_model(self) -> tuple[ModelInfo, ModelLimits]:
        """The model directory's manifest (hashes of changed files checked), its prompt, its limits."""
        from adfm.manifest import ManifestError, load_model_dir

        from .inspection.model_check import CACHE_NAME, verify_model_dir

        cfg = self.config
        try:
            if cfg.model.check_hashes:  # hashes only files changed since the last full check
                manifest, _ = verify_model_dir(cfg.model.dir, cfg.journal_dir / CACHE_NAME)
            else:
                manifest = load_model_dir(cfg.model.dir, check_hashes=False)
        except ManifestError as exc:
            raise ServiceError(f"model.dir: {exc}") from exc
        except OSError as exc:
            raise ServiceError(f"model.dir: {cfg.model.dir}: {exc.strerror or exc}") from exc
        if cfg.model.prompt_version and cfg.model.prompt_version != manifest.prompt_version:
            raise ServiceError(
                f"model.prompt_version {cfg.model.prompt_version!r} differs from the manifest's "
                f"{manifest.prompt_version!r}"
            )
        limits = model_limits(cfg, manifest, "station config")
        if limits.problems:
            raise ServiceError("; ".join(limits.problems))
        for warning in limits.warnings:
            log.warning("%s", warning)
        return ModelInfo(manifest.model_id, manifest.prompt_version, manifest.min_pixels, manifest.max_pixels), limits

    def _open_journal(self) -> None:
        cfg = self.config
        r = cfg.retention
        retention = RetentionPolicy(
            max_age_days=r.days,
            max_image_bytes=None if r.max_image_mb is None else int(r.max_image_mb * 1024 * 1024),
            min_free_bytes=int(r.min_free_mb * 1024 * 1024),
        )
        try:
            self.journal = Journal(cfg.journal_dir, cfg.station, image_format=r.image_format, retention=retention)
            self.journal.prune()
        except JournalCorrupt as exc:
            raise ServiceError(str(exc), EXIT_JOURNAL) from exc
        except JournalFullError as exc:
            raise ServiceError(str(exc), EXIT_FAIL) from exc
        except JournalError as exc:
            raise ServiceError(str(exc)) from exc

    def _load_references(self, model: ModelInfo) -> dict[str, np.ndarray]:
        references = {}
        for product in self.config.products:
            if product.reference is not None:
                try:
                    references[product.name] = load_reference(product.reference, model)
                except (OSError, ValueError) as exc:
                    raise ServiceError(f"products.{product.name}.reference: {product.reference}: {exc}") from exc
        return references

    def _load_gate(self) -> Any:
        cfg = self.config
        if cfg.gate.mode == "off":
            return None
        assert cfg.gate.path is not None
        try:
            return self.gates.load(cfg.gate.path)
        except Exception as exc:
            raise ServiceError(f"gate.path: cannot load {cfg.gate.path}: {exc}") from exc

    def _make_gate_watch(self) -> None:
        """Drift and learning for every gate the mode scores with (each recipe's file, or gate.path)."""
        cfg = self.config
        recipe_gates: dict[str, Path] = {}
        if cfg.line is not None and cfg.recipes:
            for r in cfg.recipes:
                path = r.gate_path or cfg.gate.path
                if (r.gate_mode or cfg.gate.mode) != "off" and path is not None:
                    recipe_gates[r.name] = path
        elif cfg.gate.mode != "off" and cfg.gate.path is not None:
            recipe_gates["default" if cfg.line is not None else ""] = cfg.gate.path
        if not recipe_gates:
            return
        assert self.journal is not None and self.health is not None
        self.gate_watch = GateWatch(cfg.gate, self.journal, self.health, self.gates, recipe_gates)
        self.outputs.add("gate_watch", recorded=self.gate_watch.recorded)
        self.health.gates = self.gate_watch.states

    def _make_cameras(self) -> None:
        if self._cameras_given is not None:
            self.cameras = dict(self._cameras_given)
        else:
            from adfm.camera import CameraWorker

            self.cameras = {c.id: CameraWorker(c.camera_config()) for c in self.config.cameras}

    def _make_health(self, model: ModelInfo) -> None:
        cfg, journal = self.config, self.journal
        assert journal is not None
        self.health = Health(
            cfg.station, model_id=model.model_id, window=cfg.health.window, camera_stall_s=cfg.health.camera_stall_s,
            verdict_counts=journal.counts(), last_seq=journal.last_seq,
            cameras=lambda: [c.status() for c in self.cameras.values()],
            worker=lambda: self.mode.worker_state() if self.mode is not None else (False, 0),
            counters=lambda: {**(self.mode.counters() if self.mode is not None else {}),
                              **(self.model_control.counters() if self.model_control is not None else {})},
        )

    def _make_outputs(self) -> None:
        """The bus, then the service's own summary: every mode's results leave through these."""
        self.bus = self._make_bus()
        self.outputs.add("bus", recorded=self.bus.publish)
        self.mqtt = self._make_mqtt()
        if self.mqtt is not None:  # it reads the journal itself; the loop only wakes it
            self.outputs.add("mqtt", recorded=self.mqtt.wake)
        self.outputs.add("summary", recorded=self._on_result)

    def _make_mqtt(self) -> Any:
        """The MQTT publisher (the `mqtt` extra) when configured; imported only then."""
        section = self.config.mqtt
        if section is None:
            return None
        assert self.journal is not None and self.health is not None
        try:
            from .mqtt.publisher import MqttPublisher
        except ImportError as exc:
            raise ServiceError(f"mqtt: needs the paho-mqtt library (pip install 'adfm[mqtt]'): {exc}") from exc
        return MqttPublisher(section, self.config.station, self.journal, self.health)

    def _start_mqtt(self) -> None:
        if self.mqtt is not None:
            try:
                self.mqtt.start()
            except (JournalError, OSError) as exc:
                raise ServiceError(f"mqtt: cannot start the publisher: {exc}", EXIT_FAIL) from exc

    def _make_mode(self, model: ModelInfo, limits: ModelLimits, references: dict[str, np.ndarray],
                   gate: Any) -> FreeRunStation | LineStation:
        cfg, journal, health = self.config, self.journal, self.health
        assert journal is not None and health is not None and self.bus is not None
        if cfg.line is not None:
            line = LineStation(cfg, journal=journal, health=health, outputs=self.outputs,
                               camera=self.cameras[cfg.line_camera], model=model, limits=limits,
                               references=references, gate=gate, backend=self._backend, load_gate=self.gates.load)
            self.bus.on_recipe = line.select_recipe
            return line
        worker = InferenceWorker(
            # the hashes were checked once above: restarts after a crash stay quick
            self._backend or BackendSpec(cfg.model.backend, cfg.model.backend_kwargs(cfg.model.dir, limits.n_ctx)),
            deadline_s=cfg.model.deadline_s,
            load_timeout_s=cfg.model.load_timeout_s,
            on_wait=self.tick,
        )
        return FreeRunStation(
            cfg.station, journal=journal, health=health, outputs=self.outputs, cameras=self.cameras, worker=worker,
            model=model, generation=GenerationOptions(max_tokens=limits.max_tokens, temperature=cfg.model.temperature),
            products={c.id: (p.name if (p := cfg.product_for(c.id)) else None) for c in cfg.cameras},
            references=references, gate=gate, gate_mode=cfg.gate.mode,
            dedupe_cameras={c.id for c in cfg.cameras if c.kind == "folder"},
        )

    def _start_metrics(self) -> None:
        cfg, journal, health = self.config, self.journal, self.health
        assert journal is not None and health is not None
        if cfg.health.prometheus_file or cfg.health.prometheus_port:
            mqtt = self.mqtt
            self.metrics = Metrics(health, lambda: {"adfm_journal_image_bytes": float(journal.image_bytes),
                                                    **(mqtt.metrics() if mqtt is not None else {})})
            if cfg.health.prometheus_port:
                self.metrics.serve(cfg.health.prometheus_port, cfg.health.prometheus_addr)

    def _start_cameras(self) -> None:
        for cam in self.cameras.values():
            start = getattr(cam, "start", None)
            if start is not None:
                start()

    def _make_bus(self) -> ResultBus:
        from .bus.keys import CurveKeyError, load_server_curve

        b = self.config.bus
        curve = None
        if b.curve is not None:
            try:
                curve = load_server_curve(b.curve.server_secret, b.curve.authorized_clients)
            except CurveKeyError as exc:
                raise ServiceError(f"bus.curve: {exc}") from exc
        assert self.journal is not None and self.health is not None
        return ResultBus(
            self.config.station,
            self.journal,
            self.health.snapshot,
            publish=b.publish,
            control=b.control,
            curve=curve,
            insecure=b.insecure,
            status_interval_s=b.status_interval_s,
            send_hwm=b.send_hwm,
            io_threads=b.io_threads,
            plain_roles=b.plain_roles,
            control_hwm=b.control_hwm,
        )

    def _on_result(self, result: InspectionResult) -> None:
        """Count the result; keep only the last SUMMARY_RESULTS (the journal has every one)."""
        self._results.append(result)
        if result.revision:  # a line's later verdict on a part already counted
            log.debug("revision %d of %s", result.revision, part_line(result))
            if self.on_result is not None:
                self.on_result(result)
            return
        self._parts += 1
        log.info("%s", part_line(result))
        self._verdicts[result.verdict] = self._verdicts.get(result.verdict, 0) + 1
        if self._first_seq is None:
            self._first_seq = result.seq
        if self.on_result is not None:
            self.on_result(result)

    # ---- loop -----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Heartbeat; feed the watchdog while sound; abandon the wait when a stop is requested."""
        assert self.health is not None
        self.health.heartbeat()
        if self.bus is not None and not self.bus.alive:
            self.health.problem("bus", "the result bus thread has stopped")
        if self.mqtt is not None and not self.mqtt.alive:
            self.health.problem("mqtt", "the MQTT publisher thread has stopped")
        if self.notifier.watchdog_due() and self.health.pipeline_ok():
            self.notifier.watchdog()
        if self._stop.is_set():
            raise ServiceStopping(self._stop_reason)

    # ---- housekeeping (its own thread) ----------------------------------------------------------

    def _start_housekeeping(self) -> None:
        self._housekeeper = threading.Thread(target=self._housekeeping_loop, name="adfm-housekeeping", daemon=True)
        self._housekeeper.start()

    def _housekeeping_loop(self) -> None:
        lower_this_thread()
        next_prune = next_metrics = next_status = 0.0
        while not self._housekeeping_stop.wait(0.5):
            now = time.monotonic()
            if now >= next_prune:
                next_prune = now + self.config.retention.prune_interval_s
                self._prune()
            if self.metrics is not None and self.config.health.prometheus_file and now >= next_metrics:
                next_metrics = now + self.config.health.prometheus_interval_s
                self.write_metrics()
            if self.notifier.enabled and now >= next_status:
                next_status = now + 10.0
                self._status_line()

    def _prune(self) -> None:
        assert self.journal is not None and self.health is not None
        try:
            report = self.journal.prune()
            if report.images_removed:
                log.info("retention: removed %d images (%d bytes)", report.images_removed, report.bytes_freed)
            self.health.clear("journal.retention")
        except (JournalError, OSError) as exc:
            self.health.problem("journal.retention", f"retention pruning failed: {exc}")

    def _status_line(self) -> None:
        assert self.health is not None
        s = self.health.snapshot()
        counts = ", ".join(f"{k} {v}" for k, v in sorted(s.verdict_counts.items())) or "no parts yet"
        self.notifier.status(f"last seq {s.last_seq}; {counts}; {s.parts_per_min:g} parts/min"
                             + ("" if s.healthy else f"; problems: {'; '.join(s.problems)}"))

    def write_metrics(self) -> None:
        if self.metrics is not None and self.config.health.prometheus_file:
            try:
                self.metrics.write_textfile(self.config.health.prometheus_file)
            except OSError as exc:
                log.warning("cannot write %s: %s", self.config.health.prometheus_file, exc)

    # ---- loop -----------------------------------------------------------------------------------

    def run(self, max_parts: int | None = None, stop_when_finished: bool = False,
            max_seconds: float | None = None, before_close: Callable[[], None] | None = None) -> RunSummary:
        """Run until stopped (signal, `request_stop`), `max_parts` parts, the cameras' end
        (`stop_when_finished`, for finite replays) or `max_seconds`. `before_close` runs after the
        loop while the bus still serves (the demo lets its subscriber catch up)."""
        old_signals = self._install_signals()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            try:
                self.start()
                assert self.mode is not None and self.health is not None
                kind = "line mode" if self.line is not None else "free-run"
                log.info("station %s running (%s)", self.config.station, kind)
                if self.health.pipeline_ok():
                    self.notifier.ready(f"station {self.config.station} running ({kind})")
                self.tick()
                self.mode.recover()
                step_s = 0.1 if self.line is not None else 0.25
                while True:
                    self.tick()
                    if max_parts is not None and self.mode.decided >= max_parts:
                        self._stop_reason = f"{max_parts} parts done"
                        break
                    if stop_when_finished and all(getattr(c, "finished", False) for c in self.cameras.values()):
                        self._stop_reason = "the cameras' sources are finished"
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        self._stop_reason = f"{max_seconds:g} s elapsed"
                        break
                    self.mode.step(step_s)
            except ServiceStopping:
                pass
            if before_close is not None:
                before_close()
            return self._summary()
        finally:
            self.close()
            for sig, handler in old_signals:
                signal.signal(sig, handler)

    def _summary(self) -> RunSummary:
        health, journal = self.health, self.journal
        return RunSummary(
            station=self.config.station,
            parts=self._parts,
            verdicts=dict(self._verdicts),
            latency_ms_p50=health.percentiles(50) if health else {},
            latency_ms_p95=health.percentiles(95) if health else {},
            first_seq=self._first_seq,
            last_seq=journal.last_seq() if journal else 0,
            worker_restarts=self.mode.worker_state()[1] if self.mode is not None else 0,
            journal=journal_summary(journal) if journal else {},
            bus=dict(self.bus.bound) if self.bus else {},
            stopped_because=self._stop_reason or "stopped",
            results=list(self._results),
        )

    def close(self) -> None:
        """Stop everything that was started, in reverse order; safe to call twice."""
        self.notifier.stopping()
        self._housekeeping_stop.set()
        if self._housekeeper is not None:
            self._housekeeper.join(10.0)
        for cam in self.cameras.values():
            stop = getattr(cam, "stop", None)
            if stop is not None:
                try:
                    stop()
                except Exception:
                    log.exception("camera stop failed")
        if self.model_control is not None:
            self.model_control.close()
        if self.mode is not None:
            self.mode.close()
        if self.gate_watch is not None:
            self.gate_watch.stop()
        if self.metrics is not None:
            self.write_metrics()
            self.metrics.close()
            self.metrics = None
        if self.mqtt is not None:  # after the mode: its last results are journaled and go out too
            self.mqtt.stop()
        if self.bus is not None:
            self.bus.stop()
        if self.journal is not None:
            self.journal.close()
        self.notifier.close()


def run_from_config(path: str | Path, **kwargs: Any) -> RunSummary:
    from .config.station import load_config

    return Service(load_config(path)).run(**kwargs)
