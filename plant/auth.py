"""The plant view's users: HTTP basic authentication against a users file of salted PBKDF2 hashes.

One line per user, `name:pbkdf2_sha256$iterations$salt$hash` (base64), written by `adfm-plant
passwd`; the file is read on every check, so adding a user needs no restart. A successful check
is remembered (by a SHA-256 of name and password) so a page's images do not each cost a PBKDF2.
Serve it behind TLS (a reverse proxy) off the plant server: basic authentication sends the
password with every request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from pathlib import Path

ITERATIONS = 200_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class AuthError(RuntimeError):
    """A users file or a user name that cannot be used; the message names it."""


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _check_hash(stored: str, password: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        want = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(want, got)


def read_users(path: Path) -> dict[str, str]:
    """name → stored hash; a malformed line is an error naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthError(f"{path}: cannot read the users file: {exc.strerror or exc}") from None
    users = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not _NAME.match(name) or not stored.startswith("pbkdf2_sha256$"):
            raise AuthError(f"{path}:{lineno}: expected name:pbkdf2_sha256$… (made by adfm-plant passwd)")
        users[name] = stored
    return users


def set_password(path: Path, name: str, password: str) -> None:
    """Add `name` or change its password (the file is created 0600)."""
    if not _NAME.match(name):
        raise AuthError(f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
    if len(password) < 8:
        raise AuthError("the password must have at least 8 characters")
    users = read_users(path) if path.exists() else {}
    users[name] = hash_password(password)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(f"{n}:{h}\n" for n, h in sorted(users.items()))
    os.replace(tmp, path)


class BasicAuth:
    """Checks `Authorization: Basic …` headers against the users file."""

    def __init__(self, users_file: Path) -> None:
        self.users_file = users_file
        self._ok: dict[str, str] = {}  # name → sha256(name:password:stored hash) of a past success
        read_users(users_file)  # a bad file stops the view at start, not at the first login

    def check(self, header: str | None) -> str | None:
        """The user's name when the header holds valid credentials, else None."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        stored = read_users(self.users_file).get(name)
        if stored is None:
            return None
        token = hashlib.sha256(f"{name}:{password}:{stored}".encode()).hexdigest()
        if self._ok.get(name) == token:
            return name
        if _check_hash(stored, password):
            self._ok[name] = token
            return name
        return None
