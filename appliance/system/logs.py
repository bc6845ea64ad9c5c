"""What the station writes to its log, for an operator following `journalctl -u adfm-appliance -f`.

At INFO: one line per inspected part (seq, part id, verdict and action, where the decision came
from, latency), state changes (started, model loaded, PLC link up, stopped) and alarms — raised
once with their cause, re-stated only as they keep coming (the 1st, 10th, 100th … time, with the
count), cleared once. Libraries speak at the level that fits a station's log: asyncua's
start-up chatter (a thousand INFO lines while the OPC UA node set loads) and pymodbus's per-retry
connection errors (the PLC link reports the loss itself, once, as an alarm) are kept to their
warnings or dropped; `-v` shows the station's debug lines and the libraries' INFO, `-vv`
everything.
"""

from __future__ import annotations

import logging
import math
import sys

from adfm.schema import InspectionResult

#: library loggers and the level they log at by default, with -v, with -vv
LIBRARY_LEVELS: dict[str, tuple[int, int, int]] = {
    "asyncua": (logging.WARNING, logging.INFO, logging.DEBUG),
    # "no signing / encrypting policy available" at every start restates a choice the config made
    # explicitly (opcua binds loopback unless `insecure: true`, README "The line")
    "asyncua.server.server": (logging.ERROR, logging.INFO, logging.DEBUG),
    # every failed connect is an ERROR from pymodbus; the link's own alarm says it once, with the cause
    "pymodbus": (logging.CRITICAL, logging.WARNING, logging.DEBUG),
    "textual_image": (logging.CRITICAL, logging.WARNING, logging.DEBUG),
}


def quiet_libraries(verbose: int = 0) -> None:
    """Set each chatty library's logger to the level that fits (`verbose`: how many -v)."""
    for name, levels in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(levels[min(verbose, 2)])


def part_line(result: InspectionResult) -> str:
    """The one log line of a part: `seq 12 part 4711: fail → reject (vlm) in 640 ms, recipe a`."""
    verdict = result.verdict + (f" → {result.action}" if result.action and result.action != result.verdict else "")
    latency = result.latency_ms.get("trigger_to_decision", result.latency_ms.get("total"))
    source = result.decision_source or _free_run_source(result)
    text = f"seq {result.seq} part {result.part_id}: {verdict} ({source})"
    if latency is not None:
        text += f" in {latency:.0f} ms"
    if result.recipe:
        text += f", recipe {result.recipe}"
    if result.verdict == "review" and result.reason:
        text += f": {result.reason[:160]}"
    return text


def _free_run_source(result: InspectionResult) -> str:
    if result.decision is not None:
        return "vlm"
    if result.verdict == "pass" and result.gate_score is not None:
        return "gate"
    return "no answer"


def restate(count: int) -> bool:
    """Whether the `count`-th occurrence of the same failure is logged again: the 1st, 10th, 100th …,
    so a failure repeating for hours costs a handful of lines, each with its count."""
    return count == 1 or (count >= 10 and math.log10(count).is_integer())


def stdout_closed_quietly() -> None:
    """`adfm-appliance status | head`: the reader left; say nothing more (no traceback at exit)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
