"""The station's OPC UA server thread (`adfm-opcua`): everything OPC UA runs on its own asyncio loop.

`start()` only starts the thread: loading the Machine Vision nodeset (about a second on a line PC)
and binding the endpoint happen there, so the line decides its first part without waiting for
them. The deciding loop only hands results over (`result()`: a count and a queue append) and never
waits on OPC UA; the thread sends a ResultReadyEvent per result and refreshes the state, woken at
every result and once a second. A server that cannot start is a standing problem (`opcua`), not a
stopped line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from adfm.schema import InspectionResult

from ...config.line import OpcUaSection
from ...system.priority import lower_this_thread
from .alias import Counts

log = logging.getLogger(__name__)

#: results waiting for their event; beyond this the oldest events are dropped (the journal has them all)
MAX_PENDING = 10_000
CERT_DAYS = 3650


def quiet_asyncua() -> None:
    """asyncua logs every session, request and node import at INFO; keep its warnings only, unless
    the operator set a level for it on purpose."""
    lg = logging.getLogger("asyncua")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.WARNING)


class StationOpcUa:
    """Serves a LineStation over OPC UA; `result()` is called for every decision and revision."""

    def __init__(self, cfg: OpcUaSection, line: Any) -> None:
        self.cfg = cfg
        self.line = line
        self._counts = Counts(cfg.last_results)
        self._pending: deque[InspectionResult] = deque(maxlen=MAX_PENDING)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        #: seconds: the nodeset's import, and from start() until the endpoint listened
        self.load_s: float | None = None
        self.start_s: float | None = None
        self.events_sent = 0
        self.rules: Any = None

    # ---- the deciding loop's side ---------------------------------------------------------------

    def start(self) -> None:
        quiet_asyncua()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="adfm-opcua", daemon=True)
        self._thread.start()

    def result(self, r: InspectionResult) -> None:
        with self._lock:
            self._counts.add(r)
            self._pending.append(r)
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(wake.set)

    def stop(self) -> None:
        self._stop.set()
        self._poke()
        if self._thread is not None:
            self._thread.join(10.0)

    # ---- the OPC UA thread ----------------------------------------------------------------------

    def _run(self) -> None:
        lower_this_thread()
        try:
            asyncio.run(self._main())
        except Exception as exc:  # SCADA visibility must never stop the line
            log.error("OPC UA server on %s stopped: %s", self.cfg.endpoint, exc)
            self.line.health.problem("opcua", f"OPC UA server on {self.cfg.endpoint}: {exc}")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        server, vision, alias = await self._build()
        await server.start()
        self.start_s = time.perf_counter() - self._t0
        self.line.health.clear("opcua")
        await self._refresh(vision, alias, stopping=False)
        self.ready.set()
        log.info("OPC UA server on %s (%s; Machine Vision nodeset loaded in %.2f s, listening %.2f s after start)",
                 self.cfg.endpoint, ", ".join(self.cfg.policies), self.load_s, self.start_s)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                self._wake.clear()
                await self._send_events(vision)
                await self._refresh(vision, alias, stopping=self._stop.is_set())
        finally:
            with contextlib.suppress(Exception):
                await self._refresh(vision, alias, stopping=True)
            vision.station.store.close()
            await server.stop()

    async def _send_events(self, vision: Any) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                r = self._pending.popleft()
            try:
                await vision.result_ready(r)
                self.events_sent += 1
            except Exception as exc:
                log.warning("OPC UA ResultReadyEvent for seq %d failed: %s", r.seq, exc)

    async def _refresh(self, vision: Any, alias: Any, stopping: bool) -> None:
        line = self.line
        status = line.health.snapshot()
        problems = [p for p in status.problems]
        if stopping:
            state, alias_state = "Halted", "stopped"
        else:
            state, alias_state = ("Operational", "running") if status.healthy else ("Error", "degraded")
        recipe_name = line.controller.active_recipe
        recipe = line.recipes.get(recipe_name)
        model_id = line.models[recipe.model].info.model_id if recipe is not None else ""
        with self._lock:
            counts, recent = dict(self._counts.counts), list(self._counts.recent)
        try:
            await vision.set_state(state, "; ".join(problems))
            await alias.refresh(alias_state, status, recipe_name, model_id, counts, recent)
        except Exception as exc:
            log.warning("OPC UA update failed: %s", exc)

    async def _build(self) -> tuple[Any, Any, Any]:
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
        from .vision import NODESET, Station, VisionSystem

        cfg, line = self.cfg, self.line
        station = line.cfg.station
        pki = cfg.pki_dir
        users = await Users.load(pki / USERS_DIR) if pki is not None else Users()
        server = Server(iserver=StationInternalServer(user_manager=StationUserManager(users, cfg.allow_anonymous)))
        await server.init()
        server.set_endpoint(cfg.endpoint)
        server.set_server_name(f"adfm station {station}")
        app_uri = f"urn:adfm:station:{station}"
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
        self.load_s = time.perf_counter() - t
        idx = await server.register_namespace(cfg.namespace)

        def model_ids() -> dict[str, str]:
            return {name: line.models[r.model].info.model_id for name, r in line.recipes.items()}

        vision = VisionSystem(server, Station(
            name=station, recipes=lambda: {n: r.product or "" for n, r in line.recipes.items()},
            model_ids=model_ids, active_recipe=lambda: line.controller.active_recipe,
            select_recipe=line.select_recipe, journal_command=line.journal.record_command,
            epoch=line.journal.epoch, db_path=line.journal.db_path, result_page=cfg.result_page))
        await vision.build(idx)
        alias = StationTree()
        await alias.build(server.nodes.objects, idx, station)
        self.rules = StationRules(users, vision.method_roles, vision.method_names)
        server.set_security_policy([getattr(ua.SecurityPolicyType, "NoSecurity" if p == "None" else p)
                                    for p in cfg.policies], permission_ruleset=self.rules)
        return server, vision, alias


async def server_certificate(pki: Path, app_uri: str, endpoint: str) -> tuple[Path, Path]:
    """The server's certificate and key in `pki`, made on first use: a self-signed certificate
    for `app_uri` and this host's names (clients trust it once, e.g. by its thumbprint); the key
    is created 0600."""
    import ipaddress
    from urllib.parse import urlsplit

    from asyncua.crypto import cert_gen, uacrypto
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from .access import SERVER_CERT, SERVER_KEY, AccessError

    cert_file, key_file = pki / SERVER_CERT, pki / SERVER_KEY
    try:
        pki.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(cert_gen.dump_private_key_as_pem(cert_gen.generate_private_key()))
            cert_file.unlink(missing_ok=True)
        if not cert_file.exists():
            key = await uacrypto.load_private_key(key_file)
            host = urlsplit(endpoint).hostname or "localhost"
            names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(app_uri),
                                             x509.DNSName(socket.gethostname())]
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
            cert = cert_gen.generate_self_signed_app_certificate(
                key, app_uri, {"commonName": f"adfm {app_uri.rsplit(':', 1)[-1]}", "organizationName": "adfm"},
                names, extended=[ExtendedKeyUsageOID.SERVER_AUTH], days=CERT_DAYS)
            der = cert.public_bytes(encoding=Encoding.DER)
            cert_file.write_bytes(der)
            log.warning("OPC UA: made the server certificate %s, SHA-1 thumbprint %s (clients must trust it)",
                        cert_file, hashlib.sha1(der).hexdigest())
    except OSError as exc:
        raise AccessError(f"{pki}: cannot make the OPC UA server certificate: {exc.strerror or exc}") from exc
    return cert_file, key_file


class ClientTrust:
    """asyncua's certificate validator over `trusted/` (and `revoked/`), read again whenever the
    folders change, so a client is trusted (or no longer) without restarting the station. Client
    application certificates must be in (or signed by one in) `trusted/`, unexpired, not revoked,
    and name the client's application URI."""

    def __init__(self, trusted: Path, revoked: Path) -> None:
        self.trusted = trusted
        self.revoked = revoked
        self._seen: tuple = ()
        self._validator: Any = None

    def _listing(self) -> tuple:
        out = []
        for folder in (self.trusted, self.revoked):
            if folder.is_dir():
                out += [(f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(folder.iterdir())]
        return tuple(out)

    async def __call__(self, cert: Any, app_description: Any) -> None:
        from asyncua import ua
        from asyncua.common.utils import ServiceError
        from asyncua.crypto.truststore import TrustStore
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        seen = self._listing()
        if seen != self._seen:
            trusted = [f for f in self.trusted.glob("*") if f.suffix.lower() in (".der", ".pem")] \
                if self.trusted.is_dir() else []
            self._validator = None
            if trusted:
                store = TrustStore([self.trusted], [self.revoked] if self.revoked.is_dir() else [])
                await store.load()
                self._validator = CertificateValidator(CertificateValidatorOptions.TRUSTED_VALIDATION
                                                       | CertificateValidatorOptions.PEER_CLIENT, store)
            self._seen = seen
        if self._validator is None:
            log.warning("OPC UA: client certificate refused: %s holds no trusted certificate", self.trusted)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
        await self._validator(cert, app_description)
