"""Scripted stand-ins for the appliance's tests: an inference backend that answers, crashes, hangs
or talks nonsense on cue, and a camera fed from a list. Test-only code.

The backend runs in the worker's child process, so its script and call counter live in files:
call N (counted across worker restarts) performs `actions[N-1]` (the last action repeats).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adfm.camera.frame import Frame
from adfm.schema import CameraStatus, InspectionResult, StationStatus

ACTIONS = ("yes", "no", "slow", "late", "malformed", "crash", "hang", "error", "exit")


@dataclass(frozen=True)
class FakeGeneration:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class ScriptedBackend:
    def __init__(self, script: str | None = None, load: str = "ok", **_ignored: object) -> None:
        # A service started from a config passes only model options; the script then comes from
        # the environment the test set.
        self.script = Path(script or os.environ["ADFM_FAKE_SCRIPT"])
        spec = json.loads(self.script.read_text())
        if load == "fail":
            raise RuntimeError("model file is corrupt (scripted)")
        if load == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        self.actions: list[str] = spec["actions"]
        self.box = spec.get("box", [10, 20, 60, 80])  # grid pixels of the query image
        self.late_s = float(spec.get("late_s", 1.0))  # "late": answers yes after this long
        self.cycle = bool(spec.get("cycle", False))  # repeat the whole list instead of its last action

    def _next_action(self) -> tuple[int, str]:
        counter = self.script.with_suffix(".calls")
        text = counter.read_text().strip() if counter.exists() else ""
        n = int(text) + 1 if text else 1
        tmp = counter.with_suffix(f".calls.{os.getpid()}")
        tmp.write_text(str(n))
        os.replace(tmp, counter)  # a SIGKILL mid-write must not leave the counter empty
        if self.cycle:
            return n, self.actions[(n - 1) % len(self.actions)]
        return n, self.actions[min(n, len(self.actions)) - 1]

    def generate(self, images, *, prompt_version=None, product=None, max_tokens=256, temperature=0.0, seed=0):
        n, action = self._next_action()
        log = self.script.with_suffix(".log")
        with open(log, "a") as f:
            f.write(json.dumps({"call": n, "action": action, "sizes": [list(im.size) for im in images],
                                "product": product, "prompt_version": prompt_version, "pid": os.getpid()}) + "\n")
        version = prompt_version or "multi-stage-v1"
        from adfm.protocol import format_response  # imported on use: crash/hang children start faster

        if action == "yes":
            text = format_response(True, [self.box], ["scratch"], version=version)
        elif action == "slow":
            time.sleep(0.4)
            text = format_response(False, [], version=version)
        elif action == "late":
            time.sleep(self.late_s)
            text = format_response(True, [self.box], ["scratch"], version=version)
        elif action == "no":
            text = format_response(False, [], version=version)
        elif action == "malformed":
            text = "I think it might be fine <answer>perhaps"
        elif action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "exit":
            os._exit(3)
        elif action == "hang":
            time.sleep(3600)
        elif action == "error":
            raise RuntimeError("llama_decode failed (scripted)")
        else:
            raise ValueError(f"unknown scripted action {action!r}")
        return FakeGeneration(text=text, prompt_tokens=100, completion_tokens=20, seconds=0.001)


def make_backend(**kwargs):
    """The worker's factory (`appliance_fakes:make_backend`)."""
    return ScriptedBackend(**kwargs)


def write_script(path: Path, actions: list[str], box: list[int] | None = None, late_s: float | None = None,
                 cycle: bool = False) -> Path:
    path.write_text(json.dumps({"actions": actions, "cycle": cycle, **({"box": box} if box else {}),
                                **({"late_s": late_s} if late_s is not None else {})}))
    return path


def calls(script: Path) -> list[dict]:
    log = script.with_suffix(".log")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


class ListCamera:
    """A camera whose frames a test puts in; records acknowledgements."""

    def __init__(self, camera_id: str = "cam0") -> None:
        self.camera_id = camera_id
        self.frames: queue.Queue = queue.Queue()
        self.acked: list = []

    def put(self, frame) -> None:
        self.frames.put(frame)

    def get(self, timeout: float):
        try:
            return self.frames.get(timeout=max(timeout, 0.0)) if timeout > 0 else self.frames.get_nowait()
        except queue.Empty:
            return None

    def ack(self, frame) -> None:
        self.acked.append(frame)

    def status(self) -> CameraStatus:
        return CameraStatus(camera=self.camera_id, connected=True, captured=len(self.acked))

    @property
    def finished(self) -> bool:
        return self.frames.empty()


def make_model_dir(path: Path, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 64,
                   prompt_version: str = "multi-stage-v1") -> Path:
    """A model directory whose manifest checks out but whose GGUF files are placeholders, for
    services run with the scripted backend."""
    from datetime import UTC, datetime

    from adfm.manifest import FileEntry, ModelManifest, sha256_file, write_manifest

    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, role in (("tiny-q4_k_m.gguf", "model"), ("mmproj-f16.gguf", "mmproj")):
        f = path / name
        f.write_bytes(b"GGUF placeholder " + name.encode())
        entries.append(FileEntry(path=name, role=role, sha256=sha256_file(f), size=f.stat().st_size))
    write_manifest(ModelManifest(files=entries, base_model="scripted", prompt_version=prompt_version,
                                 min_pixels=min_pixels, max_pixels=max_pixels, adfm_version="test",
                                 created_at=datetime.now(UTC)), path)
    return path


