"""The server's certificate (made on first use) and the trust in client application certificates."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CERT_DAYS = 3650


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
