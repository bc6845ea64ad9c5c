"""Test helpers for the review dashboard: fixed results, a scripted source, and a real station
(journal + result bus on loopback) that can be taken down and brought back on the same ports."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from adfm.appliance.review.sources import Connection, Event, Results, Source, Status, VerdictUpdate
from adfm.schema import Ack, Box, CameraStatus, InspectionResult, OperatorVerdict, StationStatus

T0 = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)
NOW = (T0 + timedelta(minutes=30)).timestamp()

THINK = ('The washer surface is mostly uniform. One region near the upper left shows a dark streak. '
         '[{"bbox_2d": [10, 20, 60, 80], "label": "scratch"}]')
RETHINK = "Zooming in, the streak has sharp edges and breaks the machining pattern: a scratch, not glare."


def make_result(seq: int, verdict: str = "fail", *, camera: str = "cam0", station: str = "st1",
                minutes: float = 0.0, boxes: list[Box] | None = None, image_path: str = "",
                operator: OperatorVerdict | None = None, score: float | None = None) -> InspectionResult:
    flagged = verdict != "pass"
    return InspectionResult(
        station=station, seq=seq, part_id=f"p{seq:04d}", camera=camera, frame_number=seq,
        captured_at=T0 + timedelta(minutes=minutes if minutes else seq), verdict=verdict,  # type: ignore[arg-type]
        reason="model answered yes" if verdict == "fail" else ("unreadable model answer" if verdict == "review"
                                                                else "model answered no"),
        decision=True if verdict == "fail" else (None if verdict == "review" else False),
        score=score if score is not None else (0.91 if flagged else 0.08),
        boxes=boxes if boxes is not None else ([Box.from_xyxy([10, 20, 60, 80], "scratch")] if verdict == "fail"
                                               else []),
        think=THINK if flagged else "Uniform surface, no anomaly.",
        rethink=RETHINK if verdict == "fail" else "",
        answer="yes" if verdict == "fail" else ("" if verdict == "review" else "no"),
        format_ok=verdict != "review", prompt_version="multi-stage-v1", model_id="tiny-q4_k_m",
        image_path=image_path, image_width=96, image_height=96, gate_score=0.83 if flagged else 0.12,
        gate_threshold=0.5, grid_width=112, grid_height=112,
        latency_ms={"vlm": 380.0 + seq, "total": 412.0 + seq}, operator=operator,
    )


def fixed_results() -> list[InspectionResult]:
    """Ten parts of two cameras: passes, fails and an unreadable answer, one already decided."""
    out = []
    kinds = ["pass", "fail", "pass", "review", "pass", "fail", "pass", "pass", "fail", "pass"]
    for i, kind in enumerate(kinds, start=1):
        op = None
        if i == 2:
            op = OperatorVerdict(station="st1", seq=2, decision="false_alarm", operator="bob", note="glare",
                                 at=T0 + timedelta(minutes=5), verdict_id="v-bob-2")
        out.append(make_result(i, kind, camera="cam0" if i % 3 else "cam1", operator=op))
    return out


def fixed_status() -> StationStatus:
    return StationStatus(
        station="st1", at=T0 + timedelta(minutes=30), healthy=False, last_seq=10,
        cameras=[CameraStatus(camera="cam0", url="v4l2:/dev/video0", connected=True, fps=2.0, last_frame_age_s=0.4,
                              captured=7, dropped=0),
                 CameraStatus(camera="cam1", url="rtsp://10.0.0.7/s1", connected=False, fps=0.0,
                              last_frame_age_s=75.0, captured=3, dropped=1, errors=4, reconnects=2,
                              last_error="rtsp: connection refused")],
        worker_alive=True, worker_restarts=1, parts_per_min=12.0, verdict_counts={"pass": 6, "fail": 3, "review": 1},
        latency_ms_p50={"capture": 3.0, "vlm": 385.0, "total": 417.0},
        latency_ms_p95={"capture": 9.0, "vlm": 410.0, "total": 450.0},
        model_id="tiny-q4_k_m", problems=["camera cam1: disconnected (rtsp: connection refused)"],
    )


class ScriptedSource(Source):
    """Delivers a fixed list of events at start; verdicts are acknowledged at once (or kept queued
    while `online` is False). No threads: what a snapshot shows is decided before it is taken."""

    description = "tcp://station.test:5560"

    def __init__(self, events: list[Event], *, online: bool = True, read_only: bool = False,
                 images: Path | None = None, refuse: str = "") -> None:
        self.events = events
        self.refuse = refuse  # when set, the station refuses every verdict with this reason
        self.online = online
        self.read_only = read_only
        self.images = images
        self.sent: list[OperatorVerdict] = []
        self._emit = None

    def start(self, emit) -> None:
        self._emit = emit
        emit(list(self.events))

    def stop(self) -> None:
        self._emit = None

    def send(self, verdict: OperatorVerdict) -> None:
        if self.read_only:
            return super().send(verdict)
        self.sent.append(verdict)
        if self.refuse and self._emit is not None:
            self._emit([VerdictUpdate(verdict, "rejected", self.refuse)])
        elif self.online and self._emit is not None:
            ack = Ack(detail=f"verdict {verdict.verdict_id} on seq {verdict.seq} journaled")
            self._emit([VerdictUpdate(verdict, "sent", ack.detail)])

    def image_file(self, result: InspectionResult) -> Path | None:
        return self.images / result.image_path if self.images is not None and result.image_path else None

    def map_file(self, result: InspectionResult) -> Path | None:
        return self.images / result.gate_map_path if self.images is not None and result.gate_map_path else None


def standard_events(images: Path | None = None) -> list[Event]:
    results = fixed_results()
    if images is not None:
        results = [r.model_copy(update={"image_path": f"p{r.seq}.png"}) for r in results]
        results = [r.model_copy(update={"gate_map_path": f"p{r.seq}.gate.png"})
                   if (images / f"p{r.seq}.gate.png").is_file() else r for r in results]
    return [Connection(True, "connected", T0, "st1"), Results(results), Status(fixed_status())]


async def settle(pilot) -> None:
    """Let the app load the pictures it asked for (worker threads) and show them."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def write_part_image(path: Path, seed: int = 0, size: int = 96) -> Path:
    """A grey washer-like part with a dark scratch near the upper left (deterministic PNG)."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - size / 2, yy - size / 2)
    img = np.full((size, size, 3), 40, np.uint8)
    img[r < size * 0.45] = (170, 170, 175)
    img[r < size * 0.18] = (40, 40, 40)
    img[30:34, 15:55] = (60, 50, 50)
    img[:, :, 0] = np.clip(img[:, :, 0].astype(int) + seed % 7, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), img[:, :, ::-1])
    assert ok
    return path


def write_gate_map(path: Path, size: int = 96) -> Path:
    """A gate heat map as the appliance stores it (inferno colours, hot along the scratch)."""
    import cv2

    yy, xx = np.mgrid[0:size, 0:size]
    heat = np.exp(-(((xx - 35) / 14.0) ** 2 + ((yy - 32) / 6.0) ** 2))
    bgr = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), bgr)
    return path


class LoopbackStation:
    """The appliance's real journal and result bus on loopback ports that stay the same across a
    stop and a start, so a subscriber sees the station go away and come back."""

    def __init__(self, root: Path, station: str = "st1", status_interval_s: float = 0.2, curve=None) -> None:
        from adfm.appliance.journal.store import Journal

        self.root = root
        self.station = station
        self.curve = curve
        self.status_interval_s = status_interval_s
        self.journal = Journal(root, station)
        self.publish_ep = "tcp://127.0.0.1:*"
        self.control_ep = "tcp://127.0.0.1:*"
        self.bus = None
        self.start()

    def status(self) -> StationStatus:
        return StationStatus(station=self.station, healthy=True, last_seq=self.journal.last_seq(),
                             verdict_counts=self.journal.counts())

    def start(self) -> None:
        from adfm.appliance.bus.server import ResultBus

        self.bus = ResultBus(self.station, self.journal, self.status, publish=[self.publish_ep],
                             control=[self.control_ep], status_interval_s=self.status_interval_s, curve=self.curve)
        self.bus.start()
        self.publish_ep = self.bus.bound["publish"][0]
        self.control_ep = self.bus.bound["control"][0]

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.stop()
            self.bus = None

    def part(self, verdict: str = "fail", publish: bool = True, camera: str = "cam0",
             gate_map: bool = False) -> InspectionResult:
        """Journal (and publish) a part; `gate_map`: with a stored gate heat map, as free-run keeps one."""
        i = self.journal.last_seq() + 1
        image = np.full((32, 48, 3), 120, np.uint8)
        image[8:12, 5:30] = 20
        p = self.journal.accept(image, part_id=f"p{i}", camera=camera, frame_number=i, captured_wall=time.time())
        map_rel = self.journal.attach_map_file(p.seq, lambda path: write_gate_map(path, 32)) if gate_map else ""
        boxes = [Box.from_xyxy([5, 8, 30, 12], "scratch")] if verdict == "fail" else []
        result = self.journal.complete(InspectionResult(
            station=self.station, seq=p.seq, part_id=p.part_id, camera=camera, frame_number=i,
            captured_at=p.captured_at, verdict=verdict, decision=verdict == "fail", boxes=boxes,  # type: ignore[arg-type]
            think="looked", answer="yes" if verdict == "fail" else "no", format_ok=True,
            image_path=p.image_path, image_width=48, image_height=32, latency_ms={"total": 5.0},
            gate_map_path=map_rel, gate_score=0.7 if gate_map else None, gate_threshold=0.5 if gate_map else None))
        if publish and self.bus is not None:
            self.bus.publish(result)
        return result

    def close(self) -> None:
        self.stop()
        self.journal.close()


def run_async(fn: Callable[..., Coroutine]) -> Callable[..., None]:
    """Run an async test body with asyncio (no async pytest plugin needed); fixtures pass through."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


async def wait_for(pilot, condition: Callable[[], object], timeout_s: float = 15.0, what: str = "") -> None:
    """Let the app run until `condition()` holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        await pilot.pause(0.05)
