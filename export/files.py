"""Output files of one export: written under temporary names, renamed only when all is done.

A full disk, a failed verification or an interruption leaves nothing half-written under a final
name; temporary files (`.NAME.partial`) are removed on failure and by the next export.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ExportError

PARTIAL_SUFFIX = ".partial"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class OutputDir:
    """An output directory and the temporary files an export is writing into it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ExportError(f"output {self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(f"cannot create output directory {self.path}: {exc.strerror}") from exc
        if not os.access(self.path, os.W_OK):
            raise ExportError(f"output directory {self.path} is not writable")
        self._temps: dict[str, Path] = {}
        for stale in self.path.glob(f".*{PARTIAL_SUFFIX}"):  # left by an interrupted export
            stale.unlink(missing_ok=True)

    def temp(self, final_name: str) -> Path:
        """The temporary path a file that will be `final_name` is written to."""
        tmp = self.path / f".{final_name}{PARTIAL_SUFFIX}"
        self._temps[final_name] = tmp
        return tmp

    def commit(self, final_name: str) -> Path:
        """Rename one finished temporary file to its final name (atomic on one filesystem)."""
        tmp = self._temps.pop(final_name)
        final = self.path / final_name
        tmp.replace(final)
        return final

    def discard(self) -> None:
        """Remove every temporary file not committed."""
        for tmp in self._temps.values():
            tmp.unlink(missing_ok=True)
        self._temps.clear()


def check_free_space(path: Path, need_bytes: int) -> None:
    """Refuse to start an export that cannot fit (with 5 % slack for GGUF padding and metadata)."""
    free = shutil.disk_usage(path).free
    if free < need_bytes * 1.05:
        raise ExportError(
            f"not enough disk space in {path}: the export needs about {need_bytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB are free"
        )


@contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Turn a full disk (or another OS error) while writing `path` into a clear ExportError."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise ExportError(f"disk full while writing {what} to {path.parent}; nothing was kept") from exc
        raise ExportError(f"cannot write {what} to {path}: {exc}") from exc
