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


#: `scheme://user:password@` anywhere in a text (a URL inside an error message, a repr, a log line)
_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*):(?P<password>[^\s/@'\"]+)@")


def redact_secrets(text: str) -> str:
    """`text` with every URL password replaced by ***: for config errors, logs, anything shown."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:***@", text)


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
