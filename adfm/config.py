"""One base for every adfm configuration (station, training, gate, export) and one error type.

Configs are pydantic models that refuse unknown keys, so a misspelt key in a YAML file is an
error that names it rather than a setting silently left at its default. Validation errors become
lines of the form `source: key.path: why (got value)`, the same on every side.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Sequence
from typing import Any, Union, get_args, get_origin

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


#: pydantic error types that mean "a value of the wrong type": the field's description says what fits
_TYPE_ERRORS = ("_type", "_parsing")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (through Optional, list, dict values), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, list, dict, tuple) or get_args(annotation):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _section_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config section (model class) found by following `loc` (list indexes skipped) from `model`."""
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _in_words(annotation: Any) -> str:
    """A field's type as a config's reader says it: `int | None` → 'an integer (or leave it out)'."""
    args = get_args(annotation)
    optional = type(None) in args
    kinds = [a for a in args if a is not type(None)] if args and get_origin(annotation) in (Union, types.UnionType) \
        else [annotation]
    words = " or ".join("a mapping of keys" if isinstance(k, type) and issubclass(k, BaseModel)
                        else _WORDS.get(k, getattr(k, "__name__", None) or str(k).replace("typing.", ""))
                        for k in kinds)
    return words + (" (or leave it out)" if optional else "")


def _hint(model: type[BaseModel] | None, err: dict[str, Any]) -> str:
    """How to fix one error: the key meant for a misspelt one, what a field takes for a wrong type."""
    loc = tuple(err["loc"])
    if not loc or model is None:
        return ""
    if err["type"] == "extra_forbidden":
        section = _section_at(model, loc[:-1])
        if section is None:
            return ""
        known = list(section.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        where = key_path(loc[:-1])
        if close:
            return f"; did you mean {close[0]!r}? (keys of {where}: {', '.join(known)})"
        return f"; remove it, or use one of the keys of {where}: {', '.join(known)}"
    if any(err["type"].endswith(t) or err["type"] == t.strip("_") for t in _TYPE_ERRORS):
        section = _section_at(model, tuple(p for p in loc[:-1] if not isinstance(p, int)))
        field = section.model_fields.get(str(loc[-1])) if section is not None and isinstance(loc[-1], str) else None
        if field is not None:
            what = field.description or ""
            return f"; {loc[-1]} takes {_in_words(field.annotation)}" + (f": {what}" if what else "")
    return ""


def validation_problems(source: str, exc: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """pydantic's errors as 'source: key.path: why (got value)' lines; with the config's `model`,
    each also says how to fix it (the key meant for a misspelt one, what a field takes). A check
    across sections (no key of its own) names its keys in its message."""
    out = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if err["type"] in ("missing", "model_type") or isinstance(value, dict) else f" (got {value!r})"
        where = f"{key_path(err['loc'])}: " if err["loc"] else ""
        # a URL's password must not reach the screen or the system log, even from a bad config
        out.append(redact_secrets(f"{source}: {where}{msg}{shown}{_hint(model, err)}"))
    return out
