"""The part's image with the model's boxes drawn in.

`PartImage` renders half-block cells itself (any terminal, SSH, tests). Where textual-image has
found a graphics protocol (sixel, kitty) at start-up, `graphics_image_widget()` returns its widget
instead, showing the full-resolution image with the boxes drawn at that resolution.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from adfm.schema import InspectionResult

from ...journal.store import JournalError, decode_image
from ..render import annotate_full, halfblock_lines


def load_part_image(result: InspectionResult, path: Path | None) -> tuple[Image.Image | None, str]:
    """The part's image, or None and why it cannot be shown."""
    if not result.image_path:
        pruned = any("pruned" in p for p in result.problems)
        return None, "image pruned by the retention policy" if pruned else "no image stored for this part"
    if path is None:
        return None, ("image not available here: run adfm-review on the line PC, or pass --images "
                      "with the station's journal directory")
    try:
        return Image.fromarray(decode_image(path)), ""
    except JournalError as exc:
        return None, str(exc)


def graphics_available() -> bool:
    """True when textual-image detected a terminal that shows real pixels (sixel or kitty).

    Only meaningful once `textual_image.renderable` was imported before the app started (the
    command line does that): the terminal cannot be queried while Textual owns it.
    """
    renderable = sys.modules.get("textual_image.renderable")
    if renderable is None:
        return False
    from textual_image.renderable import SixelImage, TGPImage

    return renderable.Image in (SixelImage, TGPImage)


def graphics_image_widget(image: Image.Image, result: InspectionResult, **kwargs) -> Widget:
    from textual_image.widget import Image as TIImage

    return TIImage(annotate_full(image, result.boxes), **kwargs)


def set_graphics_image(widget: Widget, image: Image.Image, result: InspectionResult) -> None:
    widget.image = annotate_full(image, result.boxes)  # type: ignore[attr-defined]


class PartImage(Widget):
    """Half-block rendering of a part's image with its boxes, or a one-line reason when none."""

    DEFAULT_CSS = """
    PartImage { width: 1fr; height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._image: Image.Image | None = None
        self._result: InspectionResult | None = None
        self._problem = ""
        self._cache: tuple[tuple, list[Strip]] | None = None

    def show(self, result: InspectionResult, image: Image.Image | None, problem: str = "") -> None:
        self._result, self._image, self._problem = result, image, problem
        self._cache = None
        self.refresh()

    def _strips(self) -> list[Strip]:
        width, height = self.size.width, self.size.height
        key = (id(self._image), self._result.seq if self._result else None, width, height)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        strips: list[Strip] = []
        if self._image is not None and self._result is not None and width > 0 and height > 0:
            r = self._result
            size = (r.image_width or self._image.width, r.image_height or self._image.height)
            strips = [Strip(line, width) for line in halfblock_lines(self._image, width, height, r.boxes, size)]
        elif self._problem and width > 0:
            text = Text(self._problem, style="italic")
            strips = [Strip(list(line), width) for line in
                      self.app.console.render_lines(text, self.app.console.options.update_width(width), pad=True)]
        self._cache = (key, strips)
        return strips

    def render_line(self, y: int) -> Strip:
        strips = self._strips()
        if y < len(strips):
            return strips[y]
        return Strip([Segment(" " * self.size.width, Style())], self.size.width)
