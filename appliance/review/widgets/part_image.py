"""The part's image with the model's boxes (and the operator's own) drawn in; or the gate's heat map.

`PartImage` renders half-block cells itself (any terminal, SSH, tests). Where textual-image has
found a graphics protocol (sixel, kitty) at start-up, `graphics_image_widget()` returns its widget
instead, showing the full-resolution picture with the boxes drawn at that resolution.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from adfm.schema import Box, InspectionResult

from ..render import OPERATOR_COLOR, RGB, annotate_full, box_color, halfblock_lines


@dataclass(frozen=True, eq=False)
class Picture:
    """What an image view shows: a picture (the part, or the gate's heat map over it), boxes in
    the part's image pixels (`source_size`) and their colours."""

    image: Image.Image
    boxes: tuple[Box, ...]
    colors: tuple[RGB, ...]
    source_size: tuple[int, int]


def part_picture(result: InspectionResult, image: Image.Image, extra: Sequence[Box] = ()) -> Picture:
    """The model's boxes in their colours, then the operator's boxes (theirs, or `extra` being
    drawn) in white; boxes are in image pixels, whatever size `image` (a heat map) has."""
    operator = list(result.operator.boxes) if result.operator is not None else []
    mine = [*operator, *extra]
    boxes = (*result.boxes, *mine)
    colors = (*(box_color(i) for i in range(len(result.boxes))), *([OPERATOR_COLOR] * len(mine)))
    size = (result.image_width or image.width, result.image_height or image.height)
    return Picture(image, tuple(boxes), tuple(colors), size)


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


def _full(picture: Picture) -> Image.Image:
    return annotate_full(picture.image, picture.boxes, picture.source_size, picture.colors)


def graphics_image_widget(picture: Picture, **kwargs) -> Widget:
    from textual_image.widget import Image as TIImage

    return TIImage(_full(picture), **kwargs)


def set_graphics_image(widget: Widget, picture: Picture) -> None:
    widget.image = _full(picture)  # type: ignore[attr-defined]


class PartImage(Widget):
    """Half-block rendering of a picture with its boxes, or a short reason when there is none."""

    DEFAULT_CSS = """
    PartImage { width: 1fr; height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.picture: Picture | None = None
        self._problem = ""
        self._cache: tuple[tuple, list[Strip]] | None = None

    def show(self, picture: Picture | None, problem: str = "") -> None:
        if picture is self.picture and problem == self._problem:
            return
        self.picture, self._problem = picture, problem
        self._cache = None
        self.refresh()

    def _strips(self) -> list[Strip]:
        width, height = self.size.width, self.size.height
        key = (width, height)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        strips: list[Strip] = []
        p = self.picture
        if p is not None and width > 0 and height > 0:
            strips = [Strip(line, width) for line in
                      halfblock_lines(p.image, width, height, p.boxes, p.source_size, colors=p.colors)]
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
