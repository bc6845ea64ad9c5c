"""Aravis's simulated cameras for the GenICam tests.

- the `Fake` interface: a camera inside this process (`aravis:Fake_1`), free-running only;
- `arv-fake-gv-camera-0.8`: a GigE Vision camera in a child process bound to 127.0.0.1, reached by
  address (no discovery broadcast), which honours software triggers and can be killed.
Both skip their tests with the reason when Aravis (or the tool) is not installed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

GV_TOOL = "arv-fake-gv-camera-0.8"
GVCP_PORT = 3956


def aravis_missing() -> str | None:
    from adfm.camera.aravis import aravis_available

    return aravis_available()


def require_aravis() -> None:
    reason = aravis_missing()
    if reason:
        pytest.skip(f"needs Aravis through PyGObject: {reason}")


def _gvcp_bound() -> bool:
    """True when something listens on UDP 127.0.0.1:3956 (the fake camera's control port)."""
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == f"0100007F:{GVCP_PORT:04X}" for line in lines)


class FakeGvCamera:
    """arv-fake-gv-camera-0.8 on 127.0.0.1, started, killed and restarted by the test."""

    def __init__(self, serial: str = "ADFM0001"):
        self.serial = serial
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        if _gvcp_bound():
            raise RuntimeError(f"UDP 127.0.0.1:{GVCP_PORT} is already in use: another fake GigE camera runs")
        self.process = subprocess.Popen([GV_TOOL, "-i", "127.0.0.1", "-s", self.serial],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _gvcp_bound():
            if self.process.poll() is not None:
                raise RuntimeError(f"{GV_TOOL} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{GV_TOOL} did not bind 127.0.0.1:{GVCP_PORT} in {timeout} s")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(10)
            self.process = None


def fake_gv_camera_or_skip() -> FakeGvCamera:
    """A started fake GigE Vision camera; skips the test, saying why, where Aravis or the tool is missing."""
    require_aravis()
    if shutil.which(GV_TOOL) is None:
        pytest.skip(f"needs {GV_TOOL} (Debian package aravis-tools)")
    camera = FakeGvCamera()
    camera.start()
    return camera
