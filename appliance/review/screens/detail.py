"""One part: its picture (the model's boxes; `h` for the gate's heat map) beside what the model
thought, and the keys to decide.

Opened from the run view, the feed or the queue with that list's order; ← / → walk it. Opened
from the queue, a decision moves on to the next part still awaiting review, and the screen closes
when none is left — unless the station refuses a verdict: then the refused part comes back on
screen with the station's reason in full.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..widgets import Banner, MessageLine, TopBar, part_details
from ..widgets.image_pane import ImagePane

if TYPE_CHECKING:
    from ..app import ReviewApp


class DetailScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("d", "decide('confirmed_defect')", "Defect"),
        Binding("b", "decide('defect_wrong_box')", "Box wrong"),
        Binding("f", "decide('false_alarm')", "False alarm"),
        Binding("u", "decide('unsure')", "Unsure"),
        Binding("s", "decide('skip')", "Skip"),
        Binding("n", "note", "Note", show=False),
        Binding("h", "heat", "Heat map"),
        Binding("left,k", "step(-1)", "Prev", key_display="←", show=False),
        Binding("right,j", "step(1)", "Next", key_display="→", show=False),
    ]

    app: ReviewApp

    def __init__(self, seqs: list[int], index: int, from_queue: bool) -> None:
        super().__init__()
        self.seqs = list(seqs)
        self.index = index
        self.from_queue = from_queue

    @property
    def seq(self) -> int:
        return self.seqs[self.index]

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        yield Banner(id="banner")
        with Horizontal(id="detail"):
            yield ImagePane(id="image-pane")
            with VerticalScroll(id="text-pane"):
                yield Static(id="details")
        yield MessageLine(id="message")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#text-pane").focus()
        self.refresh_from_app()

    def refresh_from_app(self) -> None:
        self.app.update_bars(self)
        part = self.app.store.get(self.seq)
        if part is None:  # dropped from memory meanwhile (very old); nothing left to show
            self.query_one("#details", Static).update(f"seq {self.seq} is no longer loaded")
            return
        self.query_one("#details", Static).update(part_details(part, self.app.tz, self.app.notes.get(self.seq, "")))
        picture, problem, caption = self.app.picture_for(self.app.as_decided(part))
        self.query_one(ImagePane).show(picture, problem, caption, self.app.graphics)

    def show_seq(self, seq: int) -> None:
        """Bring `seq` on screen (a refused verdict's part), adding it to the list if it left it."""
        if seq not in self.seqs:
            self.seqs.insert(self.index, seq)
        self.index = self.seqs.index(seq)
        self.query_one("#text-pane", VerticalScroll).scroll_home(animate=False)
        self.refresh_from_app()

    # ---- actions --------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_heat(self) -> None:
        self.app.toggle_heat()

    def action_step(self, delta: int) -> None:
        new = self.index + delta
        if 0 <= new < len(self.seqs):
            self.index = new
            self.query_one("#text-pane", VerticalScroll).scroll_home(animate=False)
            self.refresh_from_app()
        else:
            self.app.say("first part of the list" if new < 0 else "last part of the list")

    def action_decide(self, decision: str) -> None:
        seq = self.seq
        self.app.decide_or_draw(seq, decision, after=lambda: self._decided(seq))

    def _decided(self, seq: int) -> None:
        if self.from_queue and self.seq == seq:
            self.advance()
        else:
            self.refresh_from_app()

    def advance(self) -> None:
        """Move on to the next part of the list that still awaits review; close when none does."""
        store = self.app.store
        for i in list(range(self.index + 1, len(self.seqs))) + list(range(0, self.index)):
            part = store.get(self.seqs[i])
            if part is not None and part.awaiting_review:
                self.index = i
                self.query_one("#text-pane", VerticalScroll).scroll_home(animate=False)
                self.refresh_from_app()
                return
        self.app.pop_screen()
        self.app.say("review queue done: no part awaits review")

    def action_note(self) -> None:
        self.app.ask_note(self.seq)
