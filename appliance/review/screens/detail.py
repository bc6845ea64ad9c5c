"""One part: the image with the model's boxes beside what the model thought, and the keys to decide.

Opened from the feed or the queue with that list's order; ← / → walk it. Opened from the queue,
a decision moves on to the next part still awaiting review, and the screen closes when none is left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from PIL import Image
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from ..store import Part
from ..widgets import Banner, MessageLine, PartImage, TopBar, part_details
from ..widgets.part_image import graphics_image_widget, load_part_image, set_graphics_image

if TYPE_CHECKING:
    from ..app import ReviewApp


class DetailScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("d", "decide('confirmed_defect')", "Defect"),
        Binding("f", "decide('false_alarm')", "False alarm"),
        Binding("s", "decide('skip')", "Skip"),
        Binding("n", "note", "Note"),
        Binding("left,k", "step(-1)", "Prev", key_display="←"),
        Binding("right,j", "step(1)", "Next", key_display="→"),
    ]

    app: ReviewApp

    def __init__(self, seqs: list[int], index: int, from_queue: bool) -> None:
        super().__init__()
        self.seqs = list(seqs)
        self.index = index
        self.from_queue = from_queue
        self._image_seq: int | None = None
        self._graphics: Widget | None = None

    @property
    def seq(self) -> int:
        return self.seqs[self.index]

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        yield Banner(id="banner")
        with Horizontal(id="detail"):
            with Vertical(id="image-pane"):
                yield PartImage(id="image")
                yield Static("", id="image-caption")
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
        if self._image_seq != self.seq:
            self._image_seq = self.seq
            self._show_image(part)

    def _show_image(self, part: Part) -> None:
        r = part.result
        image, problem = load_part_image(r, self.app.source.image_file(r))
        caption = f"{r.image_width}×{r.image_height} px · {len(r.boxes)} box{'es' if len(r.boxes) != 1 else ''}"
        self.query_one("#image-caption", Static).update(caption if image is not None else "")
        if image is not None and self.app.graphics:
            self._show_graphics(image, part)
            return
        self._show_graphics(None, part)
        self.query_one("#image", PartImage).show(r, image, problem)

    def _show_graphics(self, image: Image.Image | None, part: Part) -> None:
        """Real pixels through textual-image: one widget, mounted once, its image swapped per part."""
        halfblock = self.query_one("#image", PartImage)
        halfblock.display = image is None
        if image is None:
            if self._graphics is not None:
                self._graphics.display = False
            return
        if self._graphics is None:
            self._graphics = graphics_image_widget(image, part.result, id="graphics-image")
            self.query_one("#image-pane").mount(self._graphics, before=0)
        else:
            set_graphics_image(self._graphics, image, part.result)
            self._graphics.display = True

    # ---- actions --------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_step(self, delta: int) -> None:
        new = self.index + delta
        if 0 <= new < len(self.seqs):
            self.index = new
            self.query_one("#text-pane", VerticalScroll).scroll_home(animate=False)
            self.refresh_from_app()
        else:
            self.app.say("first part of the list" if new < 0 else "last part of the list")

    def action_decide(self, decision: str) -> None:
        if not self.app.decide(self.seq, decision):  # type: ignore[arg-type]
            return
        if self.from_queue:
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
