"""Line tests' helpers: a synthetic streaming camera on the real capture thread, the PLC stand-in as a
process, a station in line mode run in a thread, and readers for what the PLC saw. Test-only code."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adfm.camera.config import CameraConfig
from adfm.camera.errors import SourceError
from adfm.camera.frame import Frame
from adfm.camera.source import FrameSource, now_pair
from tests.plc_standin import ENCODER_HR, REJECT_COIL, RESULT_HR, standin_modbus

REPO = Path(__file__).resolve().parents[1]


class SyntheticStream(FrameSource):
    """A live camera at `fps` that can be unplugged (`down = True`): reads then fail like a lost device."""

    streaming = True

    def __init__(self, config: CameraConfig, fps: float = 30.0, size: tuple[int, int] = (96, 72), noise: bool = False):
        super().__init__(config)
        self.noise = noise  # random pixels: images that take real room on disk
        self._rng = np.random.default_rng(0)
        self.fps = fps
        self.size = size
        self.down = False
        self._open = False
        self._next = 0.0

    def open(self) -> None:
        if self.down:
            raise SourceError(f"{self.name}: device unplugged (test)")
        self._open = True
        self._next = time.monotonic()

    def read(self) -> Frame | None:
        if self.down or not self._open:
            raise SourceError(f"{self.name}: device unplugged (test)")
        wait = self._next - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.05))
            if wait > 0.05:
                return None
        self._next = max(self._next + 1.0 / self.fps, time.monotonic() - 0.5)
        mono, wall = now_pair()
        n = self._next_number
        shape = (self.size[1], self.size[0], 3)
        image = self._rng.integers(0, 256, shape, dtype=np.uint8) if self.noise else np.full(shape, n % 251, np.uint8)
        return self._make_frame(image, f"synthetic#{n}", mono, wall)

    def close(self) -> None:
        self._open = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CutProxy:
    """A TCP relay between the station and the PLC stand-in whose `cut(s)` is a network cut: open
    connections die and new ones are dropped for `s` seconds (the PLC keeps running meanwhile)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._cut_until = 0.0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            if time.monotonic() < self._cut_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=1.0)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self, seconds: float) -> None:
        self._cut_until = time.monotonic() + seconds
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._srv.close()
        self.cut(0)


@dataclass
class Plc:
    """The stand-in process and its event log."""

    port: int
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, *, rate: float, parts: int, first_id: int = 1, start_delay: float = 0.5, recipe: int = 0,
              extra: tuple[str, ...] = ()) -> None:
        """`extra`: more stand-in options (the handshake's PLC side, a rogue writer …)."""
        cmd = [sys.executable, "-m", "tests.plc_standin", "--port", str(self.port), "--log", str(self.log),
               "--rate", str(rate), "--parts", str(parts), "--first-id", str(first_id),
               "--start-delay", str(start_delay), "--recipe", str(recipe), "--die-with-parent", *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert b"listening" in line, f"the PLC stand-in did not start: {line!r}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def events(self) -> list[dict]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()] if self.log.exists() else []

    def triggers(self) -> list[dict]:
        return [e for e in self.events() if e["ev"] == "trigger"]

    def done(self) -> bool:
        return any(e["ev"] == "done" for e in self.events())

    def taken(self) -> list[dict]:
        """Results the handshake's PLC side took, in the order it took them."""
        return [e for e in self.events() if e["ev"] == "result"]

    def result_writes(self) -> list[dict]:
        """Each decision the station wrote: {t, seq, decision, source}."""
        out = []
        for e in self.events():
            if e["ev"] == "write" and e["address"] == RESULT_HR and len(e["values"]) == 4:
                v = e["values"]
                out.append({"t": e["t"], "seq": v[0] | v[1] << 16, "decision": v[2], "source": v[3]})
        return out

    def pulses(self) -> list[tuple[float, float | None]]:
        """(rise, fall) times of the reject coil."""
        out: list[tuple[float, float | None]] = []
        for e in self.events():
            if e["ev"] == "write" and e["fc"] == 5 and e["address"] == REJECT_COIL:
                if e["values"][0] and (not out or out[-1][1] is not None):
                    out.append((e["t"], None))
                elif not e["values"][0] and out and out[-1][1] is None:
                    out[-1] = (out[-1][0], e["t"])
        return out


@dataclass
class LineRun:
    """A station in line mode, run in a thread."""

    service: object
    thread: threading.Thread
    results: list = field(default_factory=list)
    statuses: list = field(default_factory=list)

    def stop(self, timeout: float = 30.0) -> None:
        self.service.request_stop("test done")
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the service did not stop"


def line_config(tmp_path: Path, port: int, *, deadline_ms: float = 500, delay_ms: float = 700,
                failsafe: str = "reject", recipes: list | None = None, counter: bool = False,
                handshake: dict | None = None, **over) -> dict:
    from tests.appliance_fakes import station_dict

    cfg = station_dict(
        tmp_path,
        cameras=[{"id": "cam0", "url": f"replay:{tmp_path}", "trigger": {"mode": "link"}, "queue_size": 2}],
        line={"deadline_ms": deadline_ms, "failsafe": failsafe, "margin_ms": 50, "vlm_backlog": 64},
        plc={"modbus": standin_modbus(port, {"coil": REJECT_COIL, "pulse_ms": 60, "delay_ms": delay_ms},
                                      recipes=bool(recipes), counter=counter, handshake=handshake)},
        **over,
    )
    cfg["model"]["deadline_s"] = 20
    if recipes is not None:
        cfg["recipes"] = recipes
    return cfg


def start_line(config_dict: dict, script: Path | None, fps: float = 30.0, backend=None, noise: bool = False):
    """Start a line-mode service on a synthetic camera (the scripted model, or `backend`); returns
    (run, source)."""
    from adfm.appliance.config.station import parse_config
    from adfm.appliance.inspection.worker import BackendSpec
    from adfm.appliance.service import Service
    from adfm.camera.capture_thread import CameraWorker
    from tests.appliance_fakes import FACTORY

    config = parse_config(config_dict)
    cam_cfg = config.cameras[0].camera_config()
    source = SyntheticStream(cam_cfg, fps=fps, noise=noise)
    camera = CameraWorker(cam_cfg, source=source)
    results: list = []
    backend = backend or BackendSpec(FACTORY, {"script": str(script)})
    service = Service(config, cameras={"cam0": camera}, backend=backend,
                      on_result=results.append)
    run = LineRun(service, threading.Thread(target=service.run, name="line-service", daemon=True), results)
    run.thread.start()
    deadline = time.monotonic() + 300
    while getattr(service, "line", None) is None or service.line.link is None or not service.line.link.connected:
        assert run.thread.is_alive(), "the service ended during start-up"
        assert time.monotonic() < deadline, "the line did not come up"
        time.sleep(0.05)
    return run, source


__all__ = ["ENCODER_HR", "CutProxy", "Plc", "SyntheticStream", "free_port", "line_config", "start_line"]
