"""Reconnect delays: exponential backoff with jitter, so cameras that dropped together (a switch
rebooted) do not all hammer it again in the same instant."""

from __future__ import annotations

import random


class Backoff:
    """Delays min_s, 2·min_s, 4·min_s … capped at max_s, each drawn uniformly from [d/2, d]."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None):
        if not 0 < min_s <= max_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {min_s} and {max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.max_s, self.min_s * 2.0 ** min(self.attempt, 60))

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the following one's bound."""
        ceiling = self.ceiling()
        self.attempt += 1
        return self._rng.uniform(ceiling / 2.0, ceiling)

    def reset(self) -> None:
        """Back to the shortest delay (after a frame came through)."""
        self.attempt = 0
