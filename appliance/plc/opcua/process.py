"""The OPC UA server's own process (`adfm-opcua`, spawned by server.py): everything asyncua does runs
here, on one asyncio loop, so that loading the nodeset, encrypting channels and answering clients
never hold the service's GIL while its deciding loop waits (bench/opcua_start.py --compare-thread:
a 5 ms loop in the service woke up to 240-513 ms late while the server started in a thread beside
it, 8-34 ms with the server in this process, on 2 busy cores).

Messages on the pipe (tuples, pickled): from the service `("results", [json, …])`, `("state",
snapshot)`, `("recipe_reply", id, why)`, `("stop",)`; to it `("ready", load_s, listen_s)`,
`("failed", text)`, `("recipe", id, name, user)`. The journal is read here directly, read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from adfm.schema import InspectionResult

from ...config.line import OpcUaSection
from ...system.priority import lower_this_thread
from .alias import Counts

log = logging.getLogger(__name__)

#: how long PrepareRecipe waits for the service to select the recipe and journal the command
RECIPE_TIMEOUT_S = 5.0


def quiet_asyncua() -> None:
    """asyncua logs every session, request and node import at INFO; keep its warnings only, unless
    the operator set a level for it on purpose."""
    lg = logging.getLogger("asyncua")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.WARNING)


#: loggers whose level the service's log settings (system/logs.py, -v) carry into this process
LOGGERS = ("", "asyncua", "asyncua.server.server", "adfm")


def log_levels() -> dict[str, int]:
    """The service's levels for LOGGERS, to hand to the child (0: not set)."""
    return {name: logging.getLogger(name).level for name in LOGGERS}


def child_main(conn: Connection, cfg: OpcUaSection, station: str, epoch: str, db_path: Path,
               snapshot: dict, t0: float, levels: dict[str, int] | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle
    levels = levels or {}
    # the service's log shape (under systemd, journald stamps each line itself)
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else (
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=levels.get("") or logging.WARNING, format=fmt)
    for name, level in levels.items():
        if name and level:
            logging.getLogger(name).setLevel(level)
    quiet_asyncua()
    lower_this_thread()
    try:
        asyncio.run(Child(conn, cfg, station, epoch, db_path, snapshot, t0).main())
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))


