"""`folder:/path`: a line-scan system or PLC drops one image file per part into a folder.

The folder is polled rather than watched with inotify: polling also works on the SMB/NFS shares
such systems often write to. A file is delivered once it has stopped changing for `settle_s` and
decodes; it leaves the folder (moved to `done/` or renamed with the mark suffix) only when the
consumer acks the frame, i.e. after the part is journaled — a crash in between means the file is
read again on restart, never lost. A file that is not an image, or stays truncated, is counted,
logged with its name and moved to `errors/`. Nothing is ever deleted.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from .config import CameraConfig
from .errors import CameraError, FrameError, SourceError
from .frame import Frame
from .images import decode_image, image_format, natural_key
from .source import MAX_IDLE_BLOCK_S, FrameSource, now_pair

#: Fewer bytes than this with no known signature may simply be a file whose writer has not
#: flushed its header yet, so it gets the same grace period as a truncated image.
_MIN_SNIFF_BYTES = 16


@dataclass
class _Watch:
    size: int
    mtime_ns: int
    stable_since: float
    next_try: float = 0.0


def unique_target(directory: Path, name: str, tail: str = "") -> Path:
    """`directory/name+tail`, or `stem-1.ext+tail`… when taken: never overwrite a part's file."""
    stem, suffix = Path(name).stem, Path(name).suffix
    target = directory / f"{name}{tail}"
    n = 1
    while target.exists():
        target = directory / f"{stem}-{n}{suffix}{tail}"
        n += 1
    return target


