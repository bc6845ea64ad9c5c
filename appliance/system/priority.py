"""Thread priorities inside the station: the threads that keep deadlines first.

On a line PC the CPU is never idle (llama.cpp keeps its cores busy). The deciding loop, the PLC
link and the capture threads must run the moment they wake; journal writers, gate scoring,
OPC UA and housekeeping can wait a few milliseconds. Linux gives each thread its own nice value,
and raising it needs no privilege, so background threads lower themselves at start
(docs/architecture.md, "Threads and queues").
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

#: how much nicer than the service background threads run
BACKGROUND_NICE = 5
#: the interpreter hands the GIL to a waiting thread after this long (seconds): the deciding loop
#: waits at most this for a background thread running Python code
SWITCH_INTERVAL_S = 0.001


def lower_this_thread(nice: int = BACKGROUND_NICE) -> None:
    """Make the calling thread `nice` nicer than the process (Linux: per-thread nice values)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.debug("cannot lower thread %s's priority: %s", threading.current_thread().name, exc)


def favour_waking_threads() -> None:
    """Shorten the GIL's switch interval so a thread that wakes for a deadline is not held behind
    a background thread's Python code for the default 5 ms."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
