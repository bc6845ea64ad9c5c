"""A fixed-rate schedule: replay playback and free-run part sampling both space events by it."""

from __future__ import annotations


class Pacer:
    """Says when the next event is due at `rate_hz` (every time when the rate is None).

    After a pause longer than one period the schedule restarts from now instead of bursting to
    catch up, so a replay that was blocked does not then race through frames.
    """

    def __init__(self, rate_hz: float | None):
        if rate_hz is not None and rate_hz <= 0:
            raise ValueError(f"rate {rate_hz} must be > 0")
        self.period = 0.0 if rate_hz is None else 1.0 / rate_hz
        self._next: float | None = None

    def wait_s(self, now: float) -> float:
        """Seconds until the next event is due (0 when it is due now)."""
        return 0.0 if self._next is None else max(0.0, self._next - now)

    def take(self, now: float) -> bool:
        """True (and schedule the following event) when an event is due at `now`."""
        if self._next is not None and now < self._next:
            return False
        late = self._next is None or now - self._next > self.period
        self._next = (now if late else self._next) + self.period
        return True

    def reset(self) -> None:
        self._next = None
