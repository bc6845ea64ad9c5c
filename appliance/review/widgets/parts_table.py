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

from ..format import decision_text, fmt_ms, fmt_num, fmt_time, verdict_text
from ..store import Part

#: (key, header, width): 60 cells of content + 16 of padding + the scrollbar fit 80 columns.
COLUMNS = (("seq", "Seq", 5), ("time", "Time", 11), ("camera", "Camera", 7), ("verdict", "Verdict", 8),
           ("score", "Score", 5), ("gate", "Gate", 4), ("ms", "ms", 5), ("operator", "Operator", 15))


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

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    @property
    def current_seq(self) -> int | None:
        if not self.seqs or not (0 <= self.cursor_row < len(self.seqs)):
            return None
        return self.seqs[self.cursor_row]

    def show_parts(self, parts: Sequence[Part], tz: tzinfo | None, now: float) -> None:
        """Show `parts` (ordered by seq, as `newest_first` says)."""
        seqs = [p.seq for p in parts]
        day = (datetime.fromtimestamp(now, tz).date(), tz)
        changed = [p for p in parts if self._shown.get(p.seq) is not p]
        if seqs == self.seqs and not changed and day == self._day:
            return
        keep_seq, keep_row = self.current_seq, self.cursor_row
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
                for (key, _, _), value in zip(COLUMNS, cells, strict=True):
                    self.update_cell(str(p.seq), key, value)
            else:
                self.add_row(*cells, key=str(p.seq))
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

    @staticmethod
    def _cells(p: Part, tz: tzinfo | None, now: float) -> list:
        r = p.result
        return [
            Text(str(r.seq), justify="right"),
            fmt_time(r.captured_at, tz, now),
            r.camera,
            verdict_text(r.verdict),
            Text(fmt_num(r.score), justify="right"),
            Text(fmt_num(r.gate_score), justify="right"),
            Text(fmt_ms(r), justify="right"),
            decision_text(p),
        ]
