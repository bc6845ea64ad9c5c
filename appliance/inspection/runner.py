"""The VLM on the line: one thread that feeds the inference worker, most urgent part first.

The VLM on a CPU is much slower than a line, so parts queue for it. The runner takes the part
that can still make its deadline soonest; parts already past their deadline (decided by the
fail-safe) are inspected afterwards for their revision, newest `backlog` of them only — older
ones are skipped rather than let the queue grow without end. The worker process runs `nice`
below the service, so the model never delays a deadline or a reject pulse on a busy CPU. A recipe
may name its own model: the runner then switches the worker's model before that part (one model
loaded at a time).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from adfm.protocol import parse_response

from ..modes.freerun import Inference, ModelInfo
from .worker import BackendSpec, InferenceWorker, WorkerFailure, WorkerStartError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2


@dataclass
class VlmJob:
    key: str
    image: np.ndarray
    deadline_mono: float
    model: str  # key into the runner's models
    product: str | None = None
    reference: np.ndarray | None = None
    queued_mono: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class VlmModel:
    info: ModelInfo
    spec: BackendSpec


class VlmRunner:
    """Runs VlmJobs in a thread; `on_done(key, inference)` and `on_skipped(key)` are called from it."""

    def __init__(
        self,
        models: dict[str, VlmModel],
        on_done: Callable[[str, Inference], None],
        on_skipped: Callable[[str], None],
        *,
        backlog: int = 16,
        hang_s: float = 120.0,
        load_timeout_s: float = 600.0,
        max_tokens: int = 256,
        nice: int = 10,
    ) -> None:
        self.models = models
        self.on_done = on_done
        self.on_skipped = on_skipped
        self.backlog = backlog
        self.hang_s = hang_s
        self.load_timeout_s = load_timeout_s
        self.max_tokens = max_tokens
        self.nice = nice
        self._reniced: int | None = None
        self._jobs: list[VlmJob] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._worker: InferenceWorker | None = None
        self._loaded: str | None = None
        self._thread: threading.Thread | None = None
        self.down_reason = ""  # set while the model cannot be loaded or keeps failing
        self.busy_key: str | None = None
        self.restarts = 0

    # ---- control --------------------------------------------------------------------------------

    def start(self, preload: str | None = None) -> None:
        if preload is not None:
            try:
                self._switch(preload)
            except WorkerStartError as exc:
                self.down_reason = str(exc)
                log.error("VLM could not load: %s", exc)
        self._thread = threading.Thread(target=self._run, name="adfm-vlm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10.0)
        if self._worker is not None:
            self._worker.stop()

    @property
    def alive(self) -> bool:
        return self._worker is not None and self._worker.alive

    @property
    def down(self) -> bool:
        return bool(self.down_reason)

    def submit(self, job: VlmJob) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def queued(self) -> int:
        with self._cond:
            return len(self._jobs)

    # ---- thread ---------------------------------------------------------------------------------

    def _pick(self) -> VlmJob | None:
        """The job that can still make its deadline soonest, else the newest late one; late jobs
        beyond the backlog are skipped, oldest first."""
        now = time.monotonic()
        live = [j for j in self._jobs if j.deadline_mono > now]
        late = [j for j in self._jobs if j.deadline_mono <= now]
        skipped = late[: max(0, len(late) - self.backlog)]
        for j in skipped:
            self._jobs.remove(j)
            self.on_skipped(j.key)
        if live:
            job = min(live, key=lambda j: j.deadline_mono)
        elif len(late) > len(skipped):
            job = max(late[len(skipped):], key=lambda j: j.queued_mono)
        else:
            return None
        self._jobs.remove(job)
        return job

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                job = self._pick()
                if job is None:
                    self._cond.wait(0.1)
                    continue
                self.busy_key = job.key
            try:
                inference = self._infer(job)
            except _Stopping:
                return
            finally:
                self.busy_key = None
            self.on_done(job.key, inference)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopping

    def _switch(self, model: str) -> None:
        if self._loaded == model and self._worker is not None:
            return
        if self._worker is not None:
            self._worker.stop()
        spec = self.models[model].spec
        self._worker = InferenceWorker(spec, deadline_s=self.hang_s, load_timeout_s=self.load_timeout_s,
                                       on_wait=self._check_stop)
        self._loaded = model
        self._worker.start()
        self.down_reason = ""

    def _renice(self) -> None:
        """Run the model below the line's own threads: on a busy CPU the PLC polling, the
        fail-safe and the reject pulse must not wait for llama.cpp's compute threads."""
        pid = self._worker.pid if self._worker is not None else None
        if pid is None or pid == self._reniced or not self.nice:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
        except OSError as exc:
            log.warning("cannot lower the inference worker's priority: %s", exc)
        self._reniced = pid

    def _infer(self, job: VlmJob) -> Inference:
        out = Inference(parsed=None)
        info = self.models[job.model].info
        t0 = time.perf_counter()
        grid = info.grid(job.image.shape[1], job.image.shape[0])
        images = [np.asarray(grid.resize(job.image))]
        if job.reference is not None:
            images.insert(0, job.reference)
        reply = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            out.attempts = attempt
            try:
                self._switch(job.model)
                assert self._worker is not None
                self._renice()
                reply = self._worker.generate(images, prompt_version=info.prompt_version, product=job.product,
                                              max_tokens=self.max_tokens, temperature=0.0, seed=0)
                self.down_reason = ""
                break
            except WorkerFailure as exc:
                out.failures.append(f"attempt {attempt}: {exc}")
                self.restarts += 1
            except WorkerStartError as exc:
                out.failures.append(f"attempt {attempt}: {exc}")
                self.down_reason = str(exc)
                self._loaded = None
                self._stop.wait(0.5)
            self._check_stop()
        out.ms["vlm"] = round((time.perf_counter() - t0) * 1000.0, 3)
        if reply is None:
            return out
        out.raw = reply.text
        out.parsed = parse_response(reply.text, grid, info.prompt_version)
        out.ms["model"] = round(reply.seconds * 1000.0, 3)
        return out


class _Stopping(Exception):
    pass
