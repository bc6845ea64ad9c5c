"""The main screen: live feed, review queue and station status, switched with 1 / 2 / 3."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, Footer

from ..widgets import Banner, FilterBar, MessageLine, PartsTable, StatusView, TopBar

if TYPE_CHECKING:
    from ..app import ReviewApp

FEED_LIMIT = 500  # rows the feed shows (newest first); the queue shows every part awaiting review


class MainScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "decide('confirmed_defect')", "Defect"),
        Binding("f", "decide('false_alarm')", "False alarm"),
        Binding("s", "decide('skip')", "Skip"),
        Binding("n", "note", "Note"),
        Binding("v", "filter('verdict')", "Verdict filter", show=False),
        Binding("c", "filter('camera')", "Camera filter", show=False),
        Binding("t", "filter('time')", "Time filter", show=False),
    ]

    app: ReviewApp

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        yield Banner(id="banner")
        yield FilterBar(id="filters")
        with ContentSwitcher(initial="feed", id="views"):
            yield PartsTable(id="feed", newest_first=True)
            yield PartsTable(id="queue", newest_first=False)
            yield StatusView(id="status")
        yield MessageLine(id="message")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#feed", PartsTable).focus()
        self.refresh_from_app()
        self.app.start_source()

    def on_screen_resume(self) -> None:
        self.refresh_from_app()

    @property
    def view(self) -> str:
        return self.query_one("#views", ContentSwitcher).current or "feed"

    def show_view(self, view: str) -> None:
        self.query_one("#views", ContentSwitcher).current = view
        if view in ("feed", "queue"):
            self.query_one(f"#{view}", PartsTable).focus()
        else:
            self.query_one("#status", StatusView).focus()
        self.refresh_from_app()
        self.refresh_bindings()

    def table(self) -> PartsTable | None:
        return self.query_one(f"#{self.view}", PartsTable) if self.view in ("feed", "queue") else None

    def refresh_from_app(self) -> None:
        app, store = self.app, self.app.store
        now = app.clock()
        app.update_bars(self)
        view = self.view
        if view == "status":
            self.query_one("#filters", FilterBar).display = False
            self.query_one("#status", StatusView).show(store.status if not app.source.read_only else None, store,
                                                       app.tz, app.offline_label())
            return
        bar = self.query_one("#filters", FilterBar)
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
        return not (action in ("decide", "note", "filter") and self.view == "status")

    def action_decide(self, decision: str) -> None:
        table = self.table()
        if table is not None and table.current_seq is not None:
            self.app.decide(table.current_seq, decision)  # type: ignore[arg-type]

    def action_note(self) -> None:
        table = self.table()
        if table is not None and table.current_seq is not None:
            self.app.ask_note(table.current_seq)

    def action_filter(self, which: str) -> None:
        self.app.cycle_filter(which)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        table = event.data_table
        if isinstance(table, PartsTable) and table.seqs:
            self.app.open_part(table.seqs, table.cursor_row, from_queue=table.id == "queue")
