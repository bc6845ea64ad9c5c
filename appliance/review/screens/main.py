"""The main screen: the run view, the review queue, the live feed and station status, switched
with 1 / 2 / 3 / 4."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, Footer

from ..widgets import Banner, FilterBar, MessageLine, PartsTable, StatusView, TopBar
from ..widgets.run_view import Filmstrip, RunView

if TYPE_CHECKING:
    from ..app import ReviewApp

FEED_LIMIT = 500  # rows the feed shows (newest first); the queue shows every part awaiting review
LISTS = ("feed", "queue")


class MainScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "decide('confirmed_defect')", "Defect"),
        Binding("b", "decide('defect_wrong_box')", "Box wrong"),
        Binding("f", "decide('false_alarm')", "False alarm"),
        Binding("u", "decide('unsure')", "Unsure"),
        Binding("s", "decide('skip')", "Skip"),
        Binding("n", "note", "Note", show=False),
        Binding("h", "heat", "Heat map", show=False),
        Binding("v", "filter('verdict')", "Verdict filter", show=False),
        Binding("c", "filter('camera')", "Camera filter", show=False),
        Binding("t", "filter('time')", "Time filter", show=False),
    ]

    app: ReviewApp

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        yield Banner(id="banner")
        yield FilterBar(id="filters")
        with ContentSwitcher(initial="run", id="views"):
            yield RunView(id="run")
            yield PartsTable(id="feed", newest_first=True)
            yield PartsTable(id="queue", newest_first=False)
            yield StatusView(id="status")
        yield MessageLine(id="message")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(Filmstrip).focus()
        self.refresh_from_app()
        self.app.start_source()

    def on_screen_resume(self) -> None:
        self.refresh_from_app()

    @property
    def view(self) -> str:
        return self.query_one("#views", ContentSwitcher).current or "run"

    def show_view(self, view: str) -> None:
        self.query_one("#views", ContentSwitcher).current = view
        if view in LISTS:
            self.query_one(f"#{view}", PartsTable).focus()
        elif view == "run":
            self.query_one(Filmstrip).focus()
        else:
            self.query_one("#status", StatusView).focus()
        self.refresh_from_app()
        self.refresh_bindings()

    def table(self) -> PartsTable | None:
        return self.query_one(f"#{self.view}", PartsTable) if self.view in LISTS else None

    def current_seq(self) -> int | None:
        """The part the decision keys act on: the list's cursor, or the filmstrip's pick."""
        if self.view == "run":
            return self.query_one(Filmstrip).current_seq
        table = self.table()
        return table.current_seq if table is not None else None

    def select(self, seq: int) -> None:
        """Put the cursor on `seq` (a refused verdict: the part comes back into view)."""
        table = self.table()
        if table is not None and seq in table.seqs:
            table.move_cursor(row=table.seqs.index(seq), animate=False, scroll=True)
        elif self.view == "run":
            strip = self.query_one(Filmstrip)
            seqs = [p.seq for p in strip.parts]
            if seq in seqs:
                strip.selected = seqs.index(seq)
                strip.refresh()

    def refresh_from_app(self) -> None:
        app, store = self.app, self.app.store
        now = app.clock()
        app.update_bars(self)
        view = self.view
        bar = self.query_one("#filters", FilterBar)
        if view == "status":
            bar.display = False
            self.query_one("#status", StatusView).show(store.status if not app.source.read_only else None, store,
                                                       app.tz, app.offline_label())
            return
        if view == "run":
            bar.display = False
            app.show_run(self.query_one(RunView))
            return
        bar.display = True
        if view == "feed":
            rows = store.feed(app.filters, now)
            bar.show(app.filters.describe(), min(len(rows), FEED_LIMIT), len(store), "parts")
            self.query_one("#feed", PartsTable).show_parts(rows[:FEED_LIMIT], app.tz, now)
        else:
            rows = store.queue(app.filters, now)
            bar.show(app.filters.describe(), len(rows), store.awaiting_count(), "awaiting review")
            self.query_one("#queue", PartsTable).show_parts(rows, app.tz, now)

    # ---- actions --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.view == "status" and action in ("decide", "note", "filter", "heat"):
            return False
        if self.view == "run" and action == "filter":
            return False
        return not (action == "heat" and self.view != "run")

    def action_decide(self, decision: str) -> None:
        seq = self.current_seq()
        if seq is not None:
            self.app.decide_or_draw(seq, decision)

    def action_note(self) -> None:
        seq = self.current_seq()
        if seq is not None:
            self.app.ask_note(seq)

    def action_heat(self) -> None:
        self.app.toggle_heat()

    def action_filter(self, which: str) -> None:
        self.app.cycle_filter(which)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        table = event.data_table
        if isinstance(table, PartsTable) and table.seqs:
            self.app.open_part(table.seqs, table.cursor_row, from_queue=table.id == "queue")

    def on_filmstrip_opened(self, event: Filmstrip.Opened) -> None:
        self.app.open_part(event.seqs, event.index, from_queue=False)
