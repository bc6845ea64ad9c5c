"""A screening gate whose files may change under the running station, and the station's set of them.

Why: the gate learns on the line (operators' confirmed false alarms join its bank) and a person can
undo a change (`adfm-appliance gate undo`) while the station runs. Both replace `gate.onnx` and
`gate.json` in place, graph first, so the station keeps scoring with the version it has and swaps
to the new one between two parts, once both files agree (a load between the two replacements sees
a hash mismatch and is simply tried again at the next refresh).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _stamp(path: Path) -> tuple[int, int, int, int]:
    """What changes when the learner or an undo replaces the gate's files."""
    from adfm.runtime.gate import metadata_path

    out: list[int] = []
    for p in (path, metadata_path(path)):
        try:
            st = p.stat()
            out += [st.st_mtime_ns, st.st_size]
        except OSError:
            out += [0, 0]
    return out[0], out[1], out[2], out[3]


class LiveGate:
    """Scores with the newest complete version of the gate at `path` (same API as `Gate`)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from adfm.runtime.gate import Gate

        self.path = Path(path)
        self.threads = threads
        self._stamp = _stamp(self.path)
        self._gate = Gate.load(self.path, threads=threads)
        self._lock = threading.Lock()

    @property
    def current(self) -> Any:
        return self._gate

    @property
    def threshold(self) -> float:
        return self._gate.threshold

    @property
    def bank_sha256(self) -> str | None:
        return self._gate.bank_sha256

    @property
    def metadata(self) -> Any:
        return self._gate.metadata

    def score(self, image: np.ndarray) -> Any:
        return self._gate.score(image)  # one attribute read: a swap lands between parts

    def refresh(self) -> bool:
        """Load the files again if they changed since the version in use; True when it swapped.

        A half-replaced pair (graph and metadata disagree) keeps the old version until the next call.
        """
        from adfm.runtime.gate import Gate, GateError

        with self._lock:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            try:
                fresh = Gate.load(self.path, threads=self.threads)
            except (GateError, OSError) as exc:
                log.debug("gate %s not reloaded yet: %s", self.path, exc)
                return False
            before = self._gate.bank_sha256
            self._gate, self._stamp = fresh, stamp
        if fresh.bank_sha256 != before:
            log.info("gate %s: now bank %s (threshold %.4f)", self.path, (fresh.bank_sha256 or "")[:12],
                     fresh.threshold)
        return True


class GateSet:
    """One `LiveGate` per gate file: recipes that share a file share its versions."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.gates: dict[Path, LiveGate] = {}

    def load(self, path: str | Path) -> LiveGate:
        key = Path(path)
        if key not in self.gates:
            self.gates[key] = LiveGate(key, threads=self.threads)
        return self.gates[key]
