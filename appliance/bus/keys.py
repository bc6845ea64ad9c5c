"""CURVE key pairs for the result bus (`adfm-appliance keys`, `adfm-appliance client-key`).

A secret key never leaves the machine that made it. On the station::

    server.key                    the station's public key — give it to every client
    server.key_secret             the station's secret key (mode 0600)
    clients/<name>.key            public keys of the clients the station admits
    clients/<name>.operators      optional: the operator names that key may sign verdicts as
    clients/<name>.roles          optional: what that key may do, one role a line (default: verdict)

Each client makes its own pair (`adfm-appliance client-key --dir DIR --name review`: `review.key`
and `review.key_secret`, mode 0600 in a 0700 folder) and sends only `review.key` to the station's
administrator, who admits it (`adfm-appliance keys --dir /etc/adfm/keys --admit review=review.key`).
The station admits exactly the public keys found in `clients/`; the file's name is the identity
the journal records with every verdict and command that key sends.

Roles say what a key may ask of the station beyond reading: `verdict` (operator verdicts),
`recipe` (product changeover) and `model` (promote, roll back, shadow a model). A review terminal gets
`verdict` only — the default for a key without a roles file — and a line controller `recipe`:
changing what the line does needs a role given on purpose (`keys --admit NAME=FILE --roles recipe`).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

SERVER_NAME = "server"
CLIENTS_DIR = "clients"
#: where older versions put client secrets on the station; clients still find their key there
CLIENT_SECRETS_DIR = "client-secrets"
OPERATORS_SUFFIX = ".operators"
ROLES_SUFFIX = ".roles"
#: what a key may be allowed to ask; reading (replay, status, images) needs no role
ROLES = ("verdict", "recipe", "model")
#: the roles of an admitted key without a roles file: a review terminal's
DEFAULT_ROLES = frozenset({"verdict"})
MAX_OPERATOR_CHARS = 128
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CurveKeyError(RuntimeError):
    """A key file that is missing, unreadable or of the wrong kind; the message names it."""


@dataclass(frozen=True)
class CurveKeyPair:
    public: bytes
    secret: bytes


@dataclass(frozen=True)
class ServerCurve:
    """What a station needs to serve CURVE: its key pair, the folder of admitted client keys, and
    the registry built from it: public key (z85) → client name, client name → allowed operators
    (None: any name the client gives, recorded next to the key's name)."""

    keys: CurveKeyPair
    authorized_clients: Path
    clients: dict[str, str] = field(default_factory=dict)
    operators: dict[str, frozenset[str] | None] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)

    def check_role(self, client: str, role: str) -> str | None:
        """Why `client` may not do what `role` covers (None when it may)."""
        have = self.roles.get(client, DEFAULT_ROLES)
        if role in have:
            return None
        return (f"client key {client!r} has no role {role!r} (its roles: {', '.join(sorted(have)) or 'none'}); "
                f"see {CLIENTS_DIR}/{client}{ROLES_SUFFIX}")

    def client_name(self, user_id: str | None) -> str | None:
        """The admitted client's name for the User-Id ZeroMQ reports (its public key, z85)."""
        return None if user_id is None else self.clients.get(user_id)

    def check_operator(self, client: str, operator: str) -> str | None:
        """Why `client` may not sign as `operator` (None when it may)."""
        allowed = self.operators.get(client)
        if allowed is None or operator in allowed:
            return None
        return (f"operator {operator!r} is not registered for client key {client!r} "
                f"(registered: {', '.join(sorted(allowed)) or 'none'}); see {CLIENTS_DIR}/{client}{OPERATORS_SUFFIX}")


@dataclass(frozen=True)
class ClientCurve:
    """What a client needs: the station's public key and its own key pair."""

    server_public: bytes
    keys: CurveKeyPair


def operator_problem(name: str) -> str | None:
    """Why `name` is not an acceptable operator name (None when it is): 1-128 characters, no
    control or format characters (no line breaks, escapes or invisible marks in the journal and
    the log), no spaces at either end."""
    if not name or len(name) > MAX_OPERATOR_CHARS:
        return f"operator name {name!r}: 1-{MAX_OPERATOR_CHARS} characters"
    if name != name.strip():
        return f"operator name {name!r}: spaces at either end"
    bad = [c for c in name if unicodedata.category(c)[0] == "C"]
    if bad:
        return f"operator name {name!r}: control characters ({', '.join(repr(c) for c in bad[:3])})"
    return None


