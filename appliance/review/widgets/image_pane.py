"""A part's picture with a caption: half-block cells, or real pixels where the terminal shows them.

The run view and the part detail both show one; the graphics widget is mounted once and its
picture swapped, so stepping through parts does not rebuild widgets.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from .part_image import PartImage, Picture, graphics_image_widget, set_graphics_image


class ImagePane(Vertical):
    DEFAULT_CSS = """
    ImagePane { width: 1fr; height: 1fr; }
    ImagePane > .graphics { width: 100%; height: 1fr; }
    ImagePane > .caption { height: auto; max-height: 2; color: $text-muted; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._graphics: Widget | None = None

    def compose(self) -> ComposeResult:
        yield PartImage(classes="halfblock")
        yield Static("", classes="caption")

    def show(self, picture: Picture | None, problem: str, caption: str, graphics: bool = False) -> None:
        self.query_one(".caption", Static).update(caption)
        halfblock = self.query_one(PartImage)
        if picture is not None and graphics:
            halfblock.display = False
            if self._graphics is None:
                self._graphics = graphics_image_widget(picture, classes="graphics")
                self.mount(self._graphics, before=0)
            else:
                set_graphics_image(self._graphics, picture)
                self._graphics.display = True
            return
        if self._graphics is not None:
            self._graphics.display = False
        halfblock.display = True
        halfblock.show(picture, problem)
