"""One capture thread per camera: reads its source, applies the trigger, feeds a bounded queue.

A camera must never stop the station for good: a failed open, a lost connection, a stall (no
frame for `stall_timeout_s`) or an unexpected exception closes the source and reopens it after an
exponential backoff with jitter, in this camera's own thread, so other cameras carry on. A bad
frame or file is counted, logged with its name and skipped. Live sources drop the oldest queued
frame when the consumer falls behind (a fresh image beats a stale one); a folder source waits
instead, as its files are parts that stay safe on disk until taken. Frames taken by a trigger
(external or PLC link) are parts someone is waiting for: they are never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from adfm.schema import CameraStatus

from .backoff import Backoff
from .config import CameraConfig
from .errors import CameraError, FrameError, SourceError, SourceFinished
from .frame import Frame
from .source import FrameSource, open_source
from .triggers import LinkTrigger, Trigger, make_trigger

log = logging.getLogger("adfm.camera")

#: How often an idle capture thread wakes (waiting to reconnect, queue full) to check for stop.
_IDLE_S = 0.05
#: Pause after a read that had nothing ready (sources block briefly themselves; this is a floor).
_NOTHING_READY_S = 0.005
#: Identical consecutive error messages are logged at most this often (all are counted).
_LOG_REPEAT_S = 10.0


class FrameQueue:
    """A bounded FIFO between one capture thread and its consumer."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"queue size {maxsize} must be >= 1")
        self.maxsize = maxsize
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()

    def put_drop_oldest(self, frame: Frame) -> Frame | None:
        """Queue `frame`; when full, the oldest queued frame is removed and returned."""
        with self._cond:
            dropped = self._items.popleft() if len(self._items) >= self.maxsize else None
            self._items.append(frame)
            self._cond.notify()
            return dropped

    def put_always(self, frame: Frame) -> None:
        """Queue `frame` even beyond `maxsize`: a triggered part's frame is never dropped (the
        trigger source bounds how many there can be)."""
        with self._cond:
            self._items.append(frame)
            self._cond.notify()

    def put_wait(self, frame: Frame, stop: threading.Event) -> bool:
        """Queue `frame`, waiting for room; False when `stop` was set first (frame not queued)."""
        with self._cond:
            while len(self._items) >= self.maxsize:
                if stop.is_set():
                    return False
                self._cond.wait(_IDLE_S)
            self._items.append(frame)
            self._cond.notify()
            return True

    def get(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout=max(0.0, timeout)):
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class RateMeter:
    """Events per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 600):
        self.window_s = window_s
        self._stamps: deque[float] = deque(maxlen=max_samples)

    def add(self, mono: float) -> None:
        self._stamps.append(mono)

    def rate(self, now: float) -> float:
        while self._stamps and now - self._stamps[0] > self.window_s:
            self._stamps.popleft()
        if len(self._stamps) < 2:
            return 0.0
        span = self._stamps[-1] - self._stamps[0]
        return (len(self._stamps) - 1) / span if span > 0 else 0.0


@dataclass
class _Counters:
    read: int = 0  # frames read from the source
    captured: int = 0  # frames taken as parts and queued
    dropped: int = 0  # queued frames removed unconsumed (consumer too slow)
    errors: int = 0
    reconnects: int = 0


class CameraWorker:
    """Captures one camera in its own thread; the consumer calls get() and ack().

    source: normally built from the config; pass one to share a prepared source (the probe
    passes a folder source that keeps its files).
    """

    def __init__(self, config: CameraConfig, source: FrameSource | None = None, *, error_history: int = 50):
        self.config = config
        self.source = source if source is not None else open_source(config)
        self._queue = FrameQueue(config.queue_size)
        self._stop = threading.Event()
        self._done = threading.Event()  # a finite source is exhausted
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._meter = RateMeter()
        self._connected = False
        self._last_frame_mono: float | None = None
        self._last_size: tuple[int, int] | None = None
        self._last_error = ""
        self._source_info: dict[str, str] = {}
        self._errors: deque[str] = deque(maxlen=error_history)
        self._logged: tuple[str, float] = ("", 0.0)
        self._repeats = 0  # errors not logged since the last one that was (same message, within _LOG_REPEAT_S)
        self._failed_opens = 0  # opens that did not lead to a working source, since the last that did
        self._failing_since: float | None = None
        self._trigger = make_trigger(config.trigger)
        self._triggered = config.trigger.mode in ("external", "link")

    # ---- consumer side -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"camera {self.config.id}: already started")
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.config.id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to finish and wait up to `timeout`; True when it has ended.

        A thread stuck inside a driver call cannot be interrupted; it is a daemon thread and ends
        with the process.
        """
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def fire(self, part_id: str, at_mono: float, expires_mono: float) -> None:
        """A PLC-link trigger (mode `link`): the first frame captured at or after `at_mono` (and
        before `expires_mono`) becomes part `part_id`. Safe from any thread."""
        if not isinstance(self._trigger, LinkTrigger):
            raise RuntimeError(f"camera {self.config.id}: trigger mode is {self.config.trigger.mode!r}, not 'link'")
        self._trigger.fire(part_id, at_mono, expires_mono)

    def get(self, timeout: float) -> Frame | None:
        """The next part's frame, or None when none came within `timeout` seconds."""
        return self._queue.get(timeout)

    def ack(self, frame: Frame) -> None:
        """The frame's part is journaled: let the source finish with it (folders move/mark the file)."""
        try:
            self.source.ack(frame)
        except CameraError as exc:
            self._error(str(exc))

    def release(self, frame: Frame) -> None:
        """The frame's part could not be journaled: a source that keeps parts delivers it again."""
        try:
            self.source.release(frame)
        except CameraError as exc:
            self._error(str(exc))

    @property
    def finished(self) -> bool:
        """True when a finite source (replay, loop off) is exhausted and its queue is drained."""
        return self._done.is_set() and len(self._queue) == 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> CameraStatus:
        now = time.monotonic()
        with self._lock:
            age = None if self._last_frame_mono is None else max(0.0, now - self._last_frame_mono)
            connected = self._connected
            if self.source.streaming and age is not None and age > self.config.stall_timeout_s:
                connected = False  # the thread may be stuck in a read; the health must say so
            c = self._counters
            return CameraStatus(
                camera=self.config.id,
                url=self.config.display_url,
                connected=connected,
                fps=round(self._meter.rate(now), 3),
                last_frame_age_s=None if age is None else round(age, 3),
                captured=c.captured,
                dropped=c.dropped,
                errors=c.errors,
                reconnects=c.reconnects,
                last_error=self._last_error,
                streaming=self.source.streaming,
            )

    @property
    def frames_read(self) -> int:
        """Frames read from the source, parts or not."""
        with self._lock:
            return self._counters.read

    @property
    def last_size(self) -> tuple[int, int] | None:
        """(width, height) of the last frame read, after ROI and rotation."""
        with self._lock:
            return self._last_size

    @property
    def source_info(self) -> dict[str, str]:
        """What the source reported when it last opened (backend, nominal rate…)."""
        with self._lock:
            return dict(self._source_info)

    def recent_errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    # ---- capture thread ----------------------------------------------------------------------

    def _error(self, message: str, lost: bool = False) -> None:
        """Count an error; `lost`: the camera is gone — marked disconnected under the same lock, so
        no reader sees the loss counted while the status still says connected."""
        now = time.monotonic()
        with self._lock:  # also called from the consumer thread (ack)
            if lost:
                self._connected = False
            self._counters.errors += 1
            self._last_error = message
            self._errors.append(message)
            last, at = self._logged
            repeat = message == last and now - at < _LOG_REPEAT_S
            if repeat:
                self._repeats += 1
            else:
                self._logged = (message, now)
                repeats, self._repeats = self._repeats, 0
        if not repeat:
            more = f" (and {repeats} more failure(s) in the last {now - at:.0f} s)" if repeats else ""
            log.warning("camera %s: %s%s", self.config.id, message, more)

    def _disconnect(self, message: str) -> None:
        self._error(message, lost=True)
        self._failed()
        self._close_source()

    def _close_source(self) -> None:
        with self._lock:
            self._connected = False
        try:
            self.source.close()
        except Exception:
            log.exception("camera %s: error while closing %s", self.config.id, self.source.name)

    def _run(self) -> None:
        trigger = self._trigger
        loop = _CaptureLoop(self, trigger)
        try:
            while not self._stop.is_set() and not self._done.is_set():
                try:
                    loop.step()
                except Exception as exc:  # a bug or a library surprise must not end capture for good
                    log.exception("camera %s: unexpected error", self.config.id)
                    self._disconnect(f"{self.source.name}: unexpected {type(exc).__name__}: {exc}")
                    loop.schedule_retry()
        finally:
            self._close_source()
            trigger.close()

    def _opened(self, reconnect: bool) -> None:
        try:
            info = self.source.info()
        except Exception:  # informational only
            info = {}
        with self._lock:
            self._source_info = info
            self._connected = True
            if reconnect:
                self._counters.reconnects += 1
        if self._failed_opens:  # still failing: "back" is logged once a read works (_proven)
            log.debug("camera %s: reopened %s (attempt %d)", self.config.id, self.source.name, self._failed_opens + 1)
        else:
            log.info("camera %s: %s %s", self.config.id, "reconnected to" if reconnect else "opened", self.source.name)

    def _failed(self) -> None:
        """The source failed (open, read or stall): it must prove itself by a good read before it
        counts as back, and retries meanwhile back off."""
        if self._failed_opens == 0:
            self._failing_since = time.monotonic()
        self._failed_opens += 1

    def _proven(self) -> None:
        """A read worked: after failures, say once that the camera is back and what it took."""
        if self._failed_opens:
            since = self._failing_since or time.monotonic()
            log.info("camera %s: working again (%s) after %d failed attempt(s) over %.0f s", self.config.id,
                     self.source.name, self._failed_opens, time.monotonic() - since)
            self._failed_opens = 0
            self._failing_since = None

    def _finished_source(self, message: str) -> None:
        log.info("camera %s: %s", self.config.id, message)
        self._close_source()
        self._done.set()

    def _frame_read(self, frame: Frame) -> None:
        with self._lock:
            self._counters.read += 1
            self._last_frame_mono = frame.captured_mono
            self._last_size = (frame.width, frame.height)
            self._meter.add(frame.captured_mono)

    def _deliver(self, frame: Frame) -> None:
        if not self.source.streaming:  # a folder or a triggered camera: each frame is a part, never dropped
            if not self._queue.put_wait(frame, self._stop):
                return  # stopping: the part stays in its source (a folder file) for the next run
            with self._lock:
                self._counters.captured += 1
            return
        if self._triggered:
            self._queue.put_always(frame)
            with self._lock:
                self._counters.captured += 1
            return
        dropped = self._queue.put_drop_oldest(frame)
        with self._lock:
            self._counters.captured += 1
            if dropped is not None:
                self._counters.dropped += 1
        if dropped is not None:
            log.debug("camera %s: dropped frame %d (consumer behind)", self.config.id, dropped.frame_number)


