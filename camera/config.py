"""Camera configuration: one validated model per camera, with the trigger and folder options.

The appliance's station config holds a list of these; `adfm-appliance camera-probe` builds one from
its command line. Everything is checked here, before any device is touched, so a typo gives an
error naming the field and the value instead of a capture thread that silently never delivers.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from adfm.config import StrictModel, redact_secrets

from .genicam import GenicamOptions, parse_target

SourceKind = Literal["v4l2", "usb", "rtsp", "http", "folder", "replay", "aravis"]
TriggerMode = Literal["free-run", "external", "folder", "camera", "link"]

_PREFIXES: tuple[tuple[str, SourceKind], ...] = (
    ("v4l2:", "v4l2"),
    ("usb:", "usb"),
    ("rtsp://", "rtsp"),
    ("rtsps://", "rtsp"),
    ("http://", "http"),
    ("https://", "http"),
    ("folder:", "folder"),
    ("replay:", "replay"),
    ("aravis:", "aravis"),
)
URL_FORMS = (
    "v4l2:/dev/videoN, usb:N, rtsp://…, http://… (MJPEG), folder:/path, replay:/path, "
    "aravis:[device id | serial=S | address=A] (GigE Vision / USB3 Vision)"
)


def source_kind(url: str) -> SourceKind:
    """Which source a URL names; ValueError listing the accepted forms when none."""
    for prefix, kind in _PREFIXES:
        if url.lower().startswith(prefix):
            return kind
    raise ValueError(f"unsupported camera url {url!r}; expected one of: {URL_FORMS}")


def source_location(url: str) -> str:
    """The part after the scheme for device/path URLs (`usb:0` → `0`); network URLs unchanged."""
    kind = source_kind(url)
    if kind in ("rtsp", "http"):
        return url
    return url.split(":", 1)[1]


def redact_url(url: str) -> str:
    """The URL without its password or credential parameters, for logs, status and frame records
    (adfm.config.redact_secrets: the one redaction)."""
    return redact_secrets(url)


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class FolderOptions(StrictModel):
    """How a `folder:` source treats the files a line-scan system or PLC drops into it.

    A file is one part. It is read once its size and modification time have not changed for
    `settle_s` and it decodes; after the appliance has journaled it, it is moved to `done_dir` or
    renamed with `mark_suffix`. Files that stay undecodable go to `error_dir`; nothing is deleted.
    """


    done_action: Literal["move", "mark"] = "move"
    done_dir: str = Field("done", min_length=1, description="subfolder (or absolute path) for done files")
    error_dir: str = Field("errors", min_length=1, description="subfolder (or absolute path) for bad files")
    mark_suffix: str = Field(".done", min_length=1, description="appended to a done file's name ('mark')")
    settle_s: float = Field(0.5, ge=0, description="size and mtime unchanged this long before reading")
    corrupt_after_s: float = Field(
        5.0, gt=0, description="a settled image file that still does not decode after this long is bad"
    )
    poll_interval_s: float = Field(0.2, gt=0, le=10)
    ignore: list[str] = Field(
        default_factory=lambda: [".*", "*.tmp", "*.part", "*.partial", "*.filepart", "*~"],
        description="glob patterns of names never read (files still being written under a temp name)",
    )

    @field_validator("mark_suffix")
    @classmethod
    def _plain_suffix(cls, v: str) -> str:
        if "/" in v or "\\" in v:
            raise ValueError(f"mark_suffix {v!r} must not contain a path separator")
        return v


class TriggerConfig(StrictModel):
    """What makes a frame a part.

    - `free-run`: the stream is sampled at `parts_per_s` (every frame when unset).
    - `external`: each ZeroMQ message on `endpoint` carries a part id; the next frame taken gets it.
    - `folder`: each file arriving in a `folder:` source is a part named after the file.
    - `camera`: each exposure of a triggered `aravis:` camera (genicam.trigger software or line) is
      a part, and none is dropped. With genicam.trigger `software`, mode `external` instead fires
      the camera once per ZeroMQ message, and that exposure is the message's part.
    - `link`: the station's PLC link fires each trigger in-process (`CameraWorker.fire`); the first
      frame captured at or after the trigger is the part (a software-triggered `aravis:` camera is
      fired once per trigger).
    Left unset, the mode follows the source: `folder` for `folder:` sources, `camera` for triggered
    `aravis:` cameras, `free-run` otherwise.
    """


    mode: TriggerMode | None = None
    parts_per_s: float | None = Field(None, gt=0)
    endpoint: str | None = Field(None, description="ZeroMQ address, e.g. tcp://127.0.0.1:5601 or ipc://…")
    socket: Literal["pull", "sub"] = "pull"
    bind: bool = Field(True, description="bind the endpoint (the PLC connects) or connect to it")
    topic: str = Field("", description="SUB subscription prefix")
    max_age_s: float = Field(2.0, gt=0, description="a trigger that finds no frame this long is an error")
    insecure: bool = Field(False, description="allow binding a TCP port reachable off this machine")

    @model_validator(mode="after")
    def _consistent(self) -> TriggerConfig:
        if self.parts_per_s is not None and self.mode not in (None, "free-run"):
            raise ValueError(f"parts_per_s applies to mode 'free-run', not {self.mode!r}")
        if self.mode == "external":
            if not self.endpoint:
                raise ValueError("mode 'external' needs an endpoint (e.g. tcp://127.0.0.1:5601)")
            self._check_endpoint(self.endpoint)
        elif self.endpoint:
            raise ValueError(f"endpoint is only used by mode 'external', not {self.mode or 'free-run'!r}")
        return self

    def _check_endpoint(self, endpoint: str) -> None:
        scheme = endpoint.split("://", 1)[0] if "://" in endpoint else ""
        if scheme not in ("tcp", "ipc", "inproc"):
            raise ValueError(f"endpoint {endpoint!r} must be tcp://host:port, ipc://path or inproc://name")
        if scheme == "tcp" and self.bind and not self.insecure:
            host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
            if not _is_loopback_host(host):
                raise ValueError(
                    f"endpoint {endpoint!r} would bind a trigger port reachable off this machine; "
                    "bind to 127.0.0.1, use ipc://, or set insecure: true explicitly"
                )


class CameraConfig(StrictModel):
    """One camera of a station (see the package docstring for the URL forms)."""


    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    url: str
    fps: float | None = Field(
        None, gt=0, description="replay: playback rate; v4l2/usb: rate asked of the device"
    )
    loop: bool = Field(True, description="replay: start again at the end instead of finishing")
    roi: tuple[int, int, int, int] | None = Field(None, description="[x, y, w, h] crop in sensor pixels")
    rotate: Literal[0, 90, 180, 270] = Field(0, description="clockwise, applied after the ROI crop")
    resolution: tuple[int, int] | None = Field(None, description="v4l2/usb: [width, height] to ask for")
    queue_size: int = Field(2, ge=1, le=1000)
    stall_timeout_s: float = Field(10.0, gt=0, description="no frame this long → reconnect")
    open_timeout_s: float = Field(10.0, gt=0)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    folder: FolderOptions = Field(default_factory=FolderOptions)
    genicam: GenicamOptions | None = Field(None, description="aravis: camera control (exposure, gain, trigger…)")

    @field_validator("url")
    @classmethod
    def _known_url(cls, v: str) -> str:
        kind = source_kind(v)
        location = source_location(v)
        if kind == "usb" and not location.isdigit():
            raise ValueError(f"usb url {v!r} must be usb:N with N the device index (e.g. usb:0)")
        if kind in ("v4l2", "folder", "replay") and not location.strip():
            raise ValueError(f"{kind} url {v!r} needs a path after '{kind}:'")
        if kind in ("rtsp", "http") and not urlsplit(v).hostname:
            raise ValueError(f"url {redact_url(v)!r} has no host")
        if kind == "aravis":
            parse_target(location)
        return v

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None:
            x, y, w, h = v
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"roi {list(v)} must be [x, y, w, h] with x, y >= 0 and w, h > 0")
        return v

    @field_validator("resolution")
    @classmethod
    def _resolution_positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] <= 0 or v[1] <= 0):
            raise ValueError(f"resolution {list(v)} must be [width, height] with both > 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CameraConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s {self.reconnect_min_s} is larger than reconnect_max_s {self.reconnect_max_s}"
            )
        kind = self.kind
        self._check_genicam(kind)
        camera_trigger = self.genicam.trigger if kind == "aravis" and self.genicam is not None else "off"
        triggered_camera = camera_trigger != "off"
        if self.trigger.mode is None:
            mode: TriggerMode = "folder" if kind == "folder" else "camera" if triggered_camera else "free-run"
            self.trigger = self.trigger.model_copy(update={"mode": mode})
        software_on_message = self.trigger.mode in ("external", "link") and camera_trigger == "software"
        if triggered_camera and self.trigger.mode != "camera" and not software_on_message:
            raise ValueError(
                f"genicam.trigger {camera_trigger!r}: every exposure is a part, so trigger.mode must be "
                f"'camera' (or unset), or 'external' or 'link' with genicam.trigger 'software', "
                f"not {self.trigger.mode!r}"
            )
        if self.trigger.mode == "camera" and not triggered_camera:
            raise ValueError("trigger.mode 'camera' needs an aravis: url with genicam.trigger 'software' or 'line'")
        if kind == "folder" and self.trigger.mode != "folder":
            raise ValueError(
                f"a folder: source is triggered by file arrival; trigger.mode {self.trigger.mode!r} "
                "would skip files (use mode 'folder')"
            )
        if self.trigger.mode == "folder" and kind != "folder":
            raise ValueError(f"trigger.mode 'folder' needs a folder: url, not {kind}:")
        if kind == "replay" and self.fps is not None and 1.0 / self.fps >= self.stall_timeout_s:
            raise ValueError(
                f"fps {self.fps} gives a frame every {1.0 / self.fps:.3g} s, not less than "
                f"stall_timeout_s {self.stall_timeout_s}: the camera would count as stalled"
            )
        return self

    def _check_genicam(self, kind: SourceKind) -> None:
        if kind != "aravis":
            if self.genicam is not None:
                raise ValueError(f"genicam settings apply to aravis: urls, not {kind}:")
            return
        if self.genicam is None:
            self.genicam = GenicamOptions()
        if self.fps is not None:
            raise ValueError("fps does not apply to aravis: cameras; set genicam.frame_rate_hz")
        if self.resolution is not None:
            raise ValueError("resolution does not apply to aravis: cameras; set genicam.sensor_roi")

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.url)

    @property
    def location(self) -> str:
        """Device path, index, file/folder path, or the network URL itself."""
        return source_location(self.url)

    @property
    def path(self) -> Path:
        """The filesystem path of a v4l2/folder/replay source (user `~` expanded)."""
        return Path(self.location).expanduser()

    @property
    def display_url(self) -> str:
        return redact_url(self.url)
