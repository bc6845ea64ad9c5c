"""Recorded input played back like a camera: `replay:/path/video.mp4` or `replay:/path/dir` of images.

Integrators test a station with recordings before the line runs. Frames come at `fps` (the
video's own rate, or DEFAULT_FPS, when unset), again from the start when `loop` is on, else the
source finishes. A bad image in a folder is counted and skipped like a bad frame from a camera.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from .config import CameraConfig
from .errors import SourceError, SourceFinished
from .frame import Frame
from .images import IMAGE_SUFFIXES, decode_image, natural_key, read_file
from .pacing import Pacer
from .source import MAX_IDLE_BLOCK_S, FrameSource, now_pair

DEFAULT_FPS = 10.0


class _VideoFile:
    """Raw frames of one video file, start to end."""

    def __init__(self, path: Path):
        self.path = path
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"replay {self.path}: not a readable video file")
        self._cap = cap

    @property
    def nominal_fps(self) -> float | None:
        fps = self._cap.get(cv2.CAP_PROP_FPS) if self._cap is not None else 0.0
        return fps if fps and fps == fps and 0 < fps < 1000 else None

    def next(self) -> tuple[np.ndarray, str, None] | None:
        """The next decoded frame and the file's name (a video frame has no file of its own)."""
        if self._cap is None:
            raise SourceError(f"replay {self.path}: not open")
        ok, image = self._cap.read()
        return (image, self.path.name, None) if ok and image is not None else None

    def rewind(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class _ImageFolder:
    """Raw frames of a folder's images in natural name order; re-listed on every pass."""

    nominal_fps = None

    def __init__(self, path: Path):
        self.path = path
        self._files: list[Path] = []
        self._index = 0

    def open(self) -> None:
        try:
            names = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        except OSError as exc:
            raise SourceError(f"replay {self.path}: cannot list ({exc.strerror or exc})") from exc
        if not names:
            raise SourceError(f"replay {self.path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._files = sorted(names, key=lambda p: natural_key(p.name))
        self._index = 0

    def next(self) -> tuple[np.ndarray, str, bytes] | None:
        """The next image, its file name and the file's bytes."""
        if self._index >= len(self._files):
            return None
        path = self._files[self._index]
        self._index += 1
        data = read_file(path)  # FrameError names the file
        return decode_image(data, path.name), path.name, data

    def rewind(self) -> None:
        self.open()

    def close(self) -> None:
        self._files = []


class ReplaySource(FrameSource):
    """Plays a video file or an image folder at a set rate, looping or once."""

    def __init__(self, config: CameraConfig):
        super().__init__(config)
        if config.kind != "replay":
            raise ValueError(f"ReplaySource does not read {config.kind}: urls")
        self._reader: _VideoFile | _ImageFolder | None = None
        self._pacer = Pacer(config.fps or DEFAULT_FPS)
        self._exhausted = False

    def open(self) -> None:
        self.close()
        if self._exhausted:
            raise SourceFinished(f"replay {self.config.path}: played once (loop is off)")
        path = self.config.path
        if not path.exists():
            raise SourceError(f"replay {path}: does not exist")
        reader = _ImageFolder(path) if path.is_dir() else _VideoFile(path)
        reader.open()
        self._reader = reader
        self._pacer = Pacer(self.config.fps or reader.nominal_fps or DEFAULT_FPS)

    def read(self) -> Frame | None:
        if self._reader is None:
            raise SourceError(f"replay {self.config.path}: not open")
        wait = self._pacer.wait_s(time.monotonic())
        if wait > 0:
            time.sleep(min(wait, MAX_IDLE_BLOCK_S))
        if not self._pacer.take(time.monotonic()):
            return None
        raw = self._reader.next()
        if raw is None:
            if not self.config.loop:
                self._exhausted = True
                raise SourceFinished(f"replay {self.config.path}: end reached (loop is off)")
            self._reader.rewind()
            raw = self._reader.next()
            if raw is None:
                raise SourceError(f"replay {self.config.path}: no frames")
        mono, wall = now_pair()
        image, name, encoded = raw
        return self._make_frame(image, name, mono, wall, encoded=encoded)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def info(self) -> dict[str, str]:
        if self._reader is None:
            return {}
        return {"backend": "video file" if isinstance(self._reader, _VideoFile) else "image folder",
                "playback_fps": f"{1.0 / self._pacer.period:g}"}
