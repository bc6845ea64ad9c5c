"""adfm.camera: frame sources (USB/V4L2, RTSP, HTTP MJPEG, folder, replay) and triggers."""

from adfm.camera.frame import Frame

__all__ = ["Frame"]
