"""Where the MQTT publisher stands in the journal: the last seq (and revision) the broker acknowledged.

Kept in a small JSON file beside the journal, rewritten atomically after each turn that moved it
(a process kill keeps it; a power cut may cost the newest few, which are then published again:
QoS 1 is at least once). It names the journal's epoch: a replaced journal starts a new cursor.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from adfm.files import write_atomic

log = logging.getLogger(__name__)

CURSOR_NAME = "mqtt-cursor.json"


@dataclass(frozen=True)
class Cursor:
    """`acked_seq`: every result up to it was acknowledged; `acked_revision`: the revision feed position
    (Journal.revision_feed) up to which every revision was."""

    epoch: str
    acked_seq: int
    acked_revision: int


def load_cursor(path: Path, epoch: str, start: Cursor) -> Cursor:
    """The stored cursor for this journal epoch; `start` when there is none, it is unreadable, or it was
    written for another journal (whose seqs mean other parts)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stored = Cursor(str(data["epoch"]), int(data["acked_seq"]), int(data["acked_revision"]))
    except FileNotFoundError:
        return start
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s): publishing from seq %d", path, exc, start.acked_seq + 1)
        return start
    if stored.epoch != epoch:
        log.warning("%s: written for journal epoch %s, the journal is now epoch %s (replaced): publishing from "
                    "seq %d", path, stored.epoch, epoch, start.acked_seq + 1)
        return start
    return stored


def save_cursor(path: Path, cursor: Cursor, broker: str, durable: bool = False) -> None:
    write_atomic(path, json.dumps({**asdict(cursor), "broker": broker}), durable=durable)
