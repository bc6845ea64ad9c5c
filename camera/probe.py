"""Open a camera source the way the appliance service does and report what it delivers.

The integrator's first command at a new station: it runs the same capture thread as the service
(reconnects, stall detection, trigger) and prints resolution, frame rate, counters and errors.
A folder source is only looked at: the probe never moves, marks or rejects a file. For `aravis:`
urls it first lists the GenICam cameras found on the searched interfaces, then reports the opened
camera's key features (sensor, pixel formats, exposure/gain/frame-rate ranges, trigger sources)
and its stream statistics.
Exit status: 0 when the frames asked for arrived, 1 when they did not, 2 for a bad config.

examples:
  adfm-appliance camera-probe usb:0
  adfm-appliance camera-probe v4l2:/dev/video2 --resolution 1920 1080 --fps 30
  adfm-appliance camera-probe 'rtsp://user:pass@10.0.0.5/stream1' --frames 50
  adfm-appliance camera-probe replay:recordings/line3.mp4 --json
  adfm-appliance camera-probe folder:/srv/linescan/out --config camera.yaml --save part.png
  adfm-appliance camera-probe aravis:                   # every GigE Vision / USB3 Vision camera, then the first
  adfm-appliance camera-probe aravis:serial=21234567 --config camera.yaml
  adfm-appliance camera-probe aravis:Fake_1 --interface Fake   # Aravis's simulated camera
  adfm-appliance camera-probe --config /etc/adfm/station.yaml --camera cam0   # a station's camera

A camera that waits for a trigger (trigger.mode link or external, or genicam.trigger software) is
fired by the probe itself, once per frame asked for: a software trigger for an `aravis:` camera,
"the next frame" for the others. A camera on a hardware trigger line exposes only when the line
is pulsed; the probe says so when no frame comes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FRAMES = 10
DEFAULT_TIMEOUT_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", help="camera url: v4l2:/dev/videoN, usb:N, rtsp://…, http://…, "
                        "folder:/path, replay:/path/video.mp4, replay:/path/dir, or aravis:[id | serial=S | address=A]")
    parser.add_argument("--frames", type=_positive_int, default=DEFAULT_FRAMES, metavar="N",
                        help=f"frames to wait for (default {DEFAULT_FRAMES})")
    parser.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"give up after S seconds (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="a station file (with --camera ID), or one camera's settings (YAML or JSON mapping "
                        "of camera config fields); a URL argument replaces its url")
    parser.add_argument("--camera", metavar="ID", help="with a station --config: which of its cameras "
                        "(default: its only one)")
    parser.add_argument("--fps", type=_positive_float, help="replay rate / rate asked of a v4l2/usb device")
    parser.add_argument("--roi", type=int, nargs=4, metavar=("X", "Y", "W", "H"), help="crop in sensor pixels")
    parser.add_argument("--rotate", type=int, choices=(0, 90, 180, 270), help="clockwise, after the crop")
    parser.add_argument("--resolution", type=int, nargs=2, metavar=("W", "H"),
                        help="size to ask of a v4l2/usb device")
    parser.add_argument("--save", type=Path, metavar="PATH", help="write the last frame received (PNG/JPEG)")
    parser.add_argument("--interface", action="append", choices=("GigEVision", "USB3Vision", "Fake"),
                        help="aravis: interface to search (repeat for several; default GigEVision and "
                        "USB3Vision, or genicam.interfaces from --config)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return value


@dataclass
class ProbeReport:
    url: str
    camera: str
    kind: str
    ok: bool
    frames_requested: int
    frames_received: int
    elapsed_s: float
    first_frame_s: float | None
    resolution: list[int] | None
    resolutions_seen: list[list[int]]
    delivered_fps: float
    source: dict[str, str]
    status: dict[str, Any]
    finished: bool
    part_ids: list[str]
    errors: list[str]
    saved: str = ""
    problems: list[str] = field(default_factory=list)
    cameras: list[dict[str, str]] = field(default_factory=list)  # aravis: cameras found
    stream: dict[str, int] = field(default_factory=dict)  # aravis: stream statistics
    triggers_fired: int = 0  # a camera waiting for a trigger: the probe's own triggers


class ConfigProblem(Exception):
    """The probe's camera settings are unusable; the message says which field and why."""


