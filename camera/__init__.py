"""adfm.camera: frame sources (USB/V4L2, RTSP, HTTP MJPEG, folder, replay, GenICam) and triggers.

    from . import CameraConfig, CameraWorker
    worker = CameraWorker(CameraConfig(id="cam1", url="rtsp://10.0.0.5/stream1"))
    worker.start()
    frame = worker.get(timeout=1.0)   # None when nothing came
    ...journal it...
    worker.ack(frame)                 # folder sources move/mark the file only now
    worker.stop()

URL forms: `v4l2:/dev/video0`, `usb:0`, `rtsp://…`, `http://…` (MJPEG), `folder:/path`,
`replay:/path/video.mp4`, `replay:/path/dir`, `aravis:[id | serial=S | address=A]` (GenICam:
GigE Vision / USB3 Vision through Aravis). Names are imported lazily so that importing the
package (the appliance's CLI does at start) does not load OpenCV and ZeroMQ.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .frame import Frame

if TYPE_CHECKING:
    from .capture_thread import CameraWorker
    from .config import CameraConfig, FolderOptions, TriggerConfig
    from .errors import CameraError, FrameError, SourceError, SourceFinished
    from .source import FrameSource, open_source

_LAZY = {
    "CameraConfig": "adfm.camera.config",
    "FolderOptions": "adfm.camera.config",
    "TriggerConfig": "adfm.camera.config",
    "CameraError": "adfm.camera.errors",
    "FrameError": "adfm.camera.errors",
    "SourceError": "adfm.camera.errors",
    "SourceFinished": "adfm.camera.errors",
    "FrameSource": "adfm.camera.source",
    "open_source": "adfm.camera.source",
    "CameraWorker": "adfm.camera.capture_thread",
}

__all__ = [
    "CameraConfig",
    "CameraError",
    "CameraWorker",
    "FolderOptions",
    "Frame",
    "FrameError",
    "FrameSource",
    "SourceError",
    "SourceFinished",
    "TriggerConfig",
    "open_source",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adfm.camera' has no attribute {name!r}")
