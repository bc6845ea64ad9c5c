"""The feed and the queue: one row per part; the cursor stays on its part across updates, or at
the same position when its part left (so deciding a queued part moves on to the next one). On
the feed's top row the cursor follows the newest part.

Both lists are ordered by seq (the feed newest first, the queue oldest first), so an update is
applied as a difference — rows removed, changed rows rewritten, new rows added, then sorted —
rather than rebuilding hundreds of rows for each part that arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, tzinfo
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from ..format import decision_text, fmt_ms, fmt_time, gate_text, verdict_text
from ..store import Part

#: (key, header, width, shown from this terminal width); the operator column takes what is left.
COLUMNS = (("seq", "Seq", 6, 0), ("part", "Part", 10, 0), ("time", "Time", 8, 0), ("camera", "Camera", 8, 100),
           ("verdict", "Verdict", 7, 0), ("gate", "Gate / thr", 11, 0), ("ms", "ms", 6, 100))
WIDE = 100  # from this width: wider part and time columns, the camera, and the decision time
PADDING = 2  # a DataTable cell's padding, both sides
SCROLLBAR = 2


def columns_for(width: int) -> list[tuple[str, str, int]]:
    """The columns at a terminal width: at 80 the part id, time, verdict, gate score and who
    decided what; wider terminals add the camera and the decision time (ms from frame/trigger)."""
    cols = []
    for key, label, w, min_width in COLUMNS:
        if width < min_width:
            continue
        if width >= WIDE:
            w = {"seq": 7, "part": 14, "time": 11}.get(key, w)
        cols.append((key, label, w))
    used = sum(w + PADDING for _, _, w in cols) + PADDING + SCROLLBAR
    cols.append(("operator", "Operator", max(12, width - used)))
    return cols


class PartsTable(DataTable):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open"),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    def __init__(self, *, newest_first: bool, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self.newest_first = newest_first
        self.seqs: list[int] = []
        self._shown: dict[int, Part] = {}
        self._day: tuple[date, tzinfo | None] | None = None
        self._restore_row = 0
        self.columns_shown: list[tuple[str, str, int]] = []

    def _lay_out(self, width: int) -> None:
        """(Re)build the columns for `width`; the rows are filled in again by the next show."""
        cols = columns_for(width)
        if cols == self.columns_shown:
            return
        keep = self.cursor_row
        self.clear(columns=True)
        self._shown = {}
        self.seqs = []
        self.columns_shown = cols
        for key, label, w in cols:
            self.add_column(label, key=key, width=w)
        self._restore_row = keep

    def on_resize(self) -> None:
        before = self.columns_shown
        self._lay_out(self.app.size.width)
        if self.columns_shown != before:
            self.app.call_later(self.app.refresh_views)  # type: ignore[attr-defined]

    @property
    def current_seq(self) -> int | None:
        if not self.seqs or not (0 <= self.cursor_row < len(self.seqs)):
            return None
        return self.seqs[self.cursor_row]

    def show_parts(self, parts: Sequence[Part], tz: tzinfo | None, now: float) -> None:
        """Show `parts` (ordered by seq, as `newest_first` says)."""
        self._lay_out(self.app.size.width)
        seqs = [p.seq for p in parts]
        day = (datetime.fromtimestamp(now, tz).date(), tz)
        changed = [p for p in parts if self._shown.get(p.seq) is not p]
        if seqs == self.seqs and not changed and day == self._day:
            return
        keep_seq, keep_row = self.current_seq, self.cursor_row if self.seqs else self._restore_row
        if day != self._day:  # dates are shown relative to today: every row's time may read differently
            self.clear()
            self._shown = {}
            self._day = day
            changed = list(parts)
        wanted = set(seqs)
        for seq in [s for s in self._shown if s not in wanted]:
            self.remove_row(str(seq))
            del self._shown[seq]
        added = False
        for p in changed:
            cells = self._cells(p, tz, now)
            if p.seq in self._shown:
                for key, value in cells.items():
                    self.update_cell(str(p.seq), key, value)
            else:
                self.add_row(*cells.values(), key=str(p.seq))
                added = True
            self._shown[p.seq] = p
        if added:
            self.sort("seq", key=lambda cell: int(cell.plain), reverse=self.newest_first)
        self.seqs = seqs
        if seqs:
            if self.newest_first and keep_row == 0:
                row = 0  # on the newest part: follow the line as parts arrive
            elif keep_seq in wanted:
                row = seqs.index(keep_seq)
            else:
                row = min(max(keep_row, 0), len(seqs) - 1)
            if row != self.cursor_row:
                self.move_cursor(row=row, animate=False, scroll=True)

    def _cells(self, p: Part, tz: tzinfo | None, now: float) -> dict[str, object]:
        r = p.result
        every = {
            "seq": Text(str(r.seq), justify="right"),
            "part": r.part_id,
            "time": fmt_time(r.captured_at, tz, now),
            "camera": r.camera,
            "verdict": verdict_text(r.verdict),
            "gate": gate_text(r),
            "ms": Text(fmt_ms(r), justify="right"),
            "operator": decision_text(p),
        }
        return {key: every[key] for key, _, _ in self.columns_shown}
