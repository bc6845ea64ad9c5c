"""`ReviewApp`: the Textual app. It owns the store, the filters, the operator's identity and the
part images; a source (live station or journal) feeds it events from its own thread through
`post_message`.

Deciding a part writes the verdict to the source's durable outbox first, marks the part decided
here at once (it leaves the queue), and says on the message line whether the station has
acknowledged it or it waits for the station to be reachable again. A verdict the station refuses
is said in full and its part is brought back on screen, to be decided again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from datetime import time as dt_time
from functools import partial
from typing import ClassVar

import numpy as np
from PIL import Image
from textual.app import App
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen

from adfm.schema import DECISIONS_WITH_BOXES, Box, InspectionResult, OperatorDecision, OperatorVerdict

from .format import decision_label, fmt_time
from .images import Kind, PartImages
from .outbox import OutboxError
from .screens import BoxEditor, DetailScreen, HelpScreen, MainScreen, NoteScreen
from .sources import (
    Announced,
    Connection,
    Event,
    Notice,
    ReadOnlySource,
    Replaced,
    Results,
    Source,
    Status,
    VerdictUpdate,
)
from .store import DEFAULT_SHIFTS, Filters, Part, PartStore, shift_start, summarize_shift
from .widgets import Banner, MessageLine, TopBar
from .widgets.part_image import Picture, part_picture
from .widgets.run_view import RunView

#: How much of the gate's heat map shows over the part where it is hottest (0: none, 1: the map alone).
HEAT_ALPHA = 0.75
FILMSTRIP_PARTS = 12


def heat_over(image: Image.Image | None, heat: Image.Image) -> Image.Image:
    """The gate's heat map over the part's image: each pixel as opaque as the map is hot (the
    stored map's brightness; its colours run dark to bright), so cold areas leave the part as it
    is. The map is stored at its own size."""
    if image is None:
        return heat.convert("RGB")
    base = np.asarray(image.convert("RGB"), np.float32)
    colour = heat.convert("RGB").resize(image.size, Image.Resampling.BILINEAR)
    level = np.asarray(colour.convert("L"), np.float32)[..., None] / 255.0
    alpha = np.clip(HEAT_ALPHA * level * 1.5, 0.0, HEAT_ALPHA)
    mixed = base * (1.0 - alpha) + np.asarray(colour, np.float32) * alpha
    return Image.fromarray(np.round(mixed).astype(np.uint8))


class SourceEvents(Message):
    """Events from the source's thread, delivered on the app's."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__()
        self.events = events


class ReviewApp(App):
    CSS_PATH = "review.tcss"
    TITLE = "adfm-review"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "view('run')", "Run", show=False),
        Binding("2", "view('queue')", "Queue", show=False),
        Binding("3", "view('feed')", "Feed", show=False),
        Binding("4", "view('status')", "Status", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        source: Source,
        *,
        operator: str,
        tz: tzinfo | None = None,
        clock: Callable[[], float] = time.time,
        graphics: bool = False,
        max_parts: int = 20_000,
        shifts: Sequence[dt_time] = DEFAULT_SHIFTS,
    ) -> None:
        super().__init__()
        if not operator.strip():
            raise ValueError("operator name must not be empty")
        self.source = source
        self.operator = operator.strip()
        self.tz = tz
        self.clock = clock
        self.graphics = graphics
        self.store = PartStore(max_parts=max_parts)
        self.filters = Filters()
        self.notes: dict[int, str] = {}  # notes typed for parts not decided yet
        self.connected: bool | None = None
        self.link_detail = f"connecting to {source.description}"
        self.down_since: datetime | None = None
        self.message = ("read-only: browsing a journal; decisions need --connect" if source.read_only
                        else "ready")
        self.message_severity = "information"
        self._mine: set[str] = set()  # verdict ids decided here this session
        self._started = False
        self.shifts = tuple(shifts) or DEFAULT_SHIFTS
        self.heat = False  # the picture shows the gate's heat map (h)
        self.images = PartImages(self._locate)
        self._pictures: dict[tuple, Picture] = {}

    def get_default_screen(self) -> Screen:
        return MainScreen()

    def start_source(self) -> None:
        """Called by the main screen once its widgets exist, so that the first events have a place."""
        if not self._started:
            self._started = True
            self.source.start(self._deliver)
            self.set_interval(30.0, self.refresh_views)  # time windows and dates move with the clock

    def on_unmount(self) -> None:
        if self._started:
            self.source.stop()

    def _deliver(self, events: list[Event]) -> None:
        self.post_message(SourceEvents(events))

    # ---- events from the source -----------------------------------------------------------------

    def on_source_events(self, message: SourceEvents) -> None:
        for event in message.events:
            self.apply(event)
        self.refresh_views()

    def apply(self, event: Event) -> None:
        store = self.store
        if isinstance(event, Results):
            store.add_results(event.results, event.products)
        elif isinstance(event, Announced):
            store.apply_journaled(event.verdict)
            v = event.verdict
            if v.verdict_id not in self._mine:
                self.say(f"{self.part_name(v.seq)}: {decision_label(v)} · {v.operator}")
        elif isinstance(event, Status):
            store.status = event.status
            store.station = store.station or event.status.station
        elif isinstance(event, VerdictUpdate):
            self._verdict_update(event)
        elif isinstance(event, Connection):
            self._connection(event)
        elif isinstance(event, Notice):
            self.say(event.text, event.severity)
        elif isinstance(event, Replaced):
            store.reset()
            self.notes.clear()
            self.images.clear()
            self._pictures.clear()
            self.say(f"station {event.station}: its journal was replaced (epoch {event.new_epoch}); "
                     "parts shown before are cleared, decisions queued for them will be refused", "warning")

    def _verdict_update(self, event: VerdictUpdate) -> None:
        v = event.verdict
        self._mine.add(v.verdict_id)
        self.store.set_local(v, event.state, event.detail)
        if event.state == "sent":
            self.say(f"✓ {self.part_name(v.seq)}: {decision_label(v)} · {v.operator} journaled by the station")
        elif event.state == "rejected":
            self.say(f"✗ {self.part_name(v.seq)}: the station refused {decision_label(v)} · {v.operator}: "
                     f"{event.detail}", "error")
            screen = self._top()
            if isinstance(screen, DetailScreen | MainScreen) and screen.is_mounted:
                self.call_after_refresh(self._bring_back, v.seq)

    def _bring_back(self, seq: int) -> None:
        """A refused verdict's part, back on screen to be decided again."""
        screen = self._top()
        if isinstance(screen, DetailScreen):
            screen.show_seq(seq)
        elif isinstance(screen, MainScreen):
            screen.select(seq)

    def part_name(self, seq: int) -> str:
        """How messages name a part: its part id, and the station's seq."""
        part = self.store.get(seq)
        return f"{part.result.part_id} (seq {seq})" if part is not None else f"seq {seq}"

    def _connection(self, event: Connection) -> None:
        was = self.connected
        self.connected = event.connected
        self.link_detail = event.detail
        if event.station:
            self.store.station = self.store.station or event.station
        if event.connected is False and was is not False:
            self.down_since = event.at
        elif event.connected:
            if was is False:
                self.say("reconnected: parts journaled meanwhile are being fetched; queued verdicts are sent")
            self.down_since = None

    # ---- what the screens show ------------------------------------------------------------------

    def _top(self) -> Screen | None:
        """The screen on top, None while the app starts or shuts down (events still arrive then)."""
        return self.screen_stack[-1] if self.screen_stack else None

    def say(self, text: str, severity: str = "information") -> None:
        self.message, self.message_severity = text, severity
        screen = self._top()
        if screen is not None:
            for line in screen.query(MessageLine):
                line.say(text, severity)

    def offline_label(self) -> str:
        return self.source.description if self.source.read_only else ""

    def banner_text(self) -> str | None:
        if self.connected is not False:
            return None
        since = f" since {fmt_time(self.down_since, self.tz)}" if self.down_since else ""
        if self.source.read_only:
            return f"✖ {self.link_detail}"
        queued = self.store.queued_verdicts()
        waiting = f" · {queued} verdict{'s' if queued != 1 else ''} queued here" if queued else ""
        return f"✖ DISCONNECTED{since} · reconnecting{waiting}\n  {self.link_detail}"

    def link_label(self) -> str:
        if self.source.read_only:
            return "journal"
        return {True: "live", False: "DISCONNECTED", None: "connecting"}[self.connected]

    def update_bars(self, screen: Screen) -> None:
        view = screen.view if isinstance(screen, MainScreen) else "part"
        screen.query_one("#topbar", TopBar).show(
            station=self.store.station or "", operator=self.operator, link=self.link_label(),
            link_ok=True if self.source.read_only and self.connected else self.connected,
            view=view, awaiting=self.store.awaiting_count())
        screen.query_one("#banner", Banner).show(self.banner_text())
        screen.query_one("#message", MessageLine).say(self.message, self.message_severity)

    def refresh_views(self) -> None:
        screen = self._top()
        if isinstance(screen, MainScreen | DetailScreen) and screen.is_mounted:
            try:
                screen.refresh_from_app()
            except NoMatches:
                # Only while the app shuts down: its widgets are being removed as a last batch of
                # source events arrives. Nothing is left to show them on.
                if self.is_running:
                    raise

    # ---- pictures -------------------------------------------------------------------------------

    def _locate(self, result: InspectionResult, kind: Kind):
        return self.source.image_file(result) if kind == "image" else self.source.map_file(result)

    def _loaded(self, result: InspectionResult, kind: Kind):
        """The image (or why none), None while it loads: loading runs on a worker thread, a
        live source may fetch it over the network."""
        loaded = self.images.get(result, kind)
        if loaded is None and self.images.claim(result, kind):
            self.run_worker(partial(self._load, result, kind), thread=True, group="images", exit_on_error=False)
        return loaded

    def _load(self, result: InspectionResult, kind: Kind) -> None:
        self.images.load(result, kind)
        if self.is_running:
            self.call_from_thread(self.refresh_views)

    @staticmethod
    def as_decided(part: Part) -> InspectionResult:
        """The part's result with the verdict in force (a redrawn box shows as soon as it is made,
        before the station has acknowledged it)."""
        d = part.decision
        r = part.result
        return r if d is r.operator else r.model_copy(update={"operator": d})

    def picture_for(self, result: InspectionResult, heat: bool | None = None) -> tuple[Picture | None, str, str]:
        """(picture, why none, caption) of a part: its image with the model's boxes and the
        operator's, or with `heat` (default: as toggled with h) the gate's heat map over it."""
        heat = self.heat if heat is None else heat
        image = self._loaded(result, "image")
        heat_map = self._loaded(result, "gate_map") if heat else None
        if image is None or (heat and heat_map is None):
            return None, "loading the picture…", ""
        n = len(result.boxes)
        size = f"{result.image_width}×{result.image_height} px · {n} model box{'es' if n != 1 else ''}"
        if heat:
            assert heat_map is not None
            if heat_map[0] is None:
                return None, f"{heat_map[1]} (h: back to the image)", size
            key = (result.station, result.epoch, result.seq, id(image[0]), id(heat_map[0]), "heat",
                   result.operator.verdict_id if result.operator else "")
            caption = f"{size} · gate heat map over the part (h: image)"
        else:
            if image[0] is None:
                return None, image[1], ""
            key = (result.station, result.epoch, result.seq, id(image[0]), "image",
                   result.operator.verdict_id if result.operator else "")
            caption = f"{size} · h: gate heat map"
        picture = self._pictures.get(key)
        if picture is None:
            base = heat_over(image[0], heat_map[0]) if heat and heat_map is not None and heat_map[0] else image[0]
            assert base is not None
            picture = part_picture(result, base)
            if len(self._pictures) > 128:
                self._pictures.clear()
            self._pictures[key] = picture
        return picture, "", caption

    def toggle_heat(self) -> None:
        self.heat = not self.heat
        self.say("showing the gate's heat map over the part (h: the image)" if self.heat
                 else "showing the part's image with the model's boxes (h: the heat map)")
        self.refresh_views()

    def show_run(self, view: RunView) -> None:
        """Fill the run view: last part, its picture, the shift, the filmstrip."""
        store = self.store
        now = self.clock()
        last = store.last()
        shift = summarize_shift(store, shift_start(now, self.tz, self.shifts))
        picture, problem, caption = (self.picture_for(self.as_decided(last)) if last is not None
                                     else (None, "no part yet", ""))
        flagged = store.recent_flagged(FILMSTRIP_PARTS)
        thumbs = {p.seq: self.picture_for(self.as_decided(p), heat=False)[0] for p in flagged}
        view.show(last, shift, self.tz, picture, problem, caption, self.graphics, flagged, thumbs)

    # ---- operator actions -----------------------------------------------------------------------

    def action_view(self, view: str) -> None:
        while isinstance(self.screen, DetailScreen):
            self.pop_screen()
        if isinstance(self.screen, MainScreen):
            self.screen.show_view(view)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def cycle_filter(self, which: str) -> None:
        f = self.filters
        self.filters = {"verdict": f.next_verdict, "time": f.next_window}.get(
            which, lambda: f.next_camera(self.store.cameras()))()
        self.refresh_views()

    def open_part(self, seqs: list[int], index: int, from_queue: bool) -> None:
        if seqs:
            self.push_screen(DetailScreen(seqs, index, from_queue))

    def decide_or_draw(self, seq: int, decision: str, after: Callable[[], None] | None = None) -> None:
        """Decide `seq`; for `defect_wrong_box` first let the operator draw the right box. `after`
        runs once the decision is queued (not when it was cancelled or failed)."""
        part = self.store.get(seq)
        if part is None:
            return
        if decision not in DECISIONS_WITH_BOXES:
            if self.decide(seq, decision) and after is not None:  # type: ignore[arg-type]
                after()
            return
        if self.source.read_only:
            self.say("read-only: this dashboard reads a journal; decisions need --connect", "warning")
            return
        picture, problem, _ = self.picture_for(part.result, heat=False)
        if picture is None:
            self.say(f"{self.part_name(seq)}: cannot draw a box: {problem}", "warning")
            return

        def drawn(boxes: list[Box] | None) -> None:
            if boxes is None:
                self.say(f"{self.part_name(seq)}: box not drawn; nothing decided")
            elif self.decide(seq, decision, boxes=boxes) and after is not None:  # type: ignore[arg-type]
                after()

        self.push_screen(BoxEditor(part.result, picture), drawn)

    def decide(self, seq: int, decision: OperatorDecision, note: str | None = None,
               boxes: Sequence[Box] = ()) -> bool:
        """Record the operator's decision on `seq` (`boxes`: their own, in image pixels); True when
        it was queued for the station."""
        part = self.store.get(seq)
        if part is None:
            return False
        if self.source.read_only:
            self.say("read-only: this dashboard reads a journal; decisions need --connect", "warning")
            return False
        note = self.notes.get(seq, "") if note is None else note
        try:
            verdict = OperatorVerdict(
                station=part.result.station, seq=seq, decision=decision, operator=self.operator, note=note,
                at=datetime.fromtimestamp(self.clock(), UTC), verdict_id=uuid.uuid4().hex,
                part_id=part.result.part_id, epoch=part.result.epoch, boxes=list(boxes))
        except ValueError as exc:  # pydantic's ValidationError: names the field
            self.say(f"✗ {self.part_name(seq)}: not recorded: {exc}", "error")
            return False
        try:
            self.source.send(verdict)
        except (OutboxError, ReadOnlySource, OSError) as exc:
            self.say(f"✗ {self.part_name(seq)}: not recorded: {exc}", "error")
            return False
        self.notes.pop(seq, None)
        self._mine.add(verdict.verdict_id)
        self.store.set_local(verdict, "queued")
        where = "sending to the station" if self.connected else "queued here until the station is reachable"
        self.say(f"… {self.part_name(seq)}: {decision_label(verdict)} · {self.operator} — {where}")
        self.refresh_views()
        return True

    def ask_note(self, seq: int) -> None:
        part = self.store.get(seq)
        if part is None:
            return
        if self.source.read_only:
            self.say("read-only: this dashboard reads a journal; notes need --connect", "warning")
            return
        decided = part.decision
        mine = decided is not None and decided.operator == self.operator
        current = self.notes.get(seq) or (decided.note if mine and decided is not None else "")

        def done(note: str | None) -> None:
            if note is None:
                return
            d = self.store.get(seq)
            decision = d.decision if d is not None else None
            if decision is not None and decision.operator == self.operator:
                # own decision: the same again (its boxes too), with the note
                self.decide(seq, decision.decision, note, boxes=decision.boxes)
            else:
                self.notes[seq] = note
                self.say(f"note kept for {self.part_name(seq)}: it goes with your decision (d b f u s)")
                self.refresh_views()

        self.push_screen(NoteScreen(seq, current, self.part_name(seq)), done)