class _CaptureLoop:
    """The capture thread's state machine: (re)open with backoff, read, trigger, deliver."""

    def __init__(self, worker: CameraWorker, trigger: Trigger):
        self.w = worker
        self.trigger = trigger
        self.backoff = Backoff(worker.config.reconnect_min_s, worker.config.reconnect_max_s)
        self.trigger_ready = False
        self.source_ready = False
        self.ever_opened = False
        self.retry_at = 0.0
        self.progress_at = 0.0  # last open or frame, for stall detection

    def schedule_retry(self) -> None:
        self.source_ready = False
        self.retry_at = time.monotonic() + self.backoff.next()

    def step(self) -> None:
        now = time.monotonic()
        if self.trigger_ready:
            before = self.trigger.accepted
            for problem in self.trigger.poll(now):
                self.w._error(problem)
            if self.source_ready:
                self._fire(self.trigger.accepted - before)
        if not (self.trigger_ready and self.source_ready):
            if now < self.retry_at:
                self.w._stop.wait(min(self.retry_at - now, _IDLE_S))
                return
            self._open()
            return
        self._read_one()

    def _open(self) -> None:
        try:
            if not self.trigger_ready:
                self.trigger.open()
                self.trigger_ready = True
            self.w.source.open()
        except SourceFinished as exc:
            self.w._finished_source(str(exc))
            return
        except SourceError as exc:
            self.w._disconnect(str(exc))
            self.schedule_retry()
            return
        self.source_ready = True  # the backoff resets once a read works: a folder that opens but cannot be
        self.w._opened(reconnect=self.ever_opened)  # listed retries ever more slowly, not 3 times a second
        self.ever_opened = True
        self.progress_at = time.monotonic()

    def _fire(self, triggers: int) -> None:
        """Let an on-demand source expose once per new trigger (its frames then carry the part ids)."""
        for _ in range(triggers):
            try:
                self.w.source.on_trigger()
            except SourceError as exc:
                self.w._disconnect(str(exc))
                self.schedule_retry()
                return

    def _read_one(self) -> None:
        w = self.w
        try:
            frame = w.source.read()
        except SourceFinished as exc:
            w._finished_source(str(exc))
            return
        except FrameError as exc:
            w._error(str(exc))
            return
        except SourceError as exc:
            w._disconnect(str(exc))
            self.schedule_retry()
            return
        if frame is None and not w.source.streaming:
            self.backoff.reset()  # a folder or triggered camera read without error: healthy, frames or not
            w._proven()
        if frame is None:
            stalled_for = time.monotonic() - self.progress_at
            if w.source.streaming and stalled_for > w.config.stall_timeout_s:
                w._disconnect(f"{w.source.name}: no frame for {stalled_for:.1f} s (stalled)")
                self.schedule_retry()
            else:
                w._stop.wait(_NOTHING_READY_S)  # no busy loop, even if a source returns at once
            return
        self.progress_at = frame.captured_mono
        self.backoff.reset()
        w._proven()
        w._frame_read(frame)
        part_id = self.trigger.take(frame)
        if part_id is None:
            return
        w._deliver(frame if part_id == frame.part_id else replace(frame, part_id=part_id))
