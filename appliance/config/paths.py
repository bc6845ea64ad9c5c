"""Paths in a station config are relative to the config file's folder, in every section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationInfo


def resolve_path(value: Any, info: ValidationInfo) -> Any:
    """A path relative to the config file's folder (the `base_dir` validation context)."""
    if value is None or value == "":
        return value
    path = Path(str(value)).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path
