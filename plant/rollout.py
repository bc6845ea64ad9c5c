"""Model rollout from the plant: copy a model to stations and start its shadow run, then promote it
across a group of stations — one canary station first — or roll the group back.

A model reaches a station's store through the path the plant config gives for it (`model_store`: the
station's `state_dir/models`, e.g. a mounted share), by the station side's own `ModelStore.add`,
which checks every byte of the copy against the manifest. Commands go over each station's control
socket with the plant's key, which needs the station's `model` role; the station journals each one.

Promotion of a group: the first station (the canary) is promoted; the rollout then waits until it
has decided `canary_parts` more parts and checks its status: healthy, the new model active, no new
deadline misses and no part decided because the model was down. Only then are the other stations
promoted. A canary that fails the check is rolled back and the others are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adfm.appliance.models.store import ModelStore, ModelStoreError
from adfm.schema import ModelRequest, StationStatus

from .config import PlantConfig, StationSection
from .stations import StationError, client_for


class RolloutError(RuntimeError):
    """A rollout that cannot start (unknown station, no model store configured); nothing was done."""


@dataclass
class Step:
    station: str
    action: str
    ok: bool
    detail: str

    def to_json(self) -> dict:
        return {"station": self.station, "action": self.action, "ok": self.ok, "detail": self.detail}


@dataclass
class Rollout:
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def add(self, station: str, action: str, ok: bool, detail: str, say: Callable[[str], None] | None) -> bool:
        self.steps.append(Step(station, action, ok, detail))
        if say is not None:
            say(f"{station}: {action}: {'ok' if ok else 'FAILED'} — {detail}")
        return ok

    def to_json(self) -> dict:
        return {"ok": self.ok, "steps": [s.to_json() for s in self.steps]}


def select(config: PlantConfig, stations: list[str], line: str | None) -> list[StationSection]:
    """The stations named (in the order given), or every station of `line`."""
    if line:
        chosen = [s for s in config.stations if s.line == line]
        if not chosen:
            raise RolloutError(f"no station of line {line!r} in the plant config")
        return chosen
    if not stations:
        raise RolloutError("name the stations (--station, repeatable) or a --line")
    out = []
    for sid in stations:
        s = config.station(sid)
        if s is None:
            raise RolloutError(f"station {sid!r} is not in the plant config "
                               f"(known: {', '.join(x.id for x in config.stations) or 'none'})")
        out.append(s)
    return out


def command(section: StationSection, action: str, model_id: str = "", operator: str = "",
            timeout_s: float = 60.0) -> str:
    """One model command to one station; its answer, or StationError with the station's reason."""
    client = client_for(section, timeout_s=timeout_s, retries=1)  # sent once: never given twice
    try:
        reply = client.request(ModelRequest(action=action, model_id=model_id, operator=operator))
    finally:
        client.close()
    return getattr(reply, "detail", str(reply))


def status(section: StationSection, timeout_s: float = 5.0) -> StationStatus:
    client = client_for(section, timeout_s=timeout_s, retries=2)
    try:
        return client.status()
    finally:
        client.close()


def deploy(config: PlantConfig, model_dir: Path, sections: list[StationSection], *, shadow: bool = True,
           operator: str = "", say: Callable[[str], None] | None = None) -> Rollout:
    """Copy the model into each station's store (verified) and, with `shadow`, start its shadow run."""
    missing = [s.id for s in sections if s.model_store is None]
    if missing:
        raise RolloutError(f"station(s) {', '.join(missing)}: no model_store in the plant config (the path of the "
                           "station's state_dir/models as this server reaches it)")
    out = Rollout()
    for s in sections:
        assert s.model_store is not None
        try:
            model_id, added = ModelStore(s.model_store).add(model_dir)
        except (ModelStoreError, OSError) as exc:
            out.add(s.id, "copy", False, str(exc), say)
            continue
        out.add(s.id, "copy", True, f"{model_id} {'copied, hashes checked' if added else 'already there'}", say)
        if shadow:
            try:
                out.add(s.id, "shadow", True, command(s, "shadow", model_id, operator), say)
            except StationError as exc:
                out.add(s.id, "shadow", False, str(exc), say)
    return out


def _counter(st: StationStatus, key: str) -> float:
    return float(st.counters.get(key, 0.0))


def promote(config: PlantConfig, model_id: str, sections: list[StationSection], *, operator: str = "",
            canary_parts: int = 20, canary_timeout_s: float = 600.0, poll_s: float = 1.0,
            say: Callable[[str], None] | None = None) -> Rollout:
    """Promote on the first station, check it over `canary_parts` parts, then on the others."""
    out = Rollout()
    canary, rest = sections[0], sections[1:]
    try:
        before = status(canary)
        out.add(canary.id, "promote (canary)", True, command(canary, "promote", model_id, operator), say)
    except StationError as exc:
        out.add(canary.id, "promote (canary)", False, str(exc), say)
        return out
    why = _watch_canary(canary, model_id, before, canary_parts, canary_timeout_s, poll_s)
    if why:
        out.add(canary.id, "canary check", False, why, say)
        try:
            out.add(canary.id, "rollback", True, command(canary, "rollback", "", operator), say)
        except StationError as exc:
            out.add(canary.id, "rollback", False, str(exc), say)
        return out
    out.add(canary.id, "canary check", True, f"{canary_parts} part(s) decided with {model_id}, healthy", say)
    for s in rest:
        try:
            out.add(s.id, "promote", True, command(s, "promote", model_id, operator), say)
        except StationError as exc:
            out.add(s.id, "promote", False, str(exc), say)
    return out


def _watch_canary(section: StationSection, model_id: str, before: StationStatus, parts: int, timeout_s: float,
                  poll_s: float) -> str:
    """Why the canary fails its check ('' when it passes)."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            now = status(section)
        except StationError as exc:
            return f"no status: {exc}"
        if now.model_id != model_id:
            return f"the station reports model {now.model_id!r}, not {model_id!r}"
        misses = _counter(now, "deadline_misses") - _counter(before, "deadline_misses")
        down = _counter(now, "decided_failsafe_model_down") - _counter(before, "decided_failsafe_model_down")
        if misses > 0 or down > 0:
            return f"{misses:g} new deadline miss(es), {down:g} part(s) decided with the model down"
        if _counter(now, "decided") - _counter(before, "decided") >= parts:
            return "" if now.healthy else f"unhealthy: {'; '.join(now.problems) or 'no reason given'}"
        if time.monotonic() >= end:
            return (f"only {_counter(now, 'decided') - _counter(before, 'decided'):g} part(s) decided in "
                    f"{timeout_s:g} s, {parts} needed")
        time.sleep(poll_s)


def rollback(config: PlantConfig, sections: list[StationSection], *, operator: str = "",
             say: Callable[[str], None] | None = None) -> Rollout:
    out = Rollout()
    for s in sections:
        try:
            out.add(s.id, "rollback", True, command(s, "rollback", "", operator), say)
        except StationError as exc:
            out.add(s.id, "rollback", False, str(exc), say)
    return out
