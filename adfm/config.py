"""One base for every adfm configuration (station, training, gate, export) and one error type.

Configs are pydantic models that refuse unknown keys, so a misspelt key in a YAML file is an
error that names it rather than a setting silently left at its default. Validation errors become
lines of the form `source: key.path: why (got value)`, the same on every side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """A config section: unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A configuration that cannot be used; `problems` lists each as 'source: key: why'."""

    def __init__(self, problems: str | Sequence[str], heading: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = self.problems if heading is None else [f"{heading}:", *(f"  {p}" for p in self.problems)]
        super().__init__("\n".join(lines))


#: where a URL starts in a text; its token runs to the next whitespace
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: query parameters that carry credentials (`?pwd=…`, `&token=…`), their value up to the next parameter
_CREDENTIAL_PARAM = re.compile(
    r"(?i)(?P<name>[?&;](?:pwd|pass|passwd|password|passphrase|secret|token|access_token|auth|api_?key|key|"
    r"sig|signature|credentials?)=)(?P<value>[^&#\s]+?)(?=['\"]?(?:[&#\s]|$))")


def _redact_userinfo(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _URL_START.finditer(text):
        if m.start() < pos:
            continue
        end = len(text)
        for i in range(m.end(), len(text)):
            if text[i].isspace():
                end = i
                break
        token = text[m.end():end]
        user, colon, rest = token.partition(":")
        at = rest.rfind("@")
        # user:password@host — the password is everything to the LAST '@' of the token, so a
        # password holding '@', '/', quotes or '#' is hidden whole (a path with '@' may be hidden too:
        # better too much than a password); `host:port/...@` (digits up to '/') is not userinfo.
        if colon and at >= 0 and not any(c in user for c in "/@?#") and not rest.split("/", 1)[0].isdigit():
            out.append(text[pos:m.end()] + f"{user}:***" + rest[at:])
            pos = end
    out.append(text[pos:])
    return "".join(out)


def redact_secrets(text: str) -> str:
    """`text` with every URL password (any userinfo) and credential query parameter replaced by ***:
    the one redaction used by config errors, logs, `check --json` and camera status."""
    return _CREDENTIAL_PARAM.sub(lambda m: f"{m['name']}***", _redact_userinfo(text))


def key_path(loc: tuple[Any, ...]) -> str:
    """`('cameras', 0, 'url')` as `cameras.0.url`."""
    return ".".join(str(p) for p in loc) or "(top level)"


def validation_problems(source: str, exc: ValidationError) -> list[str]:
    """pydantic's errors as 'source: key.path: why (got value)' lines."""
    out = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if err["type"] in ("missing", "model_type") or isinstance(value, dict) else f" (got {value!r})"
        # a URL's password must not reach the screen or the system log, even from a bad config
        out.append(redact_secrets(f"{source}: {key_path(err['loc'])}: {msg}{shown}"))
    return out
