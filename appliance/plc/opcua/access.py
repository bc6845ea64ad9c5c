"""Who may do what on the station's OPC UA server, from the files in `opcua.pki_dir`.

    server.der, server.key.pem   the server's certificate and private key (made at first start, 0600 key)
    trusted/                     client application certificates (DER or PEM) trusted for secure
                                 channels; a CA certificate there trusts every certificate it signed
    revoked/                     certificate revocation lists (optional)
    users/NAME.der | NAME.pem    a user's X509 identity certificate (log in with it)
    users/NAME.password          a user's password hash (`adfm-appliance opcua-user`)
    users/NAME.roles             what the user may do, one role a line (the bus's roles: `recipe` …)

Like the result bus's control plane (bus/keys.py), reading is open and changing needs a role:
anonymous sessions browse, read and subscribe (events included) but may not write or call a
method; a logged-in user may call the reading methods (results, recipe list); `PrepareRecipe` and
`UnprepareRecipe` need the `recipe` role. No variable is writable by anyone: what changes the line
goes through a method and is journaled with the user who called it. A password is accepted only on
a secure channel (a client certificate was presented, so the policy is not None).
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import ADMIN_TYPES, PermissionRuleset, User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.ua.ua_binary import struct_from_binary

from ...bus.keys import ROLES

log = logging.getLogger(__name__)

USERS_DIR = "users"
TRUSTED_DIR = "trusted"
REVOKED_DIR = "revoked"
SERVER_CERT = "server.der"
SERVER_KEY = "server.key.pem"
PASSWORD_SUFFIX = ".password"
ROLES_SUFFIX = ".roles"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


#: the session user of the request being served: set by the permission check, read by the method it
#: lets through (asyncua runs both in the connection's task, so the context carries it)
current_user: contextvars.ContextVar[User | None] = contextvars.ContextVar("adfm_opcua_user", default=None)


class AccessError(RuntimeError):
    """A file in the PKI folder that cannot be used; the message names it."""


def hash_password(password: str) -> str:
    """A line for users/NAME.password: scrypt with a random salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    b64 = base64.b64encode
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + f"{b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, line: str) -> bool:
    try:
        kind, n, r, p, salt, digest = line.strip().split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def write_user(pki: Path, name: str, *, password: str | None = None, roles: list[str] | None = None,
               certificate: Path | None = None) -> list[Path]:
    """Add or change a user in `pki/users` (`adfm-appliance opcua-user`): its password hash, roles
    and identity certificate; returns the files written. The running server reads users at start."""
    if not _NAME_RE.match(name):
        raise ValueError(f"user name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    for role in roles or []:
        if role not in ROLES:
            raise ValueError(f"role {role!r}: roles are {', '.join(ROLES)}")
    if password is not None and len(password) < 8:
        raise ValueError(f"user {name!r}: a password needs at least 8 characters")
    if certificate is not None and certificate.suffix.lower() not in (".der", ".pem"):
        raise ValueError(f"{certificate}: a user certificate is a .der or .pem file")
    folder = pki / USERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if password is not None:
        path = folder / f"{name}{PASSWORD_SUFFIX}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(hash_password(password) + "\n")
        os.replace(tmp, path)
        written.append(path)
    if roles is not None:
        path = folder / f"{name}{ROLES_SUFFIX}"
        path.write_text("".join(f"{r}\n" for r in roles), encoding="utf-8")
        written.append(path)
    if certificate is not None:
        path = folder / f"{name}{certificate.suffix.lower()}"
        shutil.copyfile(certificate, path)
        written.append(path)
    return written


class UserCertificate(bytes):
    """A certificate presented as the user's identity (an X509 identity token), as opposed to the
    client application's channel certificate, which is no login by itself."""


@dataclass
class Users:
    """The users in `pki_dir/users`: name → password hash, certificate (DER), roles."""

    passwords: dict[str, str] = field(default_factory=dict)
    certificates: dict[bytes, str] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    async def load(cls, folder: Path) -> Users:
        users = cls()
        if not folder.is_dir():
            return users
        for f in sorted(folder.iterdir()):
            name, suffix = f.stem, f.suffix.lower()
            try:
                if suffix == PASSWORD_SUFFIX:
                    users.passwords[name] = f.read_text(encoding="utf-8").strip()
                elif suffix in (".der", ".pem"):
                    cert = await uacrypto.load_certificate(f)
                    users.certificates[uacrypto.der_from_x509(cert)] = name
                elif suffix == ROLES_SUFFIX:
                    lines = [x.strip() for x in f.read_text(encoding="utf-8").splitlines()]
                    names = [x for x in lines if x and not x.startswith("#")]
                    unknown = sorted(set(names) - set(ROLES))
                    if unknown:
                        raise AccessError(f"{f}: unknown role(s) {', '.join(map(repr, unknown))}; "
                                          f"roles are {', '.join(ROLES)}")
                    users.roles[name] = frozenset(names)
            except AccessError:
                raise
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise AccessError(f"{f}: cannot read this user file: {exc}") from exc
        return users

    def roles_of(self, user: User | None) -> frozenset[str]:
        if user is None or user.role == UserRole.Anonymous or not user.name:
            return frozenset()
        return self.roles.get(user.name, frozenset())


class StationUserManager:
    """asyncua's user manager: anonymous, a password (only over a secure channel) or a user certificate."""

    def __init__(self, users: Users, allow_anonymous: bool) -> None:
        self.users = users
        self.allow_anonymous = allow_anonymous

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None:
            if not certificate:  # asyncua gives b"" for a channel without certificates (policy None)
                log.warning("OPC UA login %r refused: a password over security policy None", username)
                return None
            stored = self.users.passwords.get(username)
            if stored is None or not check_password(password or "", stored):
                log.warning("OPC UA login %r refused: unknown user or wrong password", username)
                return None
            return User(role=UserRole.User, name=username)
        if isinstance(certificate, UserCertificate):
            name = self.users.certificates.get(bytes(certificate))
            if name is None:
                log.warning("OPC UA login refused: the user certificate is not in users/")
                return None
            return User(role=UserRole.User, name=name)
        return User(role=UserRole.Anonymous) if self.allow_anonymous else None


class StationInternalServer(InternalServer):
    """Marks a certificate that came as the user's identity token, so that the user manager tells it
    apart from the channel's certificate an anonymous session on a secure channel also carries."""

    def verify_x509_token(self, isession: Any, token: ua.X509IdentityToken, signature: ua.SignatureData) -> bytes:
        return UserCertificate(super().verify_x509_token(isession, token, signature))


_ADMIN = {ua.NodeId(i) for i in ADMIN_TYPES}
_WRITE = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
_CALL = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
_HISTORY_UPDATE = ua.NodeId(ua.ObjectIds.HistoryUpdateRequest_Encoding_DefaultBinary)


class StationRules(PermissionRuleset):
    """Checked by asyncua before each request: anonymous sessions read, users call, roles change.
    `method_roles`: the role a method needs (methods not listed: any logged-in user)."""

    def __init__(self, users: Users, method_roles: dict[ua.NodeId, str], names: dict[ua.NodeId, str]) -> None:
        self.users = users
        self.method_roles = method_roles
        self.names = names
        self.refused = 0

    def _refuse(self, user: User | None, what: str) -> bool:
        self.refused += 1
        who = f"user {user.name!r}" if user is not None and user.name else "an anonymous session"
        log.warning("OPC UA: %s refused to %s", who, what)
        return False

    def check_validity(self, user: User | None, action_type_id: ua.NodeId, body: Any) -> bool:
        current_user.set(user)
        if action_type_id in _ADMIN:
            return self._refuse(user, "change the address space")
        anonymous = user is None or user.role == UserRole.Anonymous
        if action_type_id in (_WRITE, _HISTORY_UPDATE):
            # a logged-in user's write reaches the address space, where no variable is writable
            return self._refuse(user, "write") if anonymous else True
        if action_type_id == _CALL:
            calls = struct_from_binary(ua.CallParameters, body.copy()).MethodsToCall
            names = ", ".join(self.names.get(c.MethodId, c.MethodId.to_string()) for c in calls)
            if anonymous:
                return self._refuse(user, f"call {names} (log in)")
            have = self.users.roles_of(user)
            for c in calls:
                need = self.method_roles.get(c.MethodId)
                if need is not None and need not in have:
                    return self._refuse(user, f"call {self.names.get(c.MethodId, '?')}: it needs the {need!r} "
                                              f"role (users/{user.name}{ROLES_SUFFIX})")  # type: ignore[union-attr]
        return True
