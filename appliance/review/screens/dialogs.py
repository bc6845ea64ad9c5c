"""Small modal screens: typing a note, and the key help."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

#: Every key of the dashboard, for the help screen (the footer shows only the main ones).
KEYS: tuple[tuple[str, str], ...] = (
    ("1 2 3 4", "run view · review queue · live feed · station status"),
    ("↑ ↓  j k", "move in the list (in a part: scroll its text)"),
    ("← →", "run view: pick in the filmstrip · in a part: previous / next"),
    ("enter", "open the part (its picture, boxes, reasoning)"),
    ("d", "defect: the model is right"),
    ("b", "defect, but the box is wrong: draw the right one"),
    ("f", "false alarm: the part is good"),
    ("u", "unsure: for an engineer to look at"),
    ("s", "skip (leaves the queue undecided)"),
    ("n", "note (sent with the decision; re-sends a decided part's)"),
    ("h", "gate heat map over the picture / back"),
    ("v / c / t", "filter by verdict / camera / time window"),
    ("esc  ?  q", "back · this help · quit (queued verdicts stay)"),
    ("", "Gate: score / threshold · ms: trigger or frame → decision"),
)


class NoteScreen(ModalScreen[str | None]):
    """Type a note for one part; Enter keeps it, Esc drops it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, seq: int, current: str = "", name: str = "") -> None:
        super().__init__()
        self.seq = seq
        self.current = current
        self.part_label = name or f"seq {seq}"

    def compose(self) -> ComposeResult:
        with Vertical(id="note-box"):
            yield Static(f"Note for {self.part_label} — Enter keeps it, Esc cancels")
            yield Input(value=self.current, placeholder="what you saw", max_length=500, id="note-input",
                        select_on_focus=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with Vertical(id="help-box"):
            yield Static("Keys", classes="title")
            yield Static(table)

    def action_close(self) -> None:
        self.dismiss(None)
