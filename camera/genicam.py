"""Settings of a GenICam camera (GigE Vision, USB3 Vision) opened through Aravis: `aravis:` urls.

Only the shape of the settings is checked here; whether the camera has a feature, and whether a
value fits its range or its list of entries, is checked against the camera's own feature nodes
when the source opens (adfm.camera.aravis), with errors naming the feature.

URL forms (after `aravis:`):
- empty: the first camera found on the enabled interfaces;
- `serial=S`: the camera with that serial number;
- `address=A`: a GigE Vision camera at IP address or host name A, opened directly (no broadcast);
- anything else: a device id as `camera-probe aravis:` lists it (e.g. `Basler-21234567`, `Fake_1`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from adfm.config import StrictModel

AravisInterface = Literal["GigEVision", "USB3Vision", "Fake"]
CameraTriggerMode = Literal["off", "software", "line"]
DEFAULT_INTERFACES: tuple[AravisInterface, ...] = ("GigEVision", "USB3Vision")
TriggerActivation = Literal["rising-edge", "falling-edge", "any-edge", "level-high", "level-low"]

#: config spelling → GenICam TriggerActivation entry
ACTIVATION_ENTRIES: dict[str, str] = {
    "rising-edge": "RisingEdge",
    "falling-edge": "FallingEdge",
    "any-edge": "AnyEdge",
    "level-high": "LevelHigh",
    "level-low": "LevelLow",
}
_FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Features the typed settings own; setting them again under `features` would be ambiguous.
OWNED_FEATURES = frozenset({
    "PixelFormat", "Width", "Height", "OffsetX", "OffsetY", "ExposureTime", "ExposureTimeAbs", "ExposureAuto",
    "Gain", "GainRaw", "GainAbs", "GainAuto", "AcquisitionFrameRate", "AcquisitionFrameRateAbs",
    "TriggerMode", "TriggerSource", "TriggerActivation", "TriggerSelector", "AcquisitionMode",
})


@dataclass(frozen=True)
class AravisTarget:
    """Which camera an `aravis:` url names."""

    by: Literal["first", "id", "serial", "address"]
    value: str = ""

    def __str__(self) -> str:
        return {"first": "the first camera found", "id": f"device id {self.value!r}",
                "serial": f"serial number {self.value!r}", "address": f"address {self.value}"}[self.by]


def parse_target(location: str) -> AravisTarget:
    """The camera an `aravis:` url's location names; ValueError saying what is wrong."""
    text = location.strip()
    if not text:
        return AravisTarget("first")
    key, sep, value = text.partition("=")
    if sep:
        key, value = key.strip().lower(), value.strip()
        if key not in ("serial", "address", "id"):
            raise ValueError(f"aravis url: unknown selector {key!r}; use serial=…, address=… or a device id")
        if not value:
            raise ValueError(f"aravis url: {key}= needs a value")
        return AravisTarget(key, value)  # type: ignore[arg-type]
    return AravisTarget("id", text)


class GenicamOptions(StrictModel):
    """Camera control for an `aravis:` source, written to the camera each time it is opened.

    Unset values leave the camera as it is (its saved user set). `trigger` decides what starts an
    exposure: `off` free-runs at `frame_rate_hz`; `software` exposes once per software trigger
    (AravisSource.software_trigger); `line` exposes on the hardware input `trigger_line` at its
    `trigger_activation` edge. A triggered camera's every frame is one part.
    """

    interfaces: list[AravisInterface] = Field(
        default_factory=lambda: list(DEFAULT_INTERFACES),
        min_length=1,
        description="Aravis interfaces searched for the camera ('Fake' is Aravis's built-in simulated camera)",
    )
    pixel_format: str | None = Field(default=None, description="PixelFormat entry, e.g. Mono8, BayerRG8, RGB8")
    exposure_us: float | None = Field(default=None, gt=0, description="exposure time in µs (turns ExposureAuto off)")
    gain_db: float | None = Field(default=None, description="gain (turns GainAuto off)")
    frame_rate_hz: float | None = Field(default=None, gt=0, description="acquisition frame rate in free run")
    sensor_roi: tuple[int, int, int, int] | None = Field(
        default=None, description="[x, y, w, h] region read out by the camera (OffsetX, OffsetY, Width, Height)"
    )
    trigger: CameraTriggerMode = "off"
    trigger_line: str | None = Field(default=None, description="TriggerSource for trigger 'line', e.g. Line0")
    trigger_activation: TriggerActivation = "rising-edge"
    features: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="further GenICam features by name, written after the settings above"
    )
    buffers: int = Field(default=8, ge=2, le=256, description="stream buffer pool size")
    packet_size: int | None = Field(
        default=None, ge=576, le=16384, description="GigE Vision packet size in bytes; unset: negotiated"
    )

    @field_validator("interfaces")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"interfaces {v} lists one twice")
        return v

    @field_validator("pixel_format", "trigger_line")
    @classmethod
    def _entry_name(cls, v: str | None) -> str | None:
        if v is not None and not _FEATURE_NAME.match(v):
            raise ValueError(f"{v!r} is not a GenICam entry name (letters, digits, underscores)")
        return v

    @field_validator("sensor_roi")
    @classmethod
    def _roi_positive(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None:
            x, y, w, h = v
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"sensor_roi {list(v)} must be [x, y, w, h] with x, y >= 0 and w, h > 0")
        return v

    @field_validator("features")
    @classmethod
    def _feature_names(cls, v: dict[str, object]) -> dict[str, object]:
        for name in v:
            if not _FEATURE_NAME.match(name):
                raise ValueError(f"features: {name!r} is not a GenICam feature name")
            if name in OWNED_FEATURES:
                raise ValueError(f"features: {name} is set by its own key (pixel_format, exposure_us, gain_db, "
                                 "frame_rate_hz, sensor_roi, trigger…), not under features")
        return v

    @model_validator(mode="after")
    def _trigger_consistent(self) -> GenicamOptions:
        if self.trigger == "line" and not self.trigger_line:
            raise ValueError("trigger 'line' needs trigger_line (the camera's input, e.g. Line0)")
        if self.trigger != "line" and self.trigger_line:
            raise ValueError(f"trigger_line is only used by trigger 'line', not {self.trigger!r}")
        if self.trigger != "off" and self.frame_rate_hz is not None:
            raise ValueError(f"frame_rate_hz applies to free run; with trigger {self.trigger!r} the trigger "
                             "sets the rate")
        return self

    @property
    def triggered(self) -> bool:
        return self.trigger != "off"
