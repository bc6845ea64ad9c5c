"""Drawing the right box on a part whose defect the model boxed wrong (`b`).

The part's picture fills the screen with the model's boxes in their colours and the box being
drawn in white. Keys: arrows move the box, shift+arrows grow or shrink it (its right and bottom
edges), `+`/`-` change the step, enter keeps it, esc cancels. Mouse: press at one corner, drag to
the other, release. The box is kept in the part's image pixels — whatever the terminal's size —
and goes with the verdict `defect_wrong_box`.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from adfm.schema import Box, InspectionResult

from ..render import halfblock_layout
from ..widgets.part_image import PartImage, Picture, part_picture

STEPS = (1, 4, 16)  # half-cell pixels per key press


class BoxCanvas(PartImage, can_focus=True):
    """The picture, taking the mouse: press, drag and release draw a box."""

    def __init__(self, editor: BoxEditor, **kwargs) -> None:
        super().__init__(**kwargs)
        self.editor = editor
        self._anchor: tuple[float, float] | None = None

    def cell_to_pixels(self, x: int, y: int, end: bool = False) -> tuple[float, float] | None:
        """The image pixel at a cell's top-left corner (`end`: bottom-right), None outside the picture."""
        p = self.picture
        if p is None:
            return None
        left, w, h = halfblock_layout(p.image.width, p.image.height, self.size.width, self.size.height)
        cx, cy = x - left + (1 if end else 0), 2 * y + (2 if end else 0)
        if not (0 <= x - left < w and 0 <= 2 * y < h):
            return None
        sw, sh = p.source_size
        return min(cx, w) * sw / w, min(cy, h) * sh / h

    def on_mouse_down(self, event: events.MouseDown) -> None:
        start = self.cell_to_pixels(event.x, event.y)
        if start is not None:
            self._anchor = start
            self.capture_mouse()
            end = self.cell_to_pixels(event.x, event.y, end=True)
            if end is not None:
                self.editor.set_box(*start, *end)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if self._anchor is not None:
            end = self.cell_to_pixels(event.x, event.y, end=True)
            if end is not None:
                self.editor.set_box(*self._anchor, *end)

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if self._anchor is not None:
            self.on_mouse_move(event)  # type: ignore[arg-type]
            self._anchor = None
            self.release_mouse()


class BoxEditor(Screen[list[Box] | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "keep", "Keep box"),
        Binding("escape", "cancel", "Cancel"),
        Binding("left", "nudge(-1, 0, 0, 0)", "Move", show=False),
        Binding("right", "nudge(1, 0, 0, 0)", "Move", show=False),
        Binding("up", "nudge(0, -1, 0, 0)", "Move", show=False),
        Binding("down", "nudge(0, 1, 0, 0)", "Move", show=False),
        Binding("shift+left", "nudge(0, 0, -1, 0)", "Size", show=False),
        Binding("shift+right", "nudge(0, 0, 1, 0)", "Size", show=False),
        Binding("shift+up", "nudge(0, 0, 0, -1)", "Size", show=False),
        Binding("shift+down", "nudge(0, 0, 0, 1)", "Size", show=False),
        Binding("plus,equals_sign", "step(1)", "Step +", show=False),
        Binding("minus", "step(-1)", "Step −", show=False),
    ]
    DEFAULT_CSS = """
    BoxEditor #box-help { height: auto; background: $boost; }
    BoxEditor BoxCanvas { height: 1fr; }
    """

    def __init__(self, result: InspectionResult, picture: Picture) -> None:
        super().__init__()
        self.result = result
        self.base = picture
        self.width_px, self.height_px = picture.source_size
        self.step_index = 0
        start = result.boxes[0] if result.boxes else None
        if start is None:  # a quarter of the image, centred
            w, h = self.width_px / 4, self.height_px / 4
            start = Box(x1=self.width_px / 2 - w / 2, y1=self.height_px / 2 - h / 2,
                        x2=self.width_px / 2 + w / 2, y2=self.height_px / 2 + h / 2)
        self.box = [start.x1, start.y1, start.x2, start.y2]

    def compose(self) -> ComposeResult:
        yield Static(id="box-help")
        yield BoxCanvas(self, id="box-canvas")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(BoxCanvas).focus()
        self._redraw()

    # ---- the box -----------------------------------------------------------------------------

    def pixel_step(self) -> tuple[float, float]:
        """Image pixels per step: one half-cell pixel of the picture as drawn now, times the step."""
        canvas = self.query_one(BoxCanvas)
        p = self.base
        _, w, h = halfblock_layout(p.image.width, p.image.height, max(1, canvas.size.width),
                                   max(1, canvas.size.height))
        n = STEPS[self.step_index]
        return n * self.width_px / w, n * self.height_px / h

    def set_box(self, x1: float, y1: float, x2: float, y2: float) -> None:
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        self.box = [max(0.0, x1), max(0.0, y1), min(float(self.width_px), x2), min(float(self.height_px), y2)]
        self._redraw()

    def current(self) -> Box:
        x1, y1, x2, y2 = (round(v) for v in self.box)
        return Box(x1=x1, y1=y1, x2=max(x2, x1 + 1), y2=max(y2, y1 + 1), label="defect")

    def _redraw(self) -> None:
        box = self.current()
        picture = part_picture(self.result.model_copy(update={"operator": None}), self.base.image, [box])
        self.query_one(BoxCanvas).show(picture)
        t = Text()
        t.append(f" Draw the defect's box on {self.result.part_id}", style="bold")
        t.append(f" · [{box.x1:.0f}, {box.y1:.0f}, {box.x2:.0f}, {box.y2:.0f}] px of "
                 f"{self.width_px}×{self.height_px}\n")
        t.append(f" arrows move · shift+arrows size · +/- step ({STEPS[self.step_index]}) · or drag the mouse",
                 style="dim")
        self.query_one("#box-help", Static).update(t)

    # ---- actions ------------------------------------------------------------------------------

    def action_nudge(self, dx: int, dy: int, dw: int, dh: int) -> None:
        sx, sy = self.pixel_step()
        x1, y1, x2, y2 = self.box
        if dx or dy:
            dx_px = min(max(dx * sx, -x1), self.width_px - x2)
            dy_px = min(max(dy * sy, -y1), self.height_px - y2)
            self.box = [x1 + dx_px, y1 + dy_px, x2 + dx_px, y2 + dy_px]
        else:
            x2 = min(max(x2 + dw * sx, x1 + sx), self.width_px)
            y2 = min(max(y2 + dh * sy, y1 + sy), self.height_px)
            self.box = [x1, y1, x2, y2]
        self._redraw()

    def action_step(self, delta: int) -> None:
        self.step_index = min(max(self.step_index + delta, 0), len(STEPS) - 1)
        self._redraw()

    def action_keep(self) -> None:
        self.dismiss([self.current()])

    def action_cancel(self) -> None:
        self.dismiss(None)
