"""Every model answer of an evaluation, one JSON line each: the raw text metrics are computed from.

The file is resumable: a rerun reads it, skips items already answered (by sample id + question)
and appends the rest. Each record carries the run's fingerprint (model, prompt version, pixel
budget, reference protocol, generation settings), so answers of two different runs never mix in
one file: a mismatch is refused with a message saying what differs.

A crash while a line was being written leaves a partial last line; it is set aside (copied next
to the file) and the item is asked again. A damaged line anywhere else stops the run, naming the
file and line, because silently dropping it would change the results.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RESPONSES_NAME = "responses.jsonl"
INSPECT = "inspect"


class ResponsesError(ValueError):
    """A responses file that cannot be resumed; the message names the file, line and field."""


class ResponseRecord(BaseModel):
    """One answer to one item (a sample's inspection prompt or one of its MMAD questions)."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str
    question: str = Field(description="'inspect', or 'mmad/<index>' for an MMAD question")
    task: str = Field(description="'inspect' or the MMAD subtask")
    response: str
    grid: tuple[int, int, int, int] = Field(description="orig width, orig height, grid width, grid height")
    image: str = Field("", description="the query image file asked about")
    reference: str | None = Field(None, description="the normal reference image shown, if any")
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    finished: bool = Field(True, description="False when max_new_tokens cut the answer")
    seconds: float = Field(0.0, ge=0)
    run: str = Field(description="fingerprint of the run that wrote this answer")

    @property
    def key(self) -> tuple[str, str]:
        return (self.sample_id, self.question)


def run_fingerprint(settings: dict[str, Any]) -> str:
    """A short, stable hash of everything that decides an answer."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _set_aside(path: Path, data: bytes) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    partial = path.with_name(f"{path.name}.partial-{stamp}")
    partial.write_bytes(data)
    return partial


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_responses(path: str | Path, repair: bool = False) -> tuple[list[ResponseRecord], list[str]]:
    """All records of a responses file, and notes about what was set aside.

    With `repair`, a partial last line (an interrupted write) is copied next to the file and cut
    off, so appending continues cleanly; without it, the partial line is only reported.
    """
    path = Path(path)
    if not path.is_file():
        return [], []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records: list[ResponseRecord] = []
    notes: list[str] = []
    offset = 0
    for lineno, line in enumerate(lines, 1):
        start = offset
        offset += len(line) + 1
        if not line.strip():
            continue
        try:
            records.append(ResponseRecord.model_validate(json.loads(line)))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            is_last = all(not rest.strip() for rest in lines[lineno:])
            if not is_last:
                raise ResponsesError(
                    f"{path}:{lineno}: not a valid response record ({str(exc).splitlines()[0]}); "
                    "fix or remove that line, or start over with --fresh"
                ) from exc
            if repair:
                partial = _set_aside(path, raw[start:])
                with path.open("r+b") as f:
                    f.truncate(start)
                notes.append(f"{path}:{lineno}: partial last line (an interrupted write) moved to {partial}; "
                             "that item is asked again")
            else:
                notes.append(f"{path}:{lineno}: partial last line ignored")
    if repair and records and not _ends_with_newline(path):
        with path.open("ab") as f:  # a complete record whose newline was not written yet
            f.write(b"\n")
    return records, notes


def check_run(
    records: Iterable[ResponseRecord],
    fingerprint: str,
    path: Path,
    settings: dict[str, Any],
    previous: dict[str, Any] | None = None,
) -> None:
    """Refuse to resume a file written by another run (another model, prompt or setting).

    `previous` is the earlier run's settings (its run.json), used to say exactly what differs.
    """
    others = sorted({r.run for r in records if r.run != fingerprint})
    if not others:
        return
    if previous is not None and run_fingerprint(previous) in others:
        changed = [
            f"{k}: {previous.get(k)!r} → {settings.get(k)!r}"
            for k in sorted(set(previous) | set(settings))
            if previous.get(k) != settings.get(k)
        ]
        what = "; ".join(changed)
    else:
        what = f"fingerprint {', '.join(others)} ≠ {fingerprint}"
    raise ResponsesError(
        f"{path} holds answers of another run ({what}). "
        "Write to another --out directory, or pass --fresh to set the old answers aside and start over"
    )


def set_aside(path: str | Path) -> Path | None:
    """Move an existing responses file out of the way (never deleted); returns where it went."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.stem}.{stamp}.bak{path.suffix}")
    path.replace(target)
    return target


class ResponseWriter:
    """Appends records, flushed and fsynced per batch, so an interruption loses at most one batch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, records: Iterable[ResponseRecord]) -> None:
        for r in records:
            self._f.write(r.model_dump_json() + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ResponseWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def latest_by_key(records: Iterable[ResponseRecord]) -> dict[tuple[str, str], ResponseRecord]:
    """One record per (sample id, question): the last one written wins."""
    out: dict[tuple[str, str], ResponseRecord] = {}
    for r in records:
        out[r.key] = r
    return out