def build_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """The CameraConfig the probe runs: `base` (a station's camera, validated by the caller) or the
    --config file, then the URL and the flags on top."""
    import yaml
    from pydantic import ValidationError

    from .config import CameraConfig

    data: dict[str, Any] = dict(base or {})
    if base is None and args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text())
        except OSError as exc:
            raise ConfigProblem(f"cannot read {args.config}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigProblem(f"{args.config} is not valid YAML/JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigProblem(f"{args.config} must hold a mapping of camera settings, not {type(loaded).__name__}")
        if "cameras" in loaded:
            raise ConfigProblem(f"{args.config} is a station file: run the probe through `adfm-appliance "
                                "camera-probe --config FILE --camera ID`")
        data.update(loaded)
    data.setdefault("id", "probe")
    if args.url:
        data["url"] = args.url
    elif "url" not in data:
        raise ConfigProblem("give a camera url, or --config with a station file (and --camera ID) or camera settings")
    for name in ("fps", "roi", "rotate", "resolution"):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    if getattr(args, "interface", None):
        given = data.get("genicam")
        genicam: dict[str, Any] = given if isinstance(given, dict) else {}
        data["genicam"] = {**genicam, "interfaces": args.interface}
    try:
        return CameraConfig.model_validate(data)
    except ValidationError as exc:
        where = f" in {args.config}" if args.config else ""
        lines = [f"invalid camera settings{where}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(camera)"
            lines.append(f"  {loc}: {err['msg']} (got {err['input']!r})"[:400])
        raise ConfigProblem("\n".join(lines)) from exc


#: a trigger the probe fired and that found no frame this long is fired again
REFIRE_S = 2.0


def waits_for_trigger(config: Any) -> str:
    """How a camera gets its frames when it waits for a trigger: 'software' (the probe fires the
    camera), 'next-frame' (the probe's trigger takes the next frame), 'line' (only a pulse on the
    camera's trigger line exposes it), or '' (frames come by themselves)."""
    genicam = config.genicam if config.kind == "aravis" else None
    camera_trigger = genicam.trigger if genicam is not None else "off"
    if camera_trigger == "software":
        return "software"
    if camera_trigger == "line":
        return "line"
    return "next-frame" if config.trigger.mode in ("link", "external") else ""


def _fired_by_probe(config: Any) -> Any:
    """The config the probe runs for a camera that waits for a trigger: its triggers come from the
    probe (mode `link`), not from the PLC or a ZeroMQ message."""
    from .config import CameraConfig

    return CameraConfig.model_validate({**config.model_dump(), "trigger": {"mode": "link"}})


def probe(config: Any, frames: int, timeout_s: float, save: Path | None = None) -> ProbeReport:
    """Run a CameraWorker on `config` until `frames` frames arrive, the source ends, or the timeout.
    A camera waiting for a trigger is fired by the probe, once per frame (again after REFIRE_S)."""
    from .capture_thread import CameraWorker
    from .source import open_source

    cameras, listing_problem = _list_cameras(config)
    how = waits_for_trigger(config)
    fires = how in ("software", "next-frame")
    run_config = _fired_by_probe(config) if fires else config
    worker = CameraWorker(run_config, open_source(run_config, keep_files=True))
    received: list[Any] = []
    stamps: list[float] = []
    sizes: list[list[int]] = []
    fired = 0
    fired_at: float | None = None
    start = time.monotonic()
    worker.start()
    try:
        while len(received) < frames and not worker.finished:
            now = time.monotonic()
            left = timeout_s - (now - start)
            if left <= 0:
                break
            if fires and (fired_at is None or now - fired_at >= REFIRE_S):
                fired += 1
                fired_at = now
                worker.fire(f"probe-{fired}", now, now + REFIRE_S)
            frame = worker.get(timeout=min(0.25, left))
            if frame is None:
                continue
            fired_at = None  # this trigger found its frame: fire the next at once
            received.append(frame)
            stamps.append(time.monotonic())
            if [frame.width, frame.height] not in sizes:
                sizes.append([frame.width, frame.height])
    finally:
        elapsed = time.monotonic() - start
        status = worker.status()  # as the camera was during the probe, before stop closes it
        statistics: dict[str, int] = getattr(worker.source, "statistics", dict)()
        worker.stop(timeout=5.0)
    last = received[-1] if received else None
    report = ProbeReport(
        url=config.display_url,
        camera=config.id,
        kind=config.kind,
        ok=len(received) >= frames or (worker.finished and bool(received)),
        frames_requested=frames,
        frames_received=len(received),
        elapsed_s=round(elapsed, 3),
        first_frame_s=round(stamps[0] - start, 3) if stamps else None,
        resolution=[last.width, last.height] if last is not None else None,
        resolutions_seen=sizes,
        delivered_fps=round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2)
        if len(stamps) >= 2 and stamps[-1] > stamps[0] else 0.0,
        source=worker.source_info,
        status=status.model_dump(mode="json"),
        finished=worker.finished,
        part_ids=[f.part_id for f in received[:3]],
        errors=worker.recent_errors(),
        cameras=cameras,
        stream=statistics,
        triggers_fired=fired,
    )
    if listing_problem:
        report.problems.append(listing_problem)
    if not received:
        report.problems.append(f"no frame within {timeout_s:g} s: {_why_no_frame(config, how, fired, status)}")
    elif not report.ok:
        report.problems.append(f"only {len(received)} of {frames} frames within {timeout_s:g} s")
    if len(sizes) > 1:
        report.problems.append("frame size changed during the probe: " + ", ".join(f"{w}x{h}" for w, h in sizes))
    if save is not None and last is not None:
        _save(last.image, save, report)
    return report


def _why_no_frame(config: Any, how: str, fired: int, status: Any) -> str:
    """The likeliest reason a probe saw no frame, from what the camera waits for and what it did."""
    if not status.connected and status.last_error:
        return f"the camera could not be opened or was lost ({status.last_error})"
    if how == "line":
        line = config.genicam.trigger_line or "its trigger line"
        return (f"the camera exposes only on a pulse on {line} (genicam.trigger: line) and none came; pulse the "
                "line (a part past the sensor), or probe with genicam.trigger: software")
    if how == "software":
        return (f"the probe fired {fired} software trigger(s) and the camera sent no frame; check the camera's "
                "TriggerMode/TriggerSource and the stream statistics above")
    if how == "next-frame":
        return f"the probe fired {fired} trigger(s) and the source delivered no frame after them"
    if config.kind == "folder":
        return "no file arrived in the folder (each file dropped there is one part)"
    return "the source is open but delivered nothing (a stalled stream, or a wrong stream path)"


def _list_cameras(config: Any) -> tuple[list[dict[str, str]], str]:
    """The GenICam cameras on the configured interfaces (aravis: urls only), and a problem if any."""
    if config.kind != "aravis":
        return [], ""
    from .aravis import camera_list_report
    from .errors import SourceError

    try:
        found = camera_list_report(config.genicam.interfaces)
    except SourceError as exc:
        return [], str(exc)
    where = ", ".join(config.genicam.interfaces)
    return found, "" if found else f"no GenICam camera found on {where}"


def _save(image: Any, path: Path, report: ProbeReport) -> None:
    import cv2

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except (OSError, cv2.error) as exc:
        written, reason = False, str(exc)
    else:
        reason = "unsupported extension or unwritable path"
    if written:
        report.saved = str(path)
    else:
        report.ok = False
        report.problems.append(f"could not save the frame to {path}: {reason}")


def format_report(report: ProbeReport) -> str:
    """The human-readable report."""
    status = report.status
    size = f"{report.resolution[0]}x{report.resolution[1]}" if report.resolution else "-"
    first = f"{report.first_frame_s:.2f} s" if report.first_frame_s is not None else "never"
    age = status.get("last_frame_age_s")
    lines = [
        f"camera-probe {report.url} ({report.kind})",
        f"  result       {'OK' if report.ok else 'FAILED'}: {report.frames_received} of "
        f"{report.frames_requested} frames in {report.elapsed_s:.2f} s (first after {first})"
        + (", source finished" if report.finished else ""),
        f"  resolution   {size}",
        f"  fps          {status.get('fps', 0.0):.1f} read from the source, {report.delivered_fps:.1f} delivered",
        f"  counters     captured {status['captured']}, dropped {status['dropped']}, "
        f"errors {status['errors']}, reconnects {status['reconnects']}",
        f"  connected    {'yes' if status['connected'] else 'no'}"
        + (f", last frame {age:.2f} s ago" if age is not None else ""),
    ]
    if report.triggers_fired:
        lines.append(f"  triggers     {report.triggers_fired} fired by the probe (the camera waits for a trigger)")
    if report.kind == "aravis":
        lines.append(f"  cameras      {len(report.cameras)} found")
        lines.extend(f"    {c['url']}  {c['vendor']} {c['model']}, serial {c['serial']}, {c['protocol']}"
                     + (f" at {c['address']}" if c["address"] else "") for c in report.cameras)
        lines.extend(f"  {k:<16} {v}" for k, v in report.source.items() if v)
        if report.stream:
            lines.append("  stream       " + ", ".join(f"{k.removeprefix('n_')} {v}" for k, v in report.stream.items()))
    elif report.source:
        lines.append("  source       " + ", ".join(f"{k} {v}" for k, v in report.source.items() if v))
    if report.part_ids:
        more = " …" if report.frames_received > len(report.part_ids) else ""
        lines.append("  part ids     " + ", ".join(report.part_ids) + more)
    if report.saved:
        lines.append(f"  saved        {report.saved}")
    lines.append("  errors       " + ("none" if not report.errors else f"{len(report.errors)} (latest last):"))
    lines.extend(f"    {message}" for message in _collapse(report.errors)[-10:])
    lines.extend(f"  problem      {problem}" for problem in report.problems)
    return "\n".join(lines)


def _collapse(messages: list[str]) -> list[str]:
    """Consecutive repeats shown once with a count (a camera that is down says so every retry)."""
    out: list[tuple[str, int]] = []
    for message in messages:
        if out and out[-1][0] == message:
            out[-1] = (message, out[-1][1] + 1)
        else:
            out.append((message, 1))
    return [m if n == 1 else f"{m} (×{n})" for m, n in out]


def run(args: argparse.Namespace, base: dict[str, Any] | None = None) -> int:
    """The probe command; `base`: a station camera's settings, already validated against its station file."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = build_config(args, base)
    except ConfigProblem as exc:
        print(f"camera-probe: {exc}", file=sys.stderr)
        return 2
    try:
        report = probe(config, args.frames, args.timeout, args.save)
    except KeyboardInterrupt:
        print("camera-probe: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(asdict(report), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1
