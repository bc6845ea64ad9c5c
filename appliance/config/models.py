"""Station config section `models`: the station's model store, shadow runs and the promotion guard.
Part of `station.yaml` (see appliance/config/station.py); README "New models onto the line" documents
every key."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adfm.config import StrictModel


class ModelsSection(StrictModel):
    """How a candidate model runs in shadow beside the active one, and when it may be promoted.

    Shadow work never delays a decision: a part is offered to the candidate only after the line has
    decided it, the candidate runs in its own process `shadow_nice` nicer than the service (below the
    active model's), and its queue holds at most `shadow_queue` parts — the oldest is dropped first.
    """

    shadow_share: Literal["all", "every_n", "flagged"] = Field(
        "every_n", description="parts the candidate sees: all, every Nth decided part, or the flagged ones "
        "(the line's verdict fail or review)")
    shadow_every_n: int = Field(5, ge=1, le=1_000_000, description="with shadow_share every_n: one part in N")
    shadow_queue: int = Field(8, ge=1, le=10_000, description="parts waiting for the candidate at most")
    shadow_nice: int = Field(15, ge=0, le=19, description="the candidate's process runs this much nicer than "
                             "the service (keep it above line.vlm_nice)")
    guard: bool = Field(True, description="refuse a promotion unless the candidate agrees with operator "
                        "verdicts at least as often as the active model, on guard_min_parts shadowed parts")
    guard_min_parts: int = Field(30, ge=1, le=1_000_000, description="shadowed parts with an operator verdict "
                                 "(confirmed defect or false alarm) the guard needs")