class BusStation:
    """A journal and a bus on loopback ports, and a way to add inspected parts."""

    def __init__(self, root, curve=None, status_interval_s=0.2):
        # Imported here: the scripted backend's child process needs none of this.
        from adfm.appliance.bus.server import ResultBus
        from adfm.appliance.journal.store import Journal

        self.journal = Journal(root, "st1")
        self.bus = ResultBus("st1", self.journal, self.status, publish=["tcp://127.0.0.1:*"],
                             control=["tcp://127.0.0.1:*"], curve=curve, status_interval_s=status_interval_s)
        self.bus.start()
        self.publish_ep = self.bus.bound["publish"][0]
        self.control_ep = self.bus.bound["control"][0]

    def status(self) -> StationStatus:
        return StationStatus(station="st1", healthy=True, last_seq=self.journal.last_seq())

    def part(self, publish: bool = True, verdict: str = "fail") -> InspectionResult:
        i = self.journal.last_seq() + 1
        p = self.journal.accept(np.full((16, 16, 3), i % 255, np.uint8), part_id=f"p{i}", camera="cam0",
                                frame_number=i, captured_wall=time.time())
        result = self.journal.complete(InspectionResult(
            station="st1", seq=p.seq, part_id=p.part_id, camera="cam0", frame_number=i,
            captured_at=p.captured_at, verdict=verdict))
        if publish:
            self.bus.publish(result)
        return result

    def client(self, **kw):
        from adfm.appliance.bus.client import StationClient

        return StationClient(self.publish_ep, self.control_ep, timeout_s=kw.pop("timeout_s", 2.0), **kw)

    def close(self):
        self.bus.stop()
        self.journal.close()


# ---- station configs and frames for service tests ------------------------------------------------

FACTORY = "tests.appliance_fakes:make_backend"
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 64


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def station_dict(tmp_path: Path, **over) -> dict:
    model = tmp_path / "model"
    if not (model / "manifest.json").exists():
        make_model_dir(model, MIN_PIXELS, MAX_PIXELS)
    base = {
        "station": "st1",
        "state_dir": str(tmp_path / "state"),
        "model": {"dir": str(model), "deadline_s": 10, "load_timeout_s": 60},
        "cameras": [{"id": "cam0", "url": f"replay:{tmp_path}"}],
        "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*", "status_interval_s": 0.2},
        "health": {"prometheus_file": str(tmp_path / "metrics" / "adfm.prom")},
    }
    return _merge(base, over)


def frame(i: int, size=(200, 150), camera="cam0") -> Frame:
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Frame(camera_id=camera, image=img, frame_number=i, part_id=f"part-{i}",
                 captured_mono=time.monotonic(), captured_wall=time.time(), source_name=f"{i}.png")


class SlowedBackend:
    """A real backend (the exported GGUF through llama.cpp) made slower on every `slow_every`-th
    call by `slow_s`, so a test or bench can push some parts past their deadline on purpose."""

    def __init__(self, slow_every: int = 5, slow_s: float = 1.0, **gguf_kwargs: object) -> None:
        from adfm.appliance.inspection.worker import gguf_backend

        self.inner = gguf_backend(**gguf_kwargs)  # type: ignore[arg-type]
        self.slow_every = slow_every
        self.slow_s = slow_s
        self.calls = 0

    def generate(self, images, **kwargs):
        self.calls += 1
        if self.slow_every and self.calls % self.slow_every == 0:
            time.sleep(self.slow_s)
        return self.inner.generate(images, **kwargs)


def make_slowed_backend(**kwargs):
    """The worker's factory for SlowedBackend (`tests.appliance_fakes:make_slowed_backend`)."""
    return SlowedBackend(**kwargs)


# ---- CURVE keys made the way an installation makes them ---------------------------------------


@dataclass(frozen=True)
class MadeKeys:
    server_public: Path
    server_secret: Path
    authorized_clients: Path
    client_secrets: dict[str, Path]


def make_keys(key_dir: Path, clients: list[str], operators: dict[str, list[str]] | None = None) -> MadeKeys:
    """The station's pair in `key_dir`; each client's pair made in its own folder (as on its own
    machine) with only the public key admitted to the station."""
    from adfm.appliance.bus.keys import admit_client, generate_client_keys, generate_server_keys

    server = generate_server_keys(key_dir)
    secrets: dict[str, Path] = {}
    for name in clients:
        public, secret = generate_client_keys(key_dir.parent / f"{key_dir.name}-client-{name}", name)
        admit_client(key_dir, name, public, (operators or {}).get(name))
        secrets[name] = secret
    return MadeKeys(server.server_public, server.server_secret, server.authorized_clients, secrets)
