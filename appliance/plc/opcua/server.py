"""The service's side of the OPC UA server: a child process (process.py) runs asyncua; a light
thread here (`adfm-opcua`) feeds it results and the station's state, and carries out the recipe
changes its clients ask for.

`start()` only spawns the process and the thread: the nodeset's import and the bind happen in the
child, beside the line rather than inside it, so neither the line's start nor its deciding loop
waits for them, nor for the GIL while they run. The deciding loop only hands results over
(`result()`: a count and a queue append). A server that cannot start, or a process that dies, is a
standing problem (`opcua`), never a stopped line.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
import time
from collections import deque
from typing import Any

from adfm.schema import InspectionResult

from ...config.line import OpcUaSection

log = logging.getLogger(__name__)

#: results waiting for the child; beyond this the oldest are dropped (the journal has them all)
MAX_PENDING = 10_000
#: results per message to the child
BATCH = 200
POLL_S = 0.05
STATE_EVERY_S = 1.0


class StationOpcUa:
    """Serves a LineStation over OPC UA; `result()` is called for every decision and revision."""

    def __init__(self, cfg: OpcUaSection, line: Any) -> None:
        self.cfg = cfg
        self.line = line
        self._pending: deque[InspectionResult] = deque(maxlen=MAX_PENDING)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: Any = None
        self._conn: Any = None
        self.ready = threading.Event()
        #: seconds: the nodeset's import in the child, and from start() until the endpoint listened
        self.load_s: float | None = None
        self.start_s: float | None = None
        self.failed: str | None = None

    # ---- the deciding loop's side ---------------------------------------------------------------

    def start(self) -> None:
        from .process import child_main, log_levels

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        line = self.line
        self._conn = parent
        self._proc = ctx.Process(target=child_main, name="adfm-opcua", daemon=True, args=(
            child, self.cfg, line.cfg.station, line.journal.epoch, line.journal.db_path, self._snapshot(),
            time.time(), log_levels()))
        self._proc.start()
        child.close()
        self._thread = threading.Thread(target=self._run, name="adfm-opcua", daemon=True)
        self._thread.start()

    def result(self, r: InspectionResult) -> None:
        with self._lock:
            self._pending.append(r)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        if self._proc is not None:
            self._proc.join(10.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5.0)
        if self._conn is not None:
            self._conn.close()

    # ---- the feeding thread ---------------------------------------------------------------------

    def _snapshot(self) -> dict:
        line = self.line
        status = line.health.snapshot()
        active = line.controller.active_recipe
        model_ids = {name: line.models[r.model].info.model_id for name, r in line.recipes.items()}
        return {"healthy": status.healthy, "problems": list(status.problems), "last_seq": status.last_seq,
                "counters": dict(status.counters), "active_recipe": active, "model_id": model_ids.get(active, ""),
                "recipes": {name: r.product or "" for name, r in line.recipes.items()}, "model_ids": model_ids}

    def _run(self) -> None:
        conn, last_state, sent_state = self._conn, 0.0, None
        try:
            while not self._stop.is_set():
                if conn.poll(POLL_S):
                    self._handle(conn.recv())
                    if self.failed:
                        return
                    continue
                if not self._proc.is_alive():
                    self._problem(f"the OPC UA server process exited (code {self._proc.exitcode})")
                    return
                with self._lock:
                    batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                if batch:
                    conn.send(("results", [r.model_dump_json() for r in batch]))
                now = time.monotonic()
                if now - last_state >= STATE_EVERY_S or batch:
                    state = self._snapshot()
                    if state != sent_state or now - last_state >= STATE_EVERY_S:
                        conn.send(("state", state))
                        sent_state, last_state = state, now
            with self._lock:  # what was decided before the stop still gets its event
                rest = [r.model_dump_json() for r in self._pending]
                self._pending.clear()
            with contextlib.suppress(OSError):
                if rest and self.ready.is_set():
                    conn.send(("results", rest))
                conn.send(("stop",))
        except (EOFError, OSError) as exc:
            if not self._stop.is_set():
                self._problem(f"lost the OPC UA server process: {exc}")
        except Exception as exc:  # SCADA visibility must never stop the line
            log.error("OPC UA feeder stopped: %s", exc)
            self._problem(f"OPC UA feeder stopped: {exc}")

    def _problem(self, text: str) -> None:
        self.failed = text
        log.error("OPC UA server on %s: %s", self.cfg.endpoint, text)
        self.line.health.problem("opcua", f"OPC UA server on {self.cfg.endpoint}: {text}")

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            self.load_s, self.start_s = msg[1], msg[2]
            self.line.health.clear("opcua")
            log.info("OPC UA server on %s (%s; Machine Vision nodeset loaded in %.2f s, listening %.2f s after start)",
                     self.cfg.endpoint, ", ".join(self.cfg.policies), self.load_s, self.start_s)
            self.ready.set()
        elif kind == "failed":
            self._problem(msg[1])
        elif kind == "recipe":
            _, request, name, who = msg
            self._conn.send(("recipe_reply", request, self._prepare(name, who)))

    def _prepare(self, name: str, who: str) -> str | None:
        """A client's PrepareRecipe (its role already checked): select the recipe, journal the command
        either way, like the bus's recipe command. Why it was refused, or None."""
        line = self.line
        why = None
        if name not in line.recipes:
            why = f"unknown recipe {name!r} (the station has {', '.join(line.recipes)})"
        else:
            try:
                line.select_recipe(name)
            except ValueError as exc:
                why = str(exc)
        detail = f"recipe {name} selected for the next parts" if why is None else f"refused: {why}"
        line.journal.record_command("recipe", name, client=f"opcua:{who}", operator=who, accepted=why is None,
                                    detail=f"{detail} (OPC UA PrepareRecipe)")
        log.warning("OPC UA PrepareRecipe %r by user %r: %s", name, who, detail)
        return why
