"""`aravis:…`: GenICam cameras (GigE Vision, USB3 Vision) through Aravis, by GObject introspection.

Aravis is the maintained open-source GenICam stack on Linux (Debian packages libaravis-0.8-0 and
gir1.2-aravis-0.8); PyGObject reaches all of it, including Aravis's simulated cameras that the tests
run against, without a vendor SDK or GenTL producer.

Every open writes the configured settings (adfm.camera.genicam) to the camera after checking each
against the camera's feature node — range, increment, enumeration entries, access — so an error
names the config key, the feature and what the camera accepts. Frames carry the camera's frame id
and timestamp. A buffer the camera delivered incomplete is one bad frame; a lost control channel
(GigE Vision heartbeat), a camera that stopped answering, or no frame for `stall_timeout_s` in free
run is a lost source that the capture thread reopens. In trigger mode silence is normal: the source
then checks now and then that the camera still answers instead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .config import CameraConfig
from .errors import CameraSettingsError, FrameError, SourceError
from .frame import Frame
from .genicam import ACTIVATION_ENTRIES, AravisTarget, GenicamOptions, parse_target
from .pixels import SUPPORTED_NAMES, format_name, to_opencv
from .source import MAX_IDLE_BLOCK_S, FrameSource, now_pair

log = logging.getLogger("adfm.camera")

INSTALL_HINT = (
    "Aravis is not available: on Debian/Ubuntu `apt-get install gir1.2-aravis-0.8 libaravis-0.8-0 aravis-tools`, "
    "and in the appliance's environment `pip install 'adfm[camera-aravis]'` (PyGObject)"
)
ALL_INTERFACES = ("Fake", "USB3Vision", "GigEVision")
#: A triggered camera that delivers nothing is asked for a feature this often, to tell an idle
#: line from a lost camera.
ALIVE_CHECK_S = 2.0
_EXPOSURE_FEATURES = ("ExposureTime", "ExposureTimeAbs")
_GAIN_FEATURES = ("Gain", "GainAbs", "GainRaw")
_FRAME_RATE_FEATURES = ("AcquisitionFrameRate", "AcquisitionFrameRateAbs")

# Aravis keeps its interface list and device list per process: one caller at a time.
_SYSTEM_LOCK = threading.Lock()
_loaded: tuple[Any, Any] | None = None


def load_aravis() -> tuple[Any, Any]:
    """(Aravis, GLib) from GObject introspection; SourceError saying what to install when missing."""
    global _loaded
    if _loaded is None:
        try:
            import gi  # type: ignore[import-untyped]  # PyGObject ships no type information

            gi.require_version("Aravis", "0.8")
            from gi.repository import Aravis, GLib  # type: ignore[import-untyped]
        except (ImportError, ValueError) as exc:
            raise SourceError(f"{INSTALL_HINT} ({exc})") from exc
        _loaded = (Aravis, GLib)
    return _loaded


def aravis_available() -> str | None:
    """None when Aravis can be used here, else why not (for tests and the probe)."""
    try:
        load_aravis()
    except SourceError as exc:
        return str(exc)
    return None


def _use_interfaces(aravis: Any, interfaces: Sequence[str]) -> None:
    for name in ALL_INTERFACES:
        (aravis.enable_interface if name in interfaces else aravis.disable_interface)(name)


@dataclass(frozen=True)
class CameraInfo:
    """One camera found on the enabled interfaces."""

    id: str
    vendor: str
    model: str
    serial: str
    address: str
    protocol: str
    physical_id: str

    @property
    def url(self) -> str:
        return f"aravis:{self.id}"


def discover(interfaces: Sequence[str]) -> list[CameraInfo]:
    """The cameras Aravis finds on `interfaces` (GigE Vision discovery broadcasts on every network
    interface; leave GigEVision out to stay off the network)."""
    aravis, _ = load_aravis()
    with _SYSTEM_LOCK:
        _use_interfaces(aravis, interfaces)
        aravis.update_device_list()
        return [
            CameraInfo(
                id=aravis.get_device_id(i) or "",
                vendor=aravis.get_device_vendor(i) or "",
                model=aravis.get_device_model(i) or "",
                serial=aravis.get_device_serial_nbr(i) or "",
                address=aravis.get_device_address(i) or "",
                protocol=aravis.get_device_protocol(i) or "",
                physical_id=aravis.get_device_physical_id(i) or "",
            )
            for i in range(aravis.get_n_devices())
        ]


def open_camera(target: AravisTarget, interfaces: Sequence[str]) -> Any:
    """An Aravis.Camera for `target`; SourceError saying which camera could not be opened and why.

    An address opens the camera directly; a serial number needs a discovery first to find its id.
    """
    aravis, glib = load_aravis()
    device_id: str | None
    if target.by in ("serial", "first"):
        found = [c for c in discover(interfaces) if target.by == "first" or c.serial == target.value]
        if not found:
            raise SourceError(f"no camera with {target} on {', '.join(interfaces)}" if target.by == "serial"
                              else f"no camera found on {', '.join(interfaces)}")
        device_id = found[0].id
    elif target.by == "address" and "GigEVision" not in interfaces:
        raise SourceError(f"{target}: opening by address needs the GigEVision interface (genicam.interfaces)")
    else:
        device_id = target.value or None
    with _SYSTEM_LOCK:
        _use_interfaces(aravis, interfaces)
        try:
            return aravis.Camera.new(device_id)
        except glib.Error as exc:
            raise SourceError(f"cannot open {target} on {', '.join(interfaces)}: {exc.message}") from exc


# ---- settings ------------------------------------------------------------------------------------


class _Settings:
    """Writes GenicamOptions to an open camera, checking each value against its feature node."""

    def __init__(self, camera: Any, where: str):
        self.aravis, self.glib = load_aravis()
        self.camera = camera
        self.device = camera.get_device()
        self.where = where

    def fail(self, message: str) -> CameraSettingsError:
        return CameraSettingsError(f"{self.where}: {message}")

    def node(self, feature: str, key: str, *, write: bool = True) -> Any:
        node = self.device.get_feature(feature)
        if node is None:
            return None
        if not node.is_implemented() or not node.is_available():
            raise self.fail(f"{key}: feature {feature} is not available on this camera now")
        if write:
            access = node.get_actual_access_mode()
            if access not in (self.aravis.GcAccessMode.RW, self.aravis.GcAccessMode.WO):
                raise self.fail(f"{key}: feature {feature} is not writable ({access.value_nick})")
        return node

    def first_feature(self, names: tuple[str, ...], key: str) -> str:
        for name in names:
            if self.device.get_feature(name) is not None:
                return name
        raise self.fail(f"{key}: the camera has none of the features {', '.join(names)}")

    def entries(self, feature: str) -> list[str]:
        return list(self.device.dup_available_enumeration_feature_values_as_strings(feature) or [])

    def call(self, key: str, feature: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.glib.Error as exc:
            raise self.fail(f"{key}: camera refused {feature}: {exc.message}") from exc

    def write(self, key: str, feature: str, value: bool | int | float | str) -> None:
        """Set one feature by name after checking its type, range, increment or entries."""
        a = self.aravis
        node = self.node(feature, key)
        if node is None:
            raise self.fail(f"{key}: the camera has no feature {feature!r}")
        cam = self.camera
        if isinstance(node, a.GcEnumeration):
            allowed = self.entries(feature)
            if str(value) not in allowed:
                raise self.fail(f"{key}: {value!r} is not an entry of {feature} (camera offers: {', '.join(allowed)})")
            self.call(key, feature, cam.set_string, feature, str(value))
            if (got := cam.get_string(feature)) != str(value):
                raise self.fail(f"{key}: {feature} reads back {got!r} after writing {value!r}")
        elif isinstance(node, a.GcBoolean):
            if not isinstance(value, bool):
                raise self.fail(f"{key}: {feature} is a boolean feature, got {value!r}")
            self.call(key, feature, cam.set_boolean, feature, value)
        elif isinstance(node, a.GcInteger):
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(f"{key}: {feature} is an integer feature, got {value!r}")
            self.check_integer(key, feature, value)
            self.call(key, feature, cam.set_integer, feature, value)
            if (got := cam.get_integer(feature)) != value:
                raise self.fail(f"{key}: {feature} reads back {got} after writing {value}")
        elif isinstance(node, a.GcFloat):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(f"{key}: {feature} is a number feature, got {value!r}")
            self.check_float(key, feature, float(value), cam.get_float_bounds(feature))
            self.call(key, feature, cam.set_float, feature, float(value))
        elif isinstance(node, a.GcCommand):
            if value is not True:
                raise self.fail(f"{key}: {feature} is a command; write true to execute it")
            self.call(key, feature, cam.execute_command, feature)
        elif isinstance(node, a.GcString):
            self.call(key, feature, cam.set_string, feature, str(value))
        else:
            raise self.fail(f"{key}: feature {feature} ({type(node).__name__}) cannot be set from the config")

    def check_integer(self, key: str, feature: str, value: int) -> None:
        low, high = self.camera.get_integer_bounds(feature)
        if not low <= value <= high:
            raise self.fail(f"{key}: {value} is outside {feature}'s range [{low}, {high}]")
        step = self.camera.get_integer_increment(feature)
        if step > 1 and (value - low) % step:
            raise self.fail(f"{key}: {value} is not a valid {feature}: it goes from {low} in steps of {step}")

    def check_float(self, key: str, feature: str, value: float, bounds: Any) -> None:
        low, high = bounds
        if not low <= value <= high:
            raise self.fail(f"{key}: {value:g} is outside {feature}'s range [{low:g}, {high:g}]")

    def set_float(self, key: str, features: tuple[str, ...], value: float, bounds: Any, setter: Any,
                  auto: tuple[str, Any, Any] | None = None) -> None:
        """Write a float setting: the camera's own feature, checked against its range, its auto mode
        (feature name, availability check, setter) turned off first so the value sticks."""
        feature = self.first_feature(features, key)
        self.check_float(key, feature, value, bounds())
        if auto is not None:
            auto_feature, available, set_auto = auto
            if available():
                self.call(key, auto_feature, set_auto, self.aravis.Auto.OFF)
        self.call(key, feature, setter, value)

    # ---- the typed settings, in the order their features depend on each other ----

    def apply(self, options: GenicamOptions) -> None:
        cam = self.camera
        if self.device.get_feature("TriggerMode") is not None:
            self.call("genicam.trigger", "TriggerMode", cam.clear_triggers)  # free run while configuring
        if self.device.get_feature("AcquisitionMode") is not None:
            self.write("genicam", "AcquisitionMode", "Continuous")
        self.pixel_format(options.pixel_format)
        if options.sensor_roi is not None:
            self.region(options.sensor_roi)
        if options.exposure_us is not None:
            self.set_float("genicam.exposure_us", _EXPOSURE_FEATURES, options.exposure_us,
                           cam.get_exposure_time_bounds, cam.set_exposure_time,
                           auto=("ExposureAuto", cam.is_exposure_auto_available, cam.set_exposure_time_auto))
        if options.gain_db is not None:
            self.set_float("genicam.gain_db", _GAIN_FEATURES, options.gain_db, cam.get_gain_bounds, cam.set_gain,
                           auto=("GainAuto", cam.is_gain_auto_available, cam.set_gain_auto))
        if options.frame_rate_hz is not None:
            self.set_float("genicam.frame_rate_hz", _FRAME_RATE_FEATURES, options.frame_rate_hz,
                           cam.get_frame_rate_bounds, cam.set_frame_rate)
        for name, value in options.features.items():
            self.write(f"genicam.features.{name}", name, value)
        if options.triggered:
            self.trigger(options)

    def pixel_format(self, wanted: str | None) -> None:
        key = "genicam.pixel_format"
        if wanted is None:
            current = self.camera.get_pixel_format_as_string()
            if current not in SUPPORTED_NAMES:
                raise self.fail(f"{key}: the camera is set to {current}, which adfm does not convert; set one of "
                                f"{', '.join(n for n in self.entries('PixelFormat') if n in SUPPORTED_NAMES)}")
            return
        offered = self.entries("PixelFormat")
        if wanted not in offered:
            raise self.fail(f"{key}: {wanted!r} is not an entry of PixelFormat (camera offers: {', '.join(offered)})")
        if wanted not in SUPPORTED_NAMES:
            usable = [n for n in offered if n in SUPPORTED_NAMES]
            raise self.fail(f"{key}: adfm does not convert {wanted}; of this camera's formats it converts "
                            f"{', '.join(usable) or 'none'}")
        self.write(key, "PixelFormat", wanted)

    def region(self, roi: tuple[int, int, int, int]) -> None:
        key = "genicam.sensor_roi"
        x, y, w, h = roi
        for feature in ("Width", "Height"):
            if self.node(feature, key) is None:
                raise self.fail(f"{key}: the camera has no feature {feature}")
        offsets = all(self.device.get_feature(f) is not None for f in ("OffsetX", "OffsetY"))
        if (x or y) and not offsets:
            raise self.fail(f"{key}: the camera has no OffsetX/OffsetY, so the region must start at 0, 0")
        if offsets:  # offsets to 0 first, so the full width and height are allowed
            self.call(key, "OffsetX", self.camera.set_integer, "OffsetX", 0)
            self.call(key, "OffsetY", self.camera.set_integer, "OffsetY", 0)
        self.write(key, "Width", w)
        self.write(key, "Height", h)
        if offsets:
            self.write(key, "OffsetX", x)
            self.write(key, "OffsetY", y)

    def trigger(self, options: GenicamOptions) -> None:
        key = "genicam.trigger"
        if self.device.get_feature("TriggerMode") is None:
            raise self.fail(f"{key}: the camera has no TriggerMode feature, so it cannot be triggered")
        if self.device.get_feature("TriggerSelector") is not None:
            self.write(key, "TriggerSelector", "FrameStart")
        self.write(key, "TriggerMode", "On")
        source = "Software" if options.trigger == "software" else options.trigger_line or ""
        source_key = key if options.trigger == "software" else "genicam.trigger_line"
        self.write(source_key, "TriggerSource", source)
        activation = ACTIVATION_ENTRIES[options.trigger_activation]
        if self.device.get_feature("TriggerActivation") is not None:
            self.write("genicam.trigger_activation", "TriggerActivation", activation)
        elif options.trigger_activation != "rising-edge":
            raise self.fail(f"genicam.trigger_activation: the camera has no TriggerActivation feature "
                            f"to select {activation}")


def apply_settings(camera: Any, options: GenicamOptions, where: str) -> None:
    """Write `options` to `camera`; CameraSettingsError naming the key and feature on the first refusal."""
    camera.set_range_check_policy(load_aravis()[0].RangeCheckPolicy.ENABLE)
    _Settings(camera, where).apply(options)


def key_features(camera: Any) -> dict[str, str]:
    """What an integrator looks at first: identity, sensor, format, exposure/gain/rate ranges, triggers."""
    _, glib = load_aravis()
    out: dict[str, str] = {}

    def put(name: str, fn: Any) -> None:
        try:
            value = fn()
        except (glib.Error, TypeError, AttributeError):
            return
        if value not in (None, ""):
            out[name] = str(value)

    put("vendor", camera.get_vendor_name)
    put("model", camera.get_model_name)
    put("serial", camera.get_device_serial_number)
    put("device_id", camera.get_device_id)
    put("protocol", lambda: "GigE Vision" if camera.is_gv_device() else "USB3 Vision" if camera.is_uv_device() else "")
    put("sensor", lambda: "{}x{}".format(*camera.get_sensor_size()))
    put("region", lambda: "x {} y {} {}x{}".format(*camera.get_region()))
    put("pixel_format", camera.get_pixel_format_as_string)
    put("pixel_formats", lambda: ", ".join(camera.dup_available_pixel_formats_as_strings()))
    put("exposure_us", lambda: f"{camera.get_exposure_time():g} (range {_range(camera.get_exposure_time_bounds())})")
    put("gain", lambda: f"{camera.get_gain():g} (range {_range(camera.get_gain_bounds())})")
    put("frame_rate_hz", lambda: f"{camera.get_frame_rate():g} (range {_range(camera.get_frame_rate_bounds())})")
    put("trigger_mode", lambda: camera.get_string("TriggerMode"))
    put("trigger_sources", lambda: ", ".join(camera.dup_available_trigger_sources()))
    put("software_trigger", lambda: "yes" if camera.is_software_trigger_supported() else "no")
    put("packet_size", lambda: camera.gv_get_packet_size() if camera.is_gv_device() else "")
    return out


def _range(bounds: Any) -> str:
    low, high = bounds
    return f"{low:g}–{high:g}"


# ---- the source ----------------------------------------------------------------------------------


class AravisSource(FrameSource):
    """A GenICam camera: free run (a stream, stall-checked) or triggered (every frame a part, none dropped)."""

    def __init__(self, config: CameraConfig):
        super().__init__(config)
        if config.kind != "aravis":
            raise ValueError(f"AravisSource does not read {config.kind}: urls")
        self.options = config.genicam or GenicamOptions()
        self.target = parse_target(config.location)
        # An idle trigger line is normal: no stall timeout, and the worker waits rather than drops.
        self.streaming = not self.options.triggered
        self._camera: Any = None
        self._stream: Any = None
        self._control = threading.RLock()  # camera control calls: capture thread vs software_trigger()
        self._control_lost = threading.Event()
        self._lost_handler: tuple[Any, int] | None = None
        self._identity: dict[str, str] = {}
        self._shortfalls_seen = 0  # stream underruns and missing frames already reported
        self._last_frame_id: int | None = None
        self._problems: list[str] = []  # found with a good frame, reported by the next read
        self._last_activity = 0.0
        self.software_triggers = 0

    # ---- lifecycle ----

    def open(self) -> None:
        self.close()
        aravis, glib = load_aravis()
        camera = open_camera(self.target, self.options.interfaces)
        try:
            self._identity = key_features(camera)
            described = f"{self.name} ({self._identity.get('vendor', '?')} {self._identity.get('model', '?')}, " \
                        f"serial {self._identity.get('serial', '?')})"
            with self._control:
                apply_settings(camera, self.options, f"camera {self.config.id} {described}")
                if camera.is_gv_device():
                    if self.options.packet_size is not None:
                        camera.gv_set_packet_size(self.options.packet_size)
                    else:
                        camera.gv_auto_packet_size()
                stream = camera.create_stream(None, None)
                payload = camera.get_payload()
                for _ in range(self.options.buffers):
                    stream.push_buffer(aravis.Buffer.new_allocate(payload))
                device = camera.get_device()
                self._control_lost.clear()
                handler = device.connect("control-lost", lambda *_: self._control_lost.set())
                camera.start_acquisition()
        except glib.Error as exc:
            raise SourceError(f"{self.name}: cannot start acquisition: {exc.message}") from exc
        self._camera, self._stream = camera, stream
        self._lost_handler = (device, handler)
        self._identity = key_features(camera)  # after the settings: what the camera now runs with
        self._shortfalls_seen = self._shortfalls()
        self._last_frame_id = None  # a camera may restart its counter when it restarts
        self._problems = []
        self._last_activity = time.monotonic()

    def close(self) -> None:
        camera, stream = self._camera, self._stream
        self._camera = self._stream = None
        if self._lost_handler is not None:
            device, handler = self._lost_handler
            self._lost_handler = None
            with contextlib.suppress(Exception):  # the device may already be gone
                device.disconnect(handler)
        if camera is not None:
            _, glib = load_aravis()
            with self._control:
                try:
                    camera.stop_acquisition()
                except glib.Error as exc:  # a camera that is gone cannot be stopped; nothing to keep
                    log.debug("camera %s: stop_acquisition: %s", self.config.id, exc.message)
        del stream  # the stream's thread ends with its last reference

    # ---- frames ----

    def read(self) -> Frame | None:
        stream = self._stream
        if stream is None:
            raise SourceError(f"{self.name}: not open")
        if self._control_lost.is_set():
            raise SourceError(f"{self.name}: control of the camera lost (no heartbeat answer)")
        if self._problems:
            raise FrameError(self._problems.pop(0))
        self._check_shortfalls()
        buffer = stream.timeout_pop_buffer(int(MAX_IDLE_BLOCK_S * 1_000_000))
        if buffer is None:
            self._check_alive()
            return None
        try:
            return self._frame_from(buffer)
        finally:
            stream.push_buffer(buffer)

    def _frame_from(self, buffer: Any) -> Frame:
        aravis, _ = load_aravis()
        mono, wall = now_pair()
        self._last_activity = mono
        frame_id = int(buffer.get_frame_id())
        status = buffer.get_status()
        if status != aravis.BufferStatus.SUCCESS:
            raise FrameError(f"{self.name}: frame {frame_id} incomplete ({status.value_nick})")
        code = int(buffer.get_image_pixel_format())
        width, height = int(buffer.get_image_width()), int(buffer.get_image_height())
        raw = to_opencv(buffer.get_data(), code, width, height)
        received_ns = int(buffer.get_system_timestamp())
        if received_ns > 0:  # when the host received it, not when Python got round to it
            age = max(0.0, wall - received_ns / 1e9)
            wall, mono = wall - age, mono - age
        name = f"{self.name}#{frame_id}"
        previous, self._last_frame_id = self._last_frame_id, frame_id
        if not self.streaming and previous is not None and frame_id > previous + 1:
            self._problems.append(f"{self.name}: {frame_id - previous - 1} triggered frame(s) missing before "
                                  f"camera frame {frame_id} (frame ids {previous + 1}–{frame_id - 1})")
        return self._make_frame(
            raw, name, mono, wall,
            meta={"pixel_format": format_name(code)},
            camera_frame_id=frame_id,
            camera_timestamp_ns=int(buffer.get_timestamp()),
        )

    def _check_alive(self) -> None:
        """In trigger mode, ask the camera for a feature now and then: an idle line is fine, a gone camera is not."""
        if self.streaming or time.monotonic() - self._last_activity < ALIVE_CHECK_S:
            return
        _, glib = load_aravis()
        with self._control:
            try:
                self._camera.get_string("TriggerMode")
            except glib.Error as exc:
                raise SourceError(f"{self.name}: the camera does not answer ({exc.message})") from exc
        self._last_activity = time.monotonic()

    # ---- control ----

    def software_trigger(self) -> None:
        """Expose one frame now (genicam.trigger 'software'); safe from any thread."""
        if self.options.trigger != "software":
            raise SourceError(f"{self.name}: software_trigger needs genicam.trigger 'software', "
                              f"not {self.options.trigger!r}")
        camera = self._camera
        if camera is None:
            raise SourceError(f"{self.name}: not open")
        _, glib = load_aravis()
        with self._control:
            try:
                camera.software_trigger()
            except glib.Error as exc:
                raise SourceError(f"{self.name}: software trigger failed: {exc.message}") from exc
        self.software_triggers += 1

    def on_trigger(self) -> None:
        """trigger.mode 'external' with genicam.trigger 'software': each message exposes one frame."""
        if self.options.trigger == "software":
            self.software_trigger()

    def feature(self, name: str) -> str:
        """The current value of one GenICam feature as text (for checks and the probe)."""
        camera = self._camera
        if camera is None:
            raise SourceError(f"{self.name}: not open")
        aravis, glib = load_aravis()
        with self._control:
            node = camera.get_device().get_feature(name)
            if node is None:
                raise CameraSettingsError(f"{self.name}: the camera has no feature {name!r}")
            try:
                return str(node.get_value_as_string()) if isinstance(node, aravis.GcFeatureNode) else ""
            except glib.Error as exc:
                raise SourceError(f"{self.name}: cannot read {name}: {exc.message}") from exc

    # ---- statistics ----

    def statistics(self) -> dict[str, int]:
        """The stream's counters (completed, failures, underruns, and for GigE Vision missing/resent
        packets…), as Aravis keeps them since the last open."""
        stream = self._stream
        if stream is None:
            return {}
        from gi.repository import GObject  # type: ignore[import-untyped]

        out: dict[str, int] = {}
        for i in range(stream.get_n_infos()):
            if stream.get_info_type(i) == GObject.TYPE_UINT64:
                out[stream.get_info_name(i)] = int(stream.get_info_uint64(i))
        n_input, n_output = stream.get_n_buffers()
        out["buffers_free"], out["buffers_ready"] = int(n_input), int(n_output)
        return out

    def _shortfalls(self) -> int:
        stats = self.statistics()
        return stats.get("n_underruns", 0) + stats.get("n_missing_frames", 0)

    def _check_shortfalls(self) -> None:
        """Aravis counts data that found no free buffer (GigE Vision: per packet) and frames that never
        completed. In trigger mode that may be a lost part: an error; the frame-id gap then says how many."""
        new = self._shortfalls() - self._shortfalls_seen
        if new <= 0:
            return
        self._shortfalls_seen += new
        message = (f"{self.name}: the stream had no free buffer or lost frames ({new} underruns/missing frames "
                   "counted by Aravis); consume faster or raise genicam.buffers")
        if not self.streaming:
            raise FrameError(message)
        log.debug("camera %s: %s", self.config.id, message)  # free run: skipped frames, as a live view may

    def info(self) -> dict[str, str]:
        if self._camera is None:
            return {}
        out = {"backend": "aravis", **self._identity}
        out["trigger"] = self.options.trigger + (f" on {self.options.trigger_line}, {self.options.trigger_activation}"
                                                 if self.options.trigger == "line" else "")
        return out


def camera_list_report(interfaces: Sequence[str]) -> list[dict[str, str]]:
    """discover() as plain dicts (probe output)."""
    return [asdict(c) | {"url": c.url} for c in discover(interfaces)]
