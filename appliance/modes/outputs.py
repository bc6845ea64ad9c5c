"""Where decisions and results go, for every mode: one fan-out instead of a callback per consumer.

Two moments matter (docs/architecture.md, "Outputs"): `decided` — the instant the line acts, for
the PLC, whose write is what the deadline is for; `recorded` — once a result (or a revision) is
journaled, in seq order, for the bus, OPC UA, MQTT and the service's own summary. A consumer
that fails is logged and skipped: one broken output never stops the others or the line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from adfm.schema import InspectionResult

log = logging.getLogger(__name__)

Decided = Callable[[int, str, str, Any], None]  # (seq, action, source, trigger)
Recorded = Callable[[InspectionResult], None]


class Outputs:
    """The fan-out. `add()` consumers before the mode starts; calls come from the deciding loop."""

    def __init__(self) -> None:
        self._decided: list[tuple[str, Decided]] = []
        self._recorded: list[tuple[str, Recorded]] = []

    def add(self, name: str, *, decided: Decided | None = None, recorded: Recorded | None = None) -> None:
        if decided is not None:
            self._decided.append((name, decided))
        if recorded is not None:
            self._recorded.append((name, recorded))

    def decided(self, seq: int, action: str, source: str, trigger: Any) -> None:
        for name, fn in self._decided:
            try:
                fn(seq, action, source, trigger)
            except Exception:
                log.exception("output %s failed on the decision of seq %d", name, seq)

    def recorded(self, result: InspectionResult) -> None:
        for name, fn in self._recorded:
            try:
                fn(result)
            except Exception:
                log.exception("output %s failed on seq %d (revision %d)", name, result.seq, result.revision)
