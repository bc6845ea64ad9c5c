"""A small JSON cache of per-file results (image sizes, decode checks, pseudo-boxes, references).

It lives next to a split's manifests, so re-running `adfm-data split` on unchanged files
recomputes nothing. Every entry is stamped with the files' modification time and size: an edited
mask or image invalidates exactly its own entries. A damaged cache file is ignored (and
rewritten), never fatal: the cache only saves time.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


def file_stamp(path: str | Path) -> str:
    """'<mtime_ns>:<size>' of a file, or 'missing'."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_mtime_ns}:{st.st_size}"


def stamps(paths: Iterable[str | Path]) -> str:
    return "|".join(f"{p}@{file_stamp(p)}" for p in paths)


class ResultCache:
    """Thread-safe map key → JSON value, each stored with a stamp that must match to be a hit."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.warning: str | None = None
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
                    self._entries = data["entries"]
                else:
                    self.warning = f"{self.path}: cache of another version ignored"
            except (OSError, ValueError, AttributeError) as exc:
                self.warning = f"{self.path}: damaged cache ignored ({exc})"

    def get(self, key: str, stamp: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.get("stamp") == stamp:
                self.hits += 1
                return entry["value"]
            self.misses += 1
            return None

    def put(self, key: str, stamp: str, value: Any) -> None:
        with self._lock:
            self._entries[key] = {"stamp": stamp, "value": value}

    def __len__(self) -> int:
        return len(self._entries)

    def save(self) -> None:
        """Write atomically (temporary file, then rename); a no-op for an in-memory cache."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self._lock:
            payload = json.dumps({"version": CACHE_VERSION, "entries": self._entries})
        tmp.write_text(payload, encoding="utf-8")
        tmp.replace(self.path)
