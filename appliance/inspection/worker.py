"""The inference worker: a child process that holds the model and answers one part at a time.

llama.cpp runs native code that can crash the process or hang; keeping it in a child lets the
service survive both. The parent sends pre-resized images over a pipe and waits at most the
deadline, calling `on_wait` about once a second meanwhile (the service pings the systemd watchdog
from there). A crash (the pipe closes) or a hang (the deadline passes; the child is killed) raises
WorkerFailure and the next request starts a fresh child; deciding what to do with the part —
retry once, then `review` — is the pipeline's job.

The backend is named by a `module:callable` factory so the same supervision runs the GGUF model
in production and small scripted backends in tests.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "adfm.appliance.inspection.worker:gguf_backend"
FailureKind = Literal["crash", "hang", "error"]


class WorkerStartError(RuntimeError):
    """The worker could not load its backend; the message carries the child's own error."""


class WorkerFailure(RuntimeError):
    """One request failed: the child crashed, hung past its deadline, or its backend raised."""

    def __init__(self, kind: FailureKind, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class BackendSpec:
    """How the child builds its backend: `factory(**kwargs)`, both picklable."""

    factory: str = DEFAULT_BACKEND
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # measured in the child, around the backend's generate call


def gguf_backend(model_dir: str, n_ctx: int = 4096, n_threads: int | None = None, check_hashes: bool = True,
                 n_gpu_layers: int = 0, mmproj_gpu: bool | None = None, min_tokens: int = 0):
    """The production backend: the exported GGUF model through llama-cpp-python (`min_tokens`: for
    benchmarks only, answers of a fixed length; see GgufVlm)."""
    from adfm.runtime.vlm import GgufVlm

    return GgufVlm(model_dir, n_ctx=n_ctx, n_threads=n_threads, check_hashes=check_hashes,
                   n_gpu_layers=n_gpu_layers, mmproj_gpu=mmproj_gpu, min_tokens=min_tokens)


def resolve_factory(spec: str) -> Callable[..., Any]:
    """Import `module:callable`; a clear error names what is missing."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"backend factory {spec!r} must look like 'package.module:callable'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"backend factory {spec!r}: module {module_name} has no {attr!r}") from None


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the service dies, so no orphan keeps the model loaded."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _lower_priority(nice: int) -> None:
    """Lower this process's priority before the backend starts any thread, so llama.cpp's compute
    threads inherit it: on a busy CPU the line's deadlines and reject pulses come first."""
    if nice <= 0:
        return
    try:
        os.nice(nice)
    except OSError as exc:
        log.warning("inference worker: cannot lower its priority by %d: %s", nice, exc)


def _child_main(conn: Connection, spec: BackendSpec, nice: int = 0) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _lower_priority(nice)
    try:
        from PIL import Image

        backend = resolve_factory(spec.factory)(**spec.kwargs)
    except BaseException as exc:
        conn.send(("start_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, req_id, arrays, kwargs = msg
        try:
            t0 = time.perf_counter()
            gen = backend.generate([Image.fromarray(a) for a in arrays], **kwargs)
            seconds = time.perf_counter() - t0
            conn.send(("ok", req_id, str(gen.text), int(gen.prompt_tokens), int(gen.completion_tokens), seconds))
        except Exception as exc:
            conn.send(("error", req_id, f"{type(exc).__name__}: {exc}"))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is unresponsive"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class InferenceWorker:
    """Supervise one inference child. Not thread-safe: the pipeline's main loop drives it."""

    def __init__(
        self,
        spec: BackendSpec,
        *,
        deadline_s: float = 120.0,
        load_timeout_s: float = 600.0,
        on_wait: Callable[[], None] | None = None,
        wait_slice_s: float = 1.0,
        nice: int = 0,
    ) -> None:
        self.spec = spec
        self.nice = nice  # how much nicer than the service the child runs (it lowers itself at start)
        self.deadline_s = deadline_s
        self.load_timeout_s = load_timeout_s
        self.on_wait = on_wait
        self.wait_slice_s = wait_slice_s
        self.starts = 0
        self.last_failure = ""
        self._ctx = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._ids = itertools.count(1)

    @property
    def restarts(self) -> int:
        """Starts after the first: each one followed a crash, a hang or a stop."""
        return max(0, self.starts - 1)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _tick(self) -> None:
        if self.on_wait is not None:
            self.on_wait()

    def start(self) -> None:
        """Start the child and wait until its backend is loaded (WorkerStartError otherwise)."""
        self._discard()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_child_main, args=(child, self.spec, self.nice), name="adfm-inference",
                                 daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.starts += 1
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._discard()
                raise WorkerStartError(
                    f"the inference worker did not load {self.spec.factory} within {self.load_timeout_s:g} s"
                )
            try:
                ready = parent.poll(min(self.wait_slice_s, remaining))
            except (EOFError, OSError):
                ready = True
            if ready:
                try:
                    msg = parent.recv()
                except (EOFError, OSError):
                    proc.join(1.0)
                    code = proc.exitcode
                    self._discard()
                    raise WorkerStartError(
                        f"the inference worker {_describe_exit(code)} while loading {self.spec.factory}"
                    ) from None
                if msg[0] == "ready":
                    log.info("inference worker %s ready (%s)", msg[1], self.spec.factory)
                    return
                self._discard()
                raise WorkerStartError(f"the inference worker could not load its model: {msg[1]}")
            self._tick()

    def generate(self, images: list[np.ndarray], **kwargs: Any) -> GenerationReply:
        """Answer one part. Raises WorkerFailure (crash / hang / error) and WorkerStartError."""
        if not self.alive or self._conn is None:
            self.start()
        assert self._conn is not None and self._proc is not None
        req_id = next(self._ids)
        try:
            self._conn.send(("generate", req_id, [np.ascontiguousarray(a) for a in images], kwargs))
        except (BrokenPipeError, EOFError, OSError):
            return self._crashed()
        deadline = time.monotonic() + self.deadline_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pid = self.pid
                self._discard()
                self.last_failure = f"inference worker (pid {pid}) gave no answer within {self.deadline_s:g} s; killed"
                raise WorkerFailure("hang", self.last_failure)
            try:
                ready = self._conn.poll(min(self.wait_slice_s, remaining))
                msg = self._conn.recv() if ready else None
            except (EOFError, OSError):
                return self._crashed()
            if msg is None:
                if not self._proc.is_alive():
                    return self._crashed()
                self._tick()
                continue
            if msg[1] != req_id:
                continue  # cannot happen with one request in flight; never mistake answers
            if msg[0] == "ok":
                return GenerationReply(text=msg[2], prompt_tokens=msg[3], completion_tokens=msg[4], seconds=msg[5])
            self.last_failure = f"inference backend error: {msg[2]}"
            raise WorkerFailure("error", self.last_failure)

    def _crashed(self) -> GenerationReply:
        proc = self._proc
        if proc is not None:
            proc.join(2.0)
        how = _describe_exit(proc.exitcode if proc is not None else None)
        pid = proc.pid if proc is not None else None
        self._discard()
        self.last_failure = f"inference worker (pid {pid}) {how} while inspecting the part"
        raise WorkerFailure("crash", self.last_failure)

    def _discard(self) -> None:
        """Kill the child (if any) and forget it; the next request starts a new one."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)
            with contextlib.suppress(ValueError):
                proc.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the child to exit, then kill it if it does not."""
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(("stop",))
            self._proc.join(timeout_s)
        self._discard()
