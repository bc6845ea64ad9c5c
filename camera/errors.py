"""What can go wrong with a frame source, split by what the capture thread does about it."""

from __future__ import annotations


class CameraError(Exception):
    """Base class for camera problems."""


class SourceError(CameraError):
    """The source is unusable right now (cannot open, connection lost, folder gone, stalled).

    The capture thread closes the source and reopens it with exponential backoff.
    """


class FrameError(CameraError):
    """One frame or file is bad (corrupt, truncated, not an image, ROI does not fit).

    The capture thread counts it, logs it with its name and goes on with the next one.
    """


class SourceFinished(CameraError):
    """A finite source (a replay with `loop: false`) has delivered everything it has."""


class CameraSettingsError(SourceError):
    """The camera refuses a configured setting: no such feature, out of its range, not one of its
    entries. The message names the config key and the GenICam feature.

    It is a SourceError, so the capture thread keeps retrying with backoff (a camera swapped for
    the right model then starts working) while its status shows the message.
    """
