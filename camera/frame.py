"""The frame record every camera source produces and the appliance consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured image of one part.

    `image` is RGB uint8 (H×W×3), after the camera's optional ROI crop and rotation; sources
    convert OpenCV's BGR once, here at the edge, so everything downstream sees RGB.
    """

    camera_id: str
    image: np.ndarray
    frame_number: int
    part_id: str
    captured_mono: float  # time.monotonic() at capture, for latency and stall detection
    captured_wall: float  # time.time() at capture, for records
    source_name: str = ""  # file name or stream URL the frame came from, for error messages
    meta: dict[str, str] = field(default_factory=dict)
    # GenICam cameras (aravis:) only, None elsewhere: the camera's own frame (block) id and its
    # timestamp in ns on the camera's clock. They tie a frame to the trigger pulse that exposed
    # it (a PLC counting pulses, or latching the camera clock), independent of host delays.
    camera_frame_id: int | None = None
    camera_timestamp_ns: int | None = None
    # The camera's own file (PNG or JPEG) when `image` is exactly its decode (folder and replay
    # sources, no ROI or rotation, see adfm.camera.images.storable_as_is): the journal stores these
    # bytes instead of encoding the pixels again. None for cameras that deliver pixels.
    encoded: bytes | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])
