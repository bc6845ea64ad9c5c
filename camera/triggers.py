"""Triggers decide which frames are parts and what each part is called.

The capture thread keeps reading its source whatever the trigger (a live stream must be drained
or its frames go stale) and asks the trigger about every frame. External triggers are ZeroMQ
messages; their socket lives in the capture thread, as ZeroMQ sockets are not thread-safe.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from .config import TriggerConfig
from .errors import SourceError
from .frame import Frame
from .pacing import Pacer

MAX_PART_ID_LENGTH = 128
MAX_PENDING_TRIGGERS = 256


class Trigger(ABC):
    #: trigger events accepted so far; the capture thread fires an on-demand source once per new one
    accepted: int = 0

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire what the trigger listens on (SourceError when it cannot)."""

    @abstractmethod
    def take(self, frame: Frame) -> str | None:
        """The part id when `frame` is a part, None to pass over it."""

    def poll(self, now: float) -> list[str]:
        """Receive pending trigger events; returns problems to count (bad or expired triggers)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the trigger's resources (safe to call twice)."""


class FreeRunTrigger(Trigger):
    """Every frame, or frames sampled at `parts_per_s`, each a part with the source's own id."""

    def __init__(self, parts_per_s: float | None):
        self._pacer = Pacer(parts_per_s)

    def take(self, frame: Frame) -> str | None:
        return frame.part_id if self._pacer.take(frame.captured_mono) else None


class FolderTrigger(Trigger):
    """Every file is a part; the folder source already named it after the file."""

    def take(self, frame: Frame) -> str | None:
        return frame.part_id


def parse_part_id(frames: list[bytes]) -> str:
    """The part id in a trigger message: the last frame as UTF-8 text or JSON {"part_id": …}.

    The last frame, so that a SUB message [topic, payload] works like a plain PULL message.
    Raises ValueError saying what is wrong with the message.
    """
    if not frames:
        raise ValueError("empty trigger message")
    try:
        text = frames[-1].decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"trigger message is not UTF-8 text: {frames[-1][:40]!r}") from exc
    if text.startswith("{"):
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"trigger message is not valid JSON: {text[:80]!r}") from exc
        part = payload.get("part_id") if isinstance(payload, dict) else None
        if not isinstance(part, str):
            raise ValueError(f"trigger JSON needs a string 'part_id': {text[:80]!r}")
        text = part.strip()
    if not text:
        raise ValueError("trigger message carries an empty part id")
    if len(text) > MAX_PART_ID_LENGTH:
        raise ValueError(f"part id longer than {MAX_PART_ID_LENGTH} characters: {text[:40]!r}…")
    if any(not ch.isprintable() for ch in text) or "/" in text or "\\" in text:
        raise ValueError(f"part id {text!r} contains a control character or a path separator")
    return text


@dataclass(frozen=True)
class _Pending:
    part_id: str
    received_mono: float


class ExternalTrigger(Trigger):
    """A ZeroMQ PULL (or SUB) socket; each message names a part, the next frame taken is that part.

    "Next" means captured after the message arrived. Triggers queue in order, one frame each; a
    trigger that finds no frame within `max_age_s` (camera down) is reported and dropped, since a
    later frame would show a different part.
    """

    def __init__(self, config: TriggerConfig):
        if not config.endpoint:
            raise ValueError("an external trigger needs an endpoint")
        self.config = config
        self._socket = None
        self._pending: deque[_Pending] = deque()

    def open(self) -> None:
        import zmq

        self.close()
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.PULL if self.config.socket == "pull" else zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if self.config.socket == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, self.config.topic.encode())
        try:
            if self.config.bind:
                sock.bind(self.config.endpoint)
            else:
                sock.connect(self.config.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            verb = "bind" if self.config.bind else "connect to"
            raise SourceError(f"trigger: cannot {verb} {self.config.endpoint} ({exc})") from exc
        self._socket = sock

    def poll(self, now: float) -> list[str]:
        import zmq

        problems: list[str] = []
        if self._socket is not None:
            while True:
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    part_id = parse_part_id(frames)
                except ValueError as exc:
                    problems.append(f"trigger on {self.config.endpoint}: {exc}")
                    continue
                if len(self._pending) >= MAX_PENDING_TRIGGERS:
                    lost = self._pending.popleft()
                    problems.append(f"trigger for part {lost.part_id!r} dropped: {MAX_PENDING_TRIGGERS} pending")
                self._pending.append(_Pending(part_id, time.monotonic()))
                self.accepted += 1
        while self._pending and now - self._pending[0].received_mono > self.config.max_age_s:
            stale = self._pending.popleft()
            problems.append(
                f"trigger for part {stale.part_id!r} expired: no frame within {self.config.max_age_s:g} s"
            )
        return problems

    def take(self, frame: Frame) -> str | None:
        if self._pending and self._pending[0].received_mono <= frame.captured_mono:
            return self._pending.popleft().part_id
        return None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None


class LinkTrigger(Trigger):
    """Triggers fired from another thread (the PLC link) with the moment they happened.

    A trigger takes the first frame captured at or after its time (`Frame.captured_mono`: the
    device's own timestamp where the source has one), never an earlier one; a trigger still
    without a frame at its expiry is dropped (the station records that part as missed), since a
    later frame would show another part.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, float, float]] = deque()
        self._fired = 0  # fired since the last poll; counted into `accepted` there

    def fire(self, part_id: str, at_mono: float, expires_mono: float) -> None:
        with self._lock:
            if len(self._pending) >= MAX_PENDING_TRIGGERS:
                self._pending.popleft()
            self._pending.append((part_id, at_mono, expires_mono))
            self._fired += 1

    def poll(self, now: float) -> list[str]:
        problems = []
        with self._lock:
            self.accepted += self._fired  # the capture thread fires an on-demand camera once for each
            self._fired = 0
            while self._pending and self._pending[0][2] <= now:
                part_id, _, _ = self._pending.popleft()
                problems.append(f"trigger for part {part_id!r} expired without a frame")
        return problems

    def take(self, frame: Frame) -> str | None:
        with self._lock:
            while self._pending and self._pending[0][2] <= frame.captured_mono:
                self._pending.popleft()  # expired before this frame: never give it a later part's frame
            if self._pending and self._pending[0][1] <= frame.captured_mono:
                return self._pending.popleft()[0]
        return None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


class CameraTrigger(Trigger):
    """A triggered camera (hardware line or software): the trigger already chose the frame, so every
    frame is a part."""

    def take(self, frame: Frame) -> str | None:
        return frame.part_id


def make_trigger(config: TriggerConfig) -> Trigger:
    if config.mode == "link":
        return LinkTrigger()
    if config.mode == "external":
        return ExternalTrigger(config)
    if config.mode == "folder":
        return FolderTrigger()
    if config.mode == "camera":
        return CameraTrigger()
    return FreeRunTrigger(config.parts_per_s)
