"""The run view: what a shop-floor screen shows first — a large OK / NG tile for the last part,
its picture (the model's boxes; `h` for the gate's heat map) as the main view, the shift's counts
and yield, and a filmstrip of the newest flagged parts (← → pick one, enter opens it, the
decision keys decide it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import tzinfo
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from ..format import DECISION_STYLES, decision_label, fmt_score, fmt_time, latency_words, model_answer
from ..render import halfblock_lines
from ..store import Part, ShiftSummary, line_outcome
from .image_pane import ImagePane
from .part_image import Picture

#: Three-row block letters for the tile (any terminal font has these characters).
GLYPHS = {
    "O": ("▄▀▀▀▄", "█   █", "▀▄▄▄▀"),
    "K": ("█  ▄▀", "█▀▀▄ ", "▀   ▀"),
    "N": ("█▄  █", "█ ▀▄█", "▀   ▀"),
    "G": ("▄▀▀▀ ", "█ ▀▀█", "▀▄▄▄▀"),
    "?": ("▄▀▀▀▄", "  ▄▀ ", "  ▄  "),
    " ": ("  ", "  ", "  "),
}
#: what the tile says for what the line did (`line_outcome`), and its colours
TILES = {"ok": ("OK", "bold black on green", "OK: passed"),
         "ng": ("NG", "bold white on red", "NG: rejected"),
         "review": ("?", "bold black on yellow", "REVIEW: no clear answer")}


def big_text(word: str, style: str, width: int) -> Text:
    """`word` in the three-row block letters, centred in `width` cells on the tile's colour."""
    rows = [" ".join(GLYPHS.get(ch, GLYPHS[" "])[r] for ch in word) for r in range(3)]
    out = Text(style=style, no_wrap=True)
    for i, row in enumerate(rows):
        pad = max(0, width - len(row))
        out.append(" " * (pad // 2) + row + " " * (pad - pad // 2) + ("\n" if i < 2 else ""))
    return out


def gate_line(r) -> str:
    """`gate 0.83 ≥ 0.50 suspicious` / `gate 0.12 < 0.50 ok`: the score against its threshold."""
    if r.gate_score is None:
        return "gate: not scored"
    if r.gate_threshold is None:
        return f"gate score {fmt_score(r.gate_score)}"
    hit = r.gate_score >= r.gate_threshold
    return (f"gate {fmt_score(r.gate_score)} {'≥' if hit else '<'} {fmt_score(r.gate_threshold)} "
            f"{'suspicious' if hit else 'ok'}")


def tile_text(part: Part | None, tz: tzinfo | None, width: int) -> Text:
    if part is None:
        return Text("\n no part yet\n", style="dim")
    r = part.result
    word, style, words = TILES[line_outcome(r)]
    if r.action == "hold":
        words = "HOLD: held for a person"
    if r.decision_source is not None and r.decision_source.startswith("failsafe"):
        words = f"{words.split(':')[0]}: fail-safe ({r.decision_source.removeprefix('failsafe_').replace('_', ' ')})"
    t = Text(no_wrap=False)
    t.append_text(big_text(word, style, width))
    t.append("\n" + words.center(width) + "\n", style=style)
    t.append(f"{r.part_id}", style="bold")
    t.append(f" · seq {r.seq}\n")
    t.append(f"{r.camera} · {fmt_time(r.captured_at, tz)}" + (f" · {part.product}" if part.product else "") + "\n")
    t.append(gate_line(r) + "\n")
    if r.decision_source != "gate" and (r.decision is not None or r.raw_response):
        n = len(r.boxes)
        t.append(f"model: {model_answer(r)}" + (f" ({n} box{'es' if n != 1 else ''})" if n else "") + "\n")
    t.append(latency_words(r).split(" = ")[0].split(" of ")[0] + "\n", style="dim")
    return t


def shift_text(s: ShiftSummary, tz: tzinfo | None) -> Text:
    """One line: `Shift 06:00– │ 412 parts │ yield 97.1 % │ OK 400 NG 9 ? 3 │ false alarms 5 │ ● 2 awaiting`."""
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f" Shift {s.since.astimezone(tz):%H:%M}–", style="bold")
    if s.partial:
        t.append(" (loaded)", style="dim")
    t.append(f" │ {s.parts} parts │ ")
    fy, ry = s.first_pass_yield, s.reviewed_yield
    t.append(f"yield {fy * 100:.1f} %" if fy is not None else "yield —", style="bold")
    t.append(" │ ")
    t.append("OK", style="bold black on green")
    t.append(f" {s.ok} ")
    t.append("NG", style="bold white on red")
    t.append(f" {s.ng} ")
    t.append("?", style="bold black on yellow")
    t.append(f" {s.review}")
    if s.awaiting:
        t.append(" │ ")
        t.append(f"● {s.awaiting} awaiting", style="bold yellow")
    t.append(f" │ {s.false_alarms} false alarm{'s' if s.false_alarms != 1 else ''}")
    if ry is not None and s.false_alarms:
        t.append(f" → yield {ry * 100:.1f} % reviewed")
    return t


class Filmstrip(Widget, can_focus=True):
    """The newest flagged parts as small pictures with their part id and decision; ← → pick one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1)", "Newer", show=False),
        Binding("right", "move(1)", "Older", show=False),
        Binding("enter", "open", "Open"),
    ]
    DEFAULT_CSS = """
    Filmstrip { height: 6; width: 1fr; }
    """
    THUMB_WIDTH = 13  # cells, plus one between thumbs

    class Opened(Message):
        def __init__(self, seqs: list[int], index: int) -> None:
            super().__init__()
            self.seqs, self.index = seqs, index

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.parts: list[Part] = []
        self.pictures: dict[int, Picture | None] = {}
        self.selected = 0
        self._picked_by_click = False
        self._cache: dict[tuple, list[list[Segment]]] = {}

    @property
    def capacity(self) -> int:
        return max(1, (self.size.width + 1) // (self.THUMB_WIDTH + 1))

    @property
    def current_seq(self) -> int | None:
        return self.parts[self.selected].seq if 0 <= self.selected < len(self.parts) else None

    def show(self, parts: Sequence[Part], pictures: dict[int, Picture | None]) -> None:
        keep = self.current_seq
        self.parts, self.pictures = list(parts), pictures
        seqs = [p.seq for p in self.parts]
        if keep in seqs and self.selected != 0:
            self.selected = seqs.index(keep)
        self.selected = min(self.selected, max(0, len(self.parts) - 1))
        self.refresh()

    def action_move(self, delta: int) -> None:
        self._picked_by_click = False
        if self.parts:
            self.selected = min(max(self.selected + delta, 0), min(len(self.parts), self.capacity) - 1)
            self.refresh()

    def action_open(self) -> None:
        if self.parts:
            self.post_message(self.Opened([p.seq for p in self.parts], self.selected))

    def on_click(self, event: events.Click) -> None:
        index = event.x // (self.THUMB_WIDTH + 1)
        if 0 <= index < min(len(self.parts), self.capacity):
            picked = index == self.selected
            self.selected = index
            self.refresh()
            if event.chain >= 2 or (picked and event.chain == 1 and self._picked_by_click):
                self.action_open()  # a double click, or a click on the part a click picked
            self._picked_by_click = True

    def _thumb(self, part: Part, rows: int) -> list[list[Segment]]:
        picture = self.pictures.get(part.seq)
        key = (part.seq, id(picture), rows)
        if key not in self._cache:
            if picture is None:
                blank = [Segment(" " * self.THUMB_WIDTH, Style(bgcolor="grey11"))]
                lines = [blank for _ in range(rows)]
            else:
                lines = halfblock_lines(picture.image, self.THUMB_WIDTH, rows, picture.boxes, picture.source_size,
                                        colors=picture.colors)
                while len(lines) < rows:
                    lines.append([Segment(" " * self.THUMB_WIDTH)])
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = lines
        return self._cache[key]

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        rows = max(1, self.size.height - 2)
        if not self.parts:
            text = " no flagged part yet" if y == 0 else ""
            return Strip([Segment(text.ljust(width), Style(dim=True))], width)
        segments: list[Segment] = []
        for i, part in enumerate(self.parts[: self.capacity]):
            if i:
                segments.append(Segment(" "))
            chosen = i == self.selected and self.has_focus
            if y < rows:
                segments.extend(self._thumb(part, rows)[y])
            elif y == rows:
                verdict_style = {"fail": "bold white on red", "review": "bold black on yellow"}.get(
                    part.result.verdict, "")
                label = part.result.part_id[: self.THUMB_WIDTH].ljust(self.THUMB_WIDTH)
                style = Style.parse("bold black on white") if chosen else Style.parse(verdict_style)
                segments.append(Segment(label, style))
            else:
                d = part.decision
                if d is None:
                    word, style = ("✗ refused", "bold red") if (part.local is not None and
                                                               part.local.state == "rejected") else (
                        "● awaiting", "bold yellow")
                else:
                    word, style = f"✓ {decision_label(d)}", DECISION_STYLES.get(d.decision, "")
                segments.append(Segment(word[: self.THUMB_WIDTH].ljust(self.THUMB_WIDTH), Style.parse(style)))
        return Strip(segments, width).adjust_cell_length(width)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()


class RunView(Vertical):
    """The tile and the shift on the left, the last part's picture on the right, the filmstrip below."""

    DEFAULT_CSS = """
    RunView #run-top { height: 1fr; }
    RunView #run-left { width: 30; height: 1fr; padding: 0 1 0 0; }
    RunView #run-tile { height: auto; }
    RunView #run-shift { height: 1; background: $boost; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="run-top"):
            with Vertical(id="run-left"):
                yield Static(id="run-tile")
            yield ImagePane(id="run-image")
        yield Static(id="run-shift")
        yield Filmstrip(id="filmstrip")

    def show(self, last: Part | None, shift: ShiftSummary, tz: tzinfo | None, picture: Picture | None,
             problem: str, caption: str, graphics: bool, flagged: Sequence[Part],
             thumbs: dict[int, Picture | None]) -> None:
        left = self.query_one("#run-left")
        self.query_one("#run-tile", Static).update(tile_text(last, tz, max(8, left.size.width - 1 or 26)))
        self.query_one("#run-shift", Static).update(shift_text(shift, tz))
        self.query_one("#run-image", ImagePane).show(picture, problem, caption, graphics)
        self.query_one(Filmstrip).show(flagged, thumbs)
