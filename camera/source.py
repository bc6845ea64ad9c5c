"""The one small interface every frame source implements, and the URL → source factory."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime

import numpy as np

from .config import CameraConfig
from .frame import Frame
from .images import storable_as_is
from .shaping import FrameShaper

#: The longest a read() may block when it has nothing to deliver, so that stop() and triggers stay
#: responsive. Network reads are bounded by the stall timeout instead (OpenCV's read timeout).
MAX_IDLE_BLOCK_S = 0.1


def default_part_id(camera_id: str, captured_wall: float, frame_number: int) -> str:
    """A part id unique across restarts for free-run frames: camera, UTC time to the ms, frame number."""
    stamp = datetime.fromtimestamp(captured_wall, UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
    return f"{camera_id}-{stamp}Z-{frame_number}"


class FrameSource(ABC):
    """A camera, stream, folder or recording that yields Frames.

    Lifecycle: open() (SourceError when it cannot), read() repeatedly, close() (always safe).
    read() returns a Frame, or None when nothing is ready yet (after blocking at most briefly); it
    raises SourceError when the source broke (the worker reopens it), FrameError for one bad
    frame or file (counted and skipped), SourceFinished when a finite source is exhausted.
    The same object is reopened after a failure, so per-source state (frame numbers, files in
    flight) survives reconnects.
    """

    #: True when frames arrive continuously, so silence means a stall; False for folders and
    #: triggered cameras, where no new part for an hour is normal (a source may set it per instance).
    streaming: bool = True

    def __init__(self, config: CameraConfig):
        self.config = config
        self.name = config.display_url
        self._shape = FrameShaper(config.roi, config.rotate)
        self._next_number = 0

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame | None: ...

    @abstractmethod
    def close(self) -> None: ...

    def on_trigger(self) -> None:  # noqa: B027 - optional hook
        """An external trigger message arrived: a source that exposes on demand (a software-triggered
        camera) takes its picture now; SourceError when it cannot."""

    def ack(self, frame: Frame) -> None:  # noqa: B027 - optional hook
        """The consumer has journaled `frame`; sources with something to finish (folders) do it now."""

    def release(self, frame: Frame) -> None:  # noqa: B027 - optional hook
        """The consumer could not journal `frame` (disk full): sources that keep parts (folders)
        deliver it again later; a stream cannot, and does nothing."""

    def info(self) -> dict[str, str]:
        """What the open source reports about itself (backend, nominal rate…), for the probe."""
        return {}

    def _make_frame(
        self,
        raw: np.ndarray,
        source_name: str,
        captured_mono: float,
        captured_wall: float,
        part_id: str | None = None,
        meta: dict[str, str] | None = None,
        camera_frame_id: int | None = None,
        camera_timestamp_ns: int | None = None,
        encoded: bytes | None = None,
    ) -> Frame:
        """Shape raw OpenCV pixels (FrameError if they do not fit) and number the frame. `encoded`:
        the file `raw` was decoded from; the frame keeps it when its pixels are that file's."""
        image = self._shape(raw, source_name)
        if encoded is not None and not (self._shape.keeps_pixels and storable_as_is(encoded)):
            encoded = None
        number = self._next_number
        self._next_number += 1
        return Frame(
            camera_id=self.config.id,
            image=image,
            frame_number=number,
            part_id=part_id or default_part_id(self.config.id, captured_wall, number),
            captured_mono=captured_mono,
            captured_wall=captured_wall,
            source_name=source_name,
            meta=meta or {},
            camera_frame_id=camera_frame_id,
            camera_timestamp_ns=camera_timestamp_ns,
            encoded=encoded,
        )

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_pair() -> tuple[float, float]:
    """(monotonic, wall) capture stamps, taken together."""
    return time.monotonic(), time.time()


def open_source(config: CameraConfig, *, keep_files: bool = False) -> FrameSource:
    """The source for `config.url` (not yet opened: call open(), or hand it to a CameraWorker).

    keep_files: folder sources neither move, mark nor reject files (the probe's read-only look).
    """
    kind = config.kind
    if kind == "folder":
        from .folder import FolderSource

        return FolderSource(config, keep_files=keep_files)
    if kind == "replay":
        from .replay import ReplaySource

        return ReplaySource(config)
    if kind == "aravis":
        from .aravis import AravisSource

        return AravisSource(config)
    from .capture import VideoCaptureSource

    return VideoCaptureSource(config)