class Child:
    def __init__(self, conn: Connection, cfg: OpcUaSection, station: str, epoch: str, db_path: Path,
                 snapshot: dict, t0: float) -> None:
        self.conn = conn
        self.cfg = cfg
        self.name = station
        self.epoch = epoch
        self.db_path = db_path
        self.snapshot = snapshot
        self.t0 = t0
        self.counts = Counts(cfg.last_results)
        self.inbox: asyncio.Queue[tuple] = asyncio.Queue()
        self.replies: dict[int, asyncio.Future] = {}
        self._next_id = 0

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pipe reader (a thread): everything the service sends goes to the loop's inbox; the
        service going away stops the server."""
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                msg = ("stop",)
            loop.call_soon_threadsafe(self.inbox.put_nowait, msg)
            if msg[0] == "stop":
                return

    async def prepare(self, name: str, who: str) -> str | None:
        """Ask the service to select `name` (it journals the command); why it refused, or None."""
        self._next_id += 1
        request = self._next_id
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.replies[request] = fut
        self.conn.send(("recipe", request, name, who))
        try:
            return await asyncio.wait_for(fut, RECIPE_TIMEOUT_S)
        except TimeoutError:
            return f"the station did not answer within {RECIPE_TIMEOUT_S:.0f} s"
        finally:
            self.replies.pop(request, None)

    async def main(self) -> None:
        from .vision import Station

        loop = asyncio.get_running_loop()
        station = Station(name=self.name, epoch=self.epoch, db_path=self.db_path,
                          result_page=self.cfg.result_page, prepare=self.prepare, snapshot=self.snapshot)
        server, vision, alias, load_s = await build(self.cfg, station)
        await server.start()
        await self.refresh(vision, alias)
        self.conn.send(("ready", load_s, time.time() - self.t0))
        threading.Thread(target=self._read, args=(loop,), name="adfm-opcua-pipe", daemon=True).start()
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(self.inbox.get(), 1.0)
                except TimeoutError:
                    continue
                kind = msg[0]
                if kind == "stop":
                    break
                if kind == "results":
                    for payload in msg[1]:
                        r = InspectionResult.model_validate_json(payload)
                        self.counts.add(r)
                        try:
                            await vision.result_ready(r)
                        except Exception as exc:
                            log.warning("OPC UA ResultReadyEvent for seq %d failed: %s", r.seq, exc)
                    await self.refresh(vision, alias)
                elif kind == "state":
                    station.snapshot = self.snapshot = msg[1]
                    await self.refresh(vision, alias)
                elif kind == "recipe_reply":
                    fut = self.replies.get(msg[1])
                    if fut is not None and not fut.done():
                        fut.set_result(msg[2])
        finally:
            with contextlib.suppress(Exception):
                await self.refresh(vision, alias, stopping=True)
            station.store.close()
            await server.stop()

    async def refresh(self, vision: Any, alias: Any, stopping: bool = False) -> None:
        s = self.snapshot
        if stopping:
            state, alias_state = "Halted", "stopped"
        else:
            state, alias_state = ("Operational", "running") if s.get("healthy") else ("Error", "degraded")
        try:
            await vision.set_state(state, "; ".join(s.get("problems", [])))
            await alias.refresh(alias_state, s, dict(self.counts.counts), list(self.counts.recent))
        except Exception as exc:
            log.warning("OPC UA update failed: %s", exc)


async def build(cfg: OpcUaSection, station: Any) -> tuple[Any, Any, Any, float]:
    """The server, its vision system and alias tree, configured and not yet listening; and how long
    the nodeset's import took (s)."""
    from asyncua import Server, ua

    from .access import (
        REVOKED_DIR,
        TRUSTED_DIR,
        USERS_DIR,
        StationInternalServer,
        StationRules,
        StationUserManager,
        Users,
    )
    from .alias import StationTree
    from .certificates import ClientTrust, server_certificate
    from .vision import NODESET, VisionSystem

    pki = cfg.pki_dir
    users = await Users.load(pki / USERS_DIR) if pki is not None else Users()
    server = Server(iserver=StationInternalServer(user_manager=StationUserManager(users, cfg.allow_anonymous)))
    await server.init()
    server.set_endpoint(cfg.endpoint)
    server.set_server_name(f"adfm station {station.name}")
    app_uri = f"urn:adfm:station:{station.name}"
    await server.set_application_uri(app_uri)
    tokens: list[type] = [ua.AnonymousIdentityToken] if cfg.allow_anonymous else []
    if pki is not None:
        tokens += [ua.UserNameIdentityToken, ua.X509IdentityToken]
        cert, key = await server_certificate(pki, app_uri, cfg.endpoint)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        (pki / TRUSTED_DIR).mkdir(exist_ok=True)
        server.set_certificate_validator(ClientTrust(pki / TRUSTED_DIR, pki / REVOKED_DIR))
    server.set_identity_tokens(tokens)

    t = time.perf_counter()
    await server.import_xml(str(NODESET))
    load_s = time.perf_counter() - t
    idx = await server.register_namespace(cfg.namespace)
    vision = VisionSystem(server, station)
    await vision.build(idx)
    alias = StationTree()
    await alias.build(server.nodes.objects, idx, station.name)
    rules = StationRules(users, vision.method_roles, vision.method_names)
    server.set_security_policy([getattr(ua.SecurityPolicyType, "NoSecurity" if p == "None" else p)
                                for p in cfg.policies], permission_ruleset=rules)
    return server, vision, alias, load_s