class FolderSource(FrameSource):
    """New image files in a folder, oldest first; part id = file name without its extension."""

    streaming = False

    def __init__(self, config: CameraConfig, *, keep_files: bool = False):
        super().__init__(config)
        if config.kind != "folder":
            raise ValueError(f"FolderSource does not read {config.kind}: urls")
        self.folder = config.path
        self.options = config.folder
        self.keep_files = keep_files
        self.done_dir = self._resolve(self.options.done_dir)
        self.error_dir = self._resolve(self.options.error_dir)
        self._watch: dict[str, _Watch] = {}
        self._ready: list[str] = []
        self._last_scan = float("-inf")
        self._lock = threading.Lock()  # guards _in_flight and _settled (capture thread vs ack)
        self._ack_lock = threading.Lock()  # one ack at a time
        self._in_flight: dict[str, Path] = {}  # delivered, not yet acked
        self._settled: set[str] = set()  # handled but still here (kept, or a move failed): skip
        self._open = False

    def _resolve(self, directory: str) -> Path:
        path = Path(directory).expanduser()
        return path if path.is_absolute() else self.folder / path

    def open(self) -> None:
        if not self.folder.is_dir():
            what = "is not a folder" if self.folder.exists() else "does not exist"
            raise SourceError(f"watched folder {self.folder} {what}")
        self._open = True
        self._last_scan = float("-inf")

    def close(self) -> None:
        self._open = False
        self._ready = []

    # ---- reading -------------------------------------------------------------------------

    def read(self) -> Frame | None:
        if not self._open:
            raise SourceError(f"watched folder {self.folder}: not open")
        if not self._ready:
            since = time.monotonic() - self._last_scan
            if since < self.options.poll_interval_s:
                time.sleep(min(self.options.poll_interval_s - since, MAX_IDLE_BLOCK_S))
                if time.monotonic() - self._last_scan < self.options.poll_interval_s:
                    return None
            self._last_scan = time.monotonic()
            self._ready = self._scan(self._last_scan)
        while self._ready:
            frame = self._try(self._ready.pop(0), time.monotonic())
            if frame is not None:
                return frame
        return None

    def _skip(self, name: str) -> bool:
        if self.options.done_action == "mark" and name.endswith(self.options.mark_suffix):
            return True
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.options.ignore)

    def _scan(self, now: float) -> list[str]:
        """Names that have settled and are due for a read attempt, oldest first."""
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            raise SourceError(f"watched folder {self.folder}: cannot list ({exc.strerror or exc})") from exc
        with self._lock:
            busy = set(self._in_flight) | self._settled
        present: set[str] = set()
        ready: list[tuple[int, list[int | str], str]] = []
        for entry in entries:
            name = entry.name
            if self._skip(name):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished between listing and stat
            present.add(name)
            if name in busy:
                continue
            watch = self._watch.get(name)
            if watch is None or (watch.size, watch.mtime_ns) != (st.st_size, st.st_mtime_ns):
                watch = self._watch[name] = _Watch(st.st_size, st.st_mtime_ns, now)
            if now - watch.stable_since >= self.options.settle_s and now >= watch.next_try:
                ready.append((st.st_mtime_ns, natural_key(name), name))
        for name in set(self._watch) - present:
            del self._watch[name]
        with self._lock:
            self._settled &= present
            unmoved = set() if self.keep_files else set(self._settled)
        for name in sorted(unmoved):  # journaled, but the move failed (the folder was away): again
            with suppress(OSError):
                self._finish(self.folder / name)
                with self._lock:
                    self._settled.discard(name)
        return [name for *_, name in sorted(ready)]

    def _try(self, name: str, now: float) -> Frame | None:
        """Deliver `name` if it is a whole image; wait if it may still be written; reject it if bad."""
        path = self.folder / name
        watch = self._watch.get(name)
        if watch is None:
            return None
        try:
            data = path.read_bytes()
            st = path.stat()
        except FileNotFoundError:
            self._watch.pop(name, None)
            return None
        except OSError as exc:
            raise self._reject(path, f"{name}: cannot read ({exc.strerror or exc})") from exc
        if (st.st_size, st.st_mtime_ns) != (watch.size, watch.mtime_ns) or len(data) != st.st_size:
            self._watch[name] = _Watch(st.st_size, st.st_mtime_ns, now)  # still being written
            return None
        mono, wall = now_pair()
        try:
            raw = decode_image(data, name)
            frame = self._make_frame(raw, name, mono, wall, part_id=Path(name).stem, meta={"path": str(path)},
                                     encoded=data)
        except FrameError as exc:
            may_be_partial = image_format(data) is not None or len(data) < _MIN_SNIFF_BYTES
            if may_be_partial and now - watch.stable_since < self.options.corrupt_after_s:
                watch.next_try = now + max(self.options.settle_s, self.options.poll_interval_s)
                return None
            raise self._reject(path, str(exc)) from exc
        self._watch.pop(name, None)
        with self._lock:
            self._in_flight[name] = path
        return frame

    def _reject(self, path: Path, reason: str) -> FrameError:
        """Move a bad file to the error folder (left in place with keep_files); the error to raise."""
        self._watch.pop(path.name, None)
        if self.keep_files:
            with self._lock:
                self._settled.add(path.name)
            return FrameError(f"{reason} (left in place)")
        try:
            self.error_dir.mkdir(parents=True, exist_ok=True)
            target = unique_target(self.error_dir, path.name)
            shutil.move(path, target)
        except OSError as exc:
            with self._lock:
                self._settled.add(path.name)
            return FrameError(f"{reason}; could not move it to {self.error_dir}: {exc}")
        return FrameError(f"{reason}; moved to {target}")

    # ---- finishing -----------------------------------------------------------------------

    def ack(self, frame: Frame) -> None:
        """Move or mark the frame's file now that its part is journaled (idempotent).

        The file stays registered as in flight until it has left, so a scan running meanwhile in
        the capture thread never takes it for a new part.
        """
        name = frame.source_name
        with self._ack_lock:
            with self._lock:
                path = self._in_flight.get(name)
            if path is None:
                return
            try:
                if not self.keep_files:
                    self._finish(path)
            except OSError as exc:
                with self._lock:
                    self._settled.add(name)  # journaled: never deliver it again in this run
                    del self._in_flight[name]
                where = self.done_dir if self.options.done_action == "move" else "its marked name"
                raise CameraError(f"{name}: journaled, but could not be moved to {where}: {exc}") from exc
            with self._lock:
                if self.keep_files:
                    self._settled.add(name)
                del self._in_flight[name]

    def release(self, frame: Frame) -> None:
        """Not journaled (disk full): forget it was delivered, so a later scan delivers it again."""
        with self._lock:
            self._in_flight.pop(frame.source_name, None)

    def _finish(self, path: Path) -> None:
        if self.options.done_action == "move":
            self.done_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(path, unique_target(self.done_dir, path.name))
        else:
            path.rename(unique_target(self.folder, path.name, self.options.mark_suffix))

    @property
    def in_flight(self) -> list[str]:
        """Files delivered and not yet acked."""
        with self._lock:
            return sorted(self._in_flight)

    def info(self) -> dict[str, str]:
        if self.keep_files:
            done = "files left in place"
        elif self.options.done_action == "move":
            done = f"move → {self.done_dir}"
        else:
            done = f"mark → *{self.options.mark_suffix}"
        return {"backend": "folder (polled)", "done": done}
