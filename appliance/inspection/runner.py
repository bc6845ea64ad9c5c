"""The VLM on the line: one thread that feeds the inference worker, most urgent part first.

The VLM on a CPU is much slower than a line, so parts queue for it. The runner takes the part
that can still make its deadline soonest; parts already past their deadline (decided by the
fail-safe) are inspected afterwards for their revision, newest `backlog` of them only. The queue
is bounded: beyond `backlog` late jobs, and beyond `limit` jobs in all (a model that hangs), the
oldest are dropped and counted, never left to grow. The worker process lowers its own priority
(`nice`) before it loads the model, so every llama.cpp thread runs below the line's own threads.
A recipe may name its own model: the runner then switches the worker's model before that part
(one model loaded at a time). The call itself — resize, retry once, parse — is the inspection
core's (`core.infer`), the same for every mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .core import GenerationOptions, Inference, ModelInfo, infer
from .worker import BackendSpec, InferenceWorker, WorkerStartError

log = logging.getLogger(__name__)


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
    generation: GenerationOptions = field(default_factory=GenerationOptions)


class VlmRunner:
    """Runs VlmJobs in a thread; `on_done(key, inference)` and `on_skipped(key)` are called from it
    (and from `submit` for a job the bounded queue drops)."""

    def __init__(
        self,
        models: dict[str, VlmModel],
        on_done: Callable[[str, Inference], None],
        on_skipped: Callable[[str], None],
        *,
        backlog: int = 16,
        limit: int | None = None,
        hang_s: float = 120.0,
        load_timeout_s: float = 600.0,
        nice: int = 10,
    ) -> None:
        self.models = models
        self.on_done = on_done
        self.on_skipped = on_skipped
        self.backlog = backlog
        self.limit = max(1, limit if limit is not None else backlog + 16)
        self.hang_s = hang_s
        self.load_timeout_s = load_timeout_s
        self.nice = nice
        self._jobs: list[VlmJob] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._worker: InferenceWorker | None = None
        self._loaded: str | None = None
        self._thread: threading.Thread | None = None
        self.down_reason = ""  # set while the model cannot be loaded or keeps failing
        self.busy_key: str | None = None
        self.restarts = 0
        self.dropped = 0  # jobs dropped unanswered: late beyond the backlog, or the queue full
        #: models replaced on the line (a promotion): their parts still get an answer while it can
        #: decide them, but late ones (revisions only) are dropped rather than reload the old model
        self.retired: set[str] = set()

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
        """Queue a part; when the queue is full the oldest job goes (a late one first)."""
        dropped: list[VlmJob] = []
        with self._cond:
            self._jobs.append(job)
            while len(self._jobs) > self.limit:
                now = time.monotonic()
                late = [j for j in self._jobs if j.deadline_mono <= now]
                victim = min(late or self._jobs, key=lambda j: j.queued_mono)
                self._jobs.remove(victim)
                dropped.append(victim)
            self.dropped += len(dropped)
            self._cond.notify()
        for j in dropped:
            self.on_skipped(j.key)

    def queued(self) -> int:
        with self._cond:
            return len(self._jobs)

    # ---- thread ---------------------------------------------------------------------------------

    def _pick(self) -> tuple[VlmJob | None, list[VlmJob]]:
        """The job that can still make its deadline soonest, else the newest late one; late jobs
        beyond the backlog, and late jobs of retired models, are dropped, oldest first (returned for
        `on_skipped`)."""
        now = time.monotonic()
        live = [j for j in self._jobs if j.deadline_mono > now]
        late = sorted((j for j in self._jobs if j.deadline_mono <= now), key=lambda j: j.queued_mono)
        retired = [j for j in late if j.model in self.retired]
        late = [j for j in late if j.model not in self.retired]
        skipped = retired + late[: max(0, len(late) - self.backlog)]
        for j in skipped:
            self._jobs.remove(j)
        self.dropped += len(skipped)
        if live:
            job = min(live, key=lambda j: j.deadline_mono)
        elif len(late) > len(skipped) - len(retired):
            job = late[-1]
        else:
            return None, skipped
        self._jobs.remove(job)
        return job, skipped

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                job, skipped = self._pick()
                if job is None and not skipped:
                    self._cond.wait(0.1)
                    continue
                self.busy_key = job.key if job is not None else None
            for j in skipped:
                self.on_skipped(j.key)
            if job is None:
                continue
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
                                       on_wait=self._check_stop, nice=self.nice)
        self._loaded = model
        self._worker.start()
        self.down_reason = ""

    def _infer(self, job: VlmJob) -> Inference:
        vlm = self.models[job.model]
        g = vlm.generation

        def generate(images: list[np.ndarray]):
            self._switch(job.model)
            assert self._worker is not None
            reply = self._worker.generate(images, prompt_version=vlm.info.prompt_version, product=job.product,
                                          max_tokens=g.max_tokens, temperature=g.temperature, seed=g.seed)
            self.down_reason = ""
            return reply

        def failed(_attempt: int, exc: Exception) -> None:
            if isinstance(exc, WorkerStartError):
                self.down_reason = str(exc)
                self._loaded = None
                self._stop.wait(0.5)
            else:
                self.restarts += 1

        return infer(generate, vlm.info, job.image, job.reference, on_failure=failed, between=self._check_stop)


class _Stopping(Exception):
    pass
