"""Writing a file so that readers see it whole or not at all.

Manifests, split files, reports, journal images and gate heat maps are all written this way: to a
unique temporary file beside the target (name ending in `.tmp`, so a crash leaves only files that
startup sweeps recognise), then renamed over it. A failure — a full disk included — removes the
temporary file and leaves any earlier version of the target untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str, *, durable: bool = False, mode: int | None = None) -> Path:
    """Write `data` (str as UTF-8) to `path` atomically; returns the path.

    `durable` also fsyncs the file and its directory, so the file survives a power cut once this
    returns. `mode` sets the file's permissions (the temporary file is created 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path
