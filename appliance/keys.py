"""CURVE key pairs for the result bus (`adfm-appliance keys`).

Layout of a key directory (ZeroMQ certificate files, as written by `zmq.auth`)::

    server.key                    the station's public key — give it to every client
    server.key_secret             the station's secret key — stays on the line PC (mode 0600)
    clients/<name>.key            public keys of the clients the station admits
    client-secrets/<name>.key_secret   each client's own key pair — give it to that client only

The station admits exactly the public keys found in `clients/`: adding or removing a file there
and restarting the service grants or revokes a client.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "server"
CLIENTS_DIR = "clients"
CLIENT_SECRETS_DIR = "client-secrets"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CurveKeyError(RuntimeError):
    """A key file that is missing, unreadable or of the wrong kind; the message names it."""


@dataclass(frozen=True)
class CurveKeyPair:
    public: bytes
    secret: bytes


@dataclass(frozen=True)
class ServerCurve:
    """What a station needs to serve CURVE: its key pair and the folder of admitted client keys."""

    keys: CurveKeyPair
    authorized_clients: Path


@dataclass(frozen=True)
class ClientCurve:
    """What a client needs: the station's public key and its own key pair."""

    server_public: bytes
    keys: CurveKeyPair


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise CurveKeyError(f"{path}: key file not found (create keys with `adfm-appliance keys`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"{path}: not a ZeroMQ certificate file: {exc}") from exc
    if need_secret and not secret:
        raise CurveKeyError(f"{path}: holds only a public key; give the .key_secret file")
    return public, secret


def load_key_pair(secret_file: str | Path) -> CurveKeyPair:
    public, secret = _load(Path(secret_file), need_secret=True)
    assert secret is not None
    return CurveKeyPair(public, secret)


def load_public_key(key_file: str | Path) -> bytes:
    return _load(Path(key_file), need_secret=False)[0]


def load_server_curve(secret_file: str | Path, authorized_clients: str | Path) -> ServerCurve:
    folder = Path(authorized_clients)
    if not folder.is_dir():
        raise CurveKeyError(f"{folder}: folder of authorized client keys not found")
    if not any(folder.glob("*.key")):
        raise CurveKeyError(f"{folder}: holds no client public key (*.key); no client could connect")
    return ServerCurve(load_key_pair(secret_file), folder)


def load_client_curve(server_key: str | Path, client_secret: str | Path) -> ClientCurve:
    return ClientCurve(load_public_key(server_key), load_key_pair(client_secret))


@dataclass(frozen=True)
class GeneratedKeys:
    server_public: Path
    server_secret: Path
    authorized_clients: Path
    client_secrets: dict[str, Path]


def generate_keys(key_dir: str | Path, clients: list[str], force: bool = False) -> GeneratedKeys:
    """Create the station key pair (unless present) and one key pair per named client.

    Existing files are never overwritten unless `force`: replacing the server key locks out every
    client that holds the old public key.
    """
    import zmq.auth

    key_dir = Path(key_dir)
    for name in clients:
        if not _NAME_RE.match(name) or name == SERVER_NAME:
            raise ValueError(
                f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not {SERVER_NAME!r}"
            )
    key_dir.mkdir(parents=True, exist_ok=True)
    authorized = key_dir / CLIENTS_DIR
    secrets = key_dir / CLIENT_SECRETS_DIR
    authorized.mkdir(exist_ok=True)
    secrets.mkdir(exist_ok=True)
    os.chmod(secrets, 0o700)

    server_public = key_dir / f"{SERVER_NAME}.key"
    server_secret = key_dir / f"{SERVER_NAME}.key_secret"
    if force or not server_secret.exists():
        zmq.auth.create_certificates(key_dir, SERVER_NAME)
    os.chmod(server_secret, 0o600)

    made: dict[str, Path] = {}
    for name in clients:
        secret_file = secrets / f"{name}.key_secret"
        if secret_file.exists() and not force:
            raise FileExistsError(f"{secret_file}: client key exists; pass --force to replace it")
        public_file, secret_path = zmq.auth.create_certificates(secrets, name)
        os.chmod(secret_path, 0o600)
        shutil.copyfile(public_file, authorized / f"{name}.key")
        Path(public_file).unlink()  # the admitted copy lives in clients/
        made[name] = Path(secret_path)
    return GeneratedKeys(server_public, server_secret, authorized, made)