def _read_list(path: Path, what: str) -> list[str]:
    """The non-empty, non-comment lines of a clients/ side file."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CurveKeyError(f"{path}: cannot read the {what}: {exc}") from exc
    return [n for n in lines if n and not n.startswith("#")]


def _load(path: Path, need_secret: bool,
          made_by: str = "create keys with `adfm-appliance keys`") -> tuple[bytes, bytes | None]:
    """A certificate file's (public, secret) keys; `made_by` tells a missing file's owner how to make it."""
    import zmq.auth

    if not path.is_file():
        raise CurveKeyError(f"{path}: key file not found ({made_by})")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except PermissionError as exc:
        raise CurveKeyError(
            f"{path}: cannot be read by uid {os.geteuid()} ({exc.strerror}); the service user reads its keys "
            "through the group: chown root:adfm FILE && chmod 0640 FILE (the folder: 0750)") from exc
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
    key_files = sorted(folder.glob("*.key"))
    if not key_files:
        raise CurveKeyError(f"{folder}: holds no client public key (*.key); no client could connect")
    clients: dict[str, str] = {}
    operators: dict[str, frozenset[str] | None] = {}
    roles: dict[str, frozenset[str]] = {}
    for f in key_files:
        name = f.stem
        clients[load_public_key(f).decode("ascii")] = name
        listed = f.with_suffix(OPERATORS_SUFFIX)
        operators[name] = frozenset(_read_list(listed, "operator list")) if listed.is_file() else None
        granted = f.with_suffix(ROLES_SUFFIX)
        if granted.is_file():
            names = _read_list(granted, "roles")
            unknown = sorted(set(names) - set(ROLES))
            if unknown:
                raise CurveKeyError(f"{granted}: unknown role(s) {', '.join(map(repr, unknown))}; "
                                    f"roles are {', '.join(ROLES)}")
            roles[name] = frozenset(names)
        else:
            roles[name] = DEFAULT_ROLES
    return ServerCurve(load_key_pair(secret_file), folder, clients, operators, roles)


def load_client_curve(server_key: str | Path, client_secret: str | Path) -> ClientCurve:
    return ClientCurve(load_public_key(server_key), load_key_pair(client_secret))


def client_curve_from_options(server_key: Path | None, client_key: Path | None) -> ClientCurve | None:
    """A command line's `--server-key` / `--client-key`: both (CURVE), neither (None), never one."""
    if not (server_key or client_key):
        return None
    if not (server_key and client_key):
        raise CurveKeyError("CURVE needs both --server-key and --client-key")
    return load_client_curve(server_key, client_key)


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name) or name == SERVER_NAME:
        raise ValueError(f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not {SERVER_NAME!r}")


def _write_cert(path: Path, public: bytes, secret: bytes | None) -> None:
    """A ZeroMQ certificate file (the format `zmq.auth.load_certificate` reads); a secret one is
    created with mode 0600 from the start, so it is never readable by anyone else, not even briefly."""
    lines = ["#   ZeroMQ CURVE " + ("**Secret** Certificate" if secret else "Public Certificate"),
             "#   adfm: " + ("never copy this file to another machine" if secret else "safe to share"),
             "", "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _new_pair(public_file: Path, secret_file: Path) -> None:
    import zmq

    public, secret = zmq.curve_keypair()
    _write_cert(secret_file, public, secret)
    _write_cert(public_file, public, None)


@dataclass(frozen=True)
class ServerKeys:
    server_public: Path
    server_secret: Path
    authorized_clients: Path


def generate_server_keys(key_dir: str | Path, force: bool = False) -> ServerKeys:
    """Create the station's key pair (unless present) and its empty `clients/` folder.

    An existing pair is never replaced unless `force`: that would lock out every client.
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    authorized = key_dir / CLIENTS_DIR
    authorized.mkdir(exist_ok=True)
    server_public = key_dir / f"{SERVER_NAME}.key"
    server_secret = key_dir / f"{SERVER_NAME}.key_secret"
    if force or not server_secret.exists():
        _new_pair(server_public, server_secret)
    os.chmod(server_secret, 0o600)
    return ServerKeys(server_public, server_secret, authorized)


def generate_client_keys(key_dir: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """On the client's own machine: its key pair, `<name>.key` (send to the station) and
    `<name>.key_secret` (0600 in a 0700 folder; it stays here). Returns (public, secret)."""
    _check_name(name)
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    public, secret = key_dir / f"{name}.key", key_dir / f"{name}.key_secret"
    if secret.exists() and not force:
        raise FileExistsError(f"{secret}: client key exists; pass --force to replace it")
    _new_pair(public, secret)
    return public, secret


def find_public_key(key_dir: str | Path, public_file: str | Path) -> Path:
    """A client's public key file as given: absolute, or relative to the working directory, or —
    where the administrator copied what the client sent — relative to the station's key folder."""
    given = Path(public_file).expanduser()
    if given.is_absolute() or given.exists():
        return given
    in_keys = Path(key_dir) / given
    if in_keys.exists():
        return in_keys
    raise CurveKeyError(f"{given}: not found in the working directory ({Path.cwd()}) nor in the key folder "
                        f"({key_dir}); copy the client's public {given.name} to one of them (the client makes it "
                        "with `adfm-appliance client-key`)")


def admit_client(key_dir: str | Path, name: str, public_file: str | Path,
                 operators: list[str] | None = None, force: bool = False, roles: list[str] | None = None) -> Path:
    """On the station: admit a client's public key as `clients/<name>.key` (a file holding a
    secret key is refused). `operators`: the names that key may sign verdicts as; `roles`: what
    it may do (default: verdicts only)."""
    for role in roles or []:
        if role not in ROLES:
            raise ValueError(f"role {role!r}: roles are {', '.join(ROLES)}")
    _check_name(name)
    public_file = find_public_key(key_dir, public_file)
    public, secret = _load(public_file, need_secret=False,
                           made_by="the client makes it with `adfm-appliance client-key`")
    if secret:
        raise CurveKeyError(f"{public_file}: holds a secret key; send only the public {name}.key to the station")
    authorized = Path(key_dir) / CLIENTS_DIR
    authorized.mkdir(parents=True, exist_ok=True)
    target = authorized / f"{name}.key"
    if target.exists() and not force:
        raise FileExistsError(f"{target}: a client named {name!r} is admitted already; pass --force to replace it")
    _write_cert(target, public, None)
    listed = target.with_suffix(OPERATORS_SUFFIX)
    if operators is not None:
        for op in operators:
            why = operator_problem(op.strip())
            if why:
                raise ValueError(why)
        listed.write_text("".join(f"{op.strip()}\n" for op in operators), encoding="utf-8")
    elif force:
        listed.unlink(missing_ok=True)
    granted = target.with_suffix(ROLES_SUFFIX)
    if roles is not None:
        granted.write_text("".join(f"{r}\n" for r in roles), encoding="utf-8")
    elif force:
        granted.unlink(missing_ok=True)
    return target
