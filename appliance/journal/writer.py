"""Journal writes off the deciding loop: one thread per kind of write, in order, retried until done.

The line's loop must never wait for SQLite (another process may hold its write lock for seconds)
or for an fsync. It hands each write to a `JournalWriter` and carries on; the writer runs the
writes one after another in the order given — a part's row before its image's entry before its
result before its revisions — and reports each outcome back through `done(value, error)`.

A write that fails for a reason that can pass (the database locked beyond its busy timeout, a
full disk) is reported through `on_retry` and tried again after growing pauses; later writes wait
behind it, so order is kept and nothing is lost. A damaged database (JournalCorrupt) is not
retried: `done(None, exc)` reports the write failed.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from ..system.priority import lower_this_thread
from .store import JournalCorrupt, JournalError

log = logging.getLogger(__name__)

#: What a journal write can raise on a full, locked or failing disk (SQLite's own errors included).
JOURNAL_FAILURES = (JournalError, sqlite3.Error, OSError)
RETRY_S = (0.1, 2.0)  # pause before retrying a failed write: first, most

Done = Callable[[Any, BaseException | None], None]


class JournalWriter:
    """A thread running journal writes in order. `submit(fn, done)`; `done` is called from it."""

    def __init__(self, name: str, on_retry: Callable[[str, BaseException, int], None] | None = None,
                 nice: int = 0) -> None:
        self.name = name
        self.nice = nice  # how much nicer than the service this writer runs (0: a write a decision waits for)
        self.on_retry = on_retry  # (what, error, attempt) — a write failed and will be tried again
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"adfm-{name}", daemon=True)
        self._thread.start()
        self.failures = 0  # failed attempts, retried or not

    def submit(self, what: str, fn: Callable[[], Any], done: Done | None = None, *, retry: bool = True,
               on_retry: Callable[[BaseException, int], None] | None = None) -> None:
        """Queue a write. `retry=False`: a failure is final at once (an image that does not fit is
        given up; its part keeps a minimal record). `on_retry(error, attempt)` for this write only."""
        self._queue.put((what, fn, done, retry, on_retry))

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        lower_this_thread(self.nice)
        while True:
            item = self._queue.get()
            if item is None:
                return
            what, fn, done, retry, on_retry = item
            attempt = 0
            while True:
                attempt += 1
                try:
                    value, error = fn(), None
                except JournalCorrupt as exc:
                    value, error = None, exc
                    self.failures += 1
                    log.error("%s: %s (not retried: the journal is damaged)", what, exc)
                except JOURNAL_FAILURES as exc:
                    self.failures += 1
                    if self._stop.is_set() or not retry:
                        value, error = None, exc
                    else:
                        if on_retry is not None:
                            on_retry(exc, attempt)
                        if self.on_retry is not None:
                            self.on_retry(what, exc, attempt)
                        first, most = RETRY_S
                        self._stop.wait(min(most, first * 2 ** min(attempt - 1, 8)))
                        continue
                except Exception as exc:  # a bug, not the disk: report it, keep the thread
                    log.exception("%s failed", what)
                    value, error = None, exc
                break
            if done is not None:
                try:
                    done(value, error)
                except Exception:
                    log.exception("%s: completion callback failed", what)

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish what is queued (a failing write is given up once `timeout_s` has passed)."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._stop.set()
        self._thread.join(timeout_s)
