"""Live cameras and network streams through cv2.VideoCapture: v4l2/usb devices, RTSP, HTTP MJPEG.

OpenCV's FFmpeg backend in the opencv-python-headless wheel reads HTTP multipart MJPEG directly
(checked: it opens, honours the open/read timeouts, and reports a killed server as a failed read),
so HTTP needs no separate reader. Read timeouts are set to the stall timeout: a stream that goes
quiet returns a failed read, and the worker reconnects.

Capture time (what a trigger compares with, so that it never takes a frame exposed before it):
- v4l2/usb: the driver's buffer timestamp (OpenCV's CAP_PROP_POS_MSEC on the V4L2 backend), which
  Linux drivers take on CLOCK_MONOTONIC at capture — the same clock as `time.monotonic()`; used
  when it is plausible (within `_DEVICE_CLOCK_SLACK_S` of now), else the host time after the read.
- rtsp/http: the stream's presentation time counts from the stream's start, not on a host clock,
  so frames are stamped with the host time after read and decode — later than the exposure by the
  stream's buffering. A trigger then never takes a frame that *arrived* before it, but may take one
  exposed up to that latency earlier; stations that need exact timing use a device or GigE camera.

OpenCV's V4L2 backend takes no read timeout, and a wedged device (a USB camera that stops
streaming) can block `read()` for ever. Device reads therefore run in a helper thread and are
given up after `stall_timeout_s`: the source reports the stall and the worker reconnects; the
stuck capture is released once its read returns, if it ever does.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import cv2

from .config import CameraConfig
from .errors import SourceError
from .frame import Frame
from .source import FrameSource, now_pair

# RTSP over TCP: UDP loses packets under load and the frames come out smeared. An integrator can
# still choose otherwise by setting the variable before the appliance starts.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


#: A V4L2 buffer timestamp further than this from the host's monotonic clock is not on that clock.
_DEVICE_CLOCK_SLACK_S = 2.0


def device_capture_mono(buffer_ms: float, now_mono: float) -> float | None:
    """The device's capture time on the monotonic clock, or None when `buffer_ms` is not on it."""
    if buffer_ms <= 0 or buffer_ms != buffer_ms:
        return None
    t = buffer_ms / 1000.0
    return t if now_mono - _DEVICE_CLOCK_SLACK_S <= t <= now_mono else None


class VideoCaptureSource(FrameSource):
    """A device (`v4l2:/dev/videoN`, `usb:N`) or a stream (`rtsp://…`, `http://…` MJPEG)."""

    def __init__(self, config: CameraConfig):
        super().__init__(config)
        kind = config.kind
        if kind not in ("v4l2", "usb", "rtsp", "http"):
            raise ValueError(f"VideoCaptureSource does not read {kind}: urls")
        self._device = kind in ("v4l2", "usb")
        self._target: str | int
        if kind == "usb":
            self._target = int(config.location)
            self._api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        elif kind == "v4l2":
            self._target = str(config.path)
            self._api = cv2.CAP_V4L2
        else:
            self._target = config.url
            self._api = cv2.CAP_FFMPEG
        self._cap: cv2.VideoCapture | None = None
        self._reader: ThreadPoolExecutor | None = None  # device reads, bounded by stall_timeout_s

    def open(self) -> None:
        self.close()
        if self.config.kind == "v4l2" and not self.config.path.exists():
            raise SourceError(f"{self.name}: device {self.config.path} does not exist")
        params: list[int] = []
        if self._api == cv2.CAP_FFMPEG:  # other backends refuse to open with parameters they lack
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.config.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.config.stall_timeout_s * 1000),
            ]
        try:
            cap = cv2.VideoCapture(self._target, self._api, params)
        except cv2.error as exc:
            raise SourceError(f"{self.name}: cannot open ({exc.err or exc})") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: cannot open (no such device, refused, or not a video stream)")
        if self._device:
            self._configure_device(cap)
        self._cap = cap

    def _configure_device(self, cap: cv2.VideoCapture) -> None:
        """Ask the device for the configured size and rate, and for the freshest frame only."""
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.config.resolution is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.resolution[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.resolution[1])
        if self.config.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, self.config.fps)

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"{self.name}: not open")
        try:
            ok, image = self._read_device() if self._device else self._cap.read()
        except cv2.error as exc:
            raise SourceError(f"{self.name}: read failed ({exc.err or exc})") from exc
        mono, wall = now_pair()
        if not ok or image is None:
            raise SourceError(f"{self.name}: no frame (stream ended, timed out after "
                              f"{self.config.stall_timeout_s:g} s, or device lost)")
        meta = {"clock": "host"}
        if self._device:
            exposed = device_capture_mono(self._cap.get(cv2.CAP_PROP_POS_MSEC), mono)
            if exposed is not None:
                wall -= mono - exposed
                mono = exposed
                meta["clock"] = "device"
        return self._make_frame(image, self.name, mono, wall, meta=meta)

    def _read_device(self) -> tuple[bool, object]:
        """One device read, given up after stall_timeout_s (V4L2 has no read timeout of its own)."""
        cap = self._cap
        assert cap is not None
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"adfm-read-{self.config.id}")
        pending = self._reader.submit(cap.read)
        try:
            return pending.result(timeout=self.config.stall_timeout_s)
        except FutureTimeout:
            # Abandon the stuck read: never release a capture while a read is inside it; release it
            # when (if) that read returns. The next open() starts a fresh capture and reader.
            self._reader.shutdown(wait=False)
            self._reader = None
            self._cap = None
            pending.add_done_callback(lambda _f: cap.release())
            raise SourceError(f"{self.name}: no frame within stall_timeout_s {self.config.stall_timeout_s:g} s "
                              "(device stuck); reconnecting") from None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._reader is not None:
            self._reader.shutdown(wait=False)
            self._reader = None

    def info(self) -> dict[str, str]:
        """What the backend reports (probe output); empty when closed."""
        if self._cap is None:
            return {}
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        return {
            "backend": self._cap.getBackendName(),
            "reported_fps": f"{fps:g}" if fps and fps == fps else "",
            "reported_size": f"{int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x"
            f"{int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}",
        }
