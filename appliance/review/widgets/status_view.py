"""Station status: health, cameras, worker, throughput, latency p50/p95, verdict and decision counts.

Live, the figures are the station's own (its periodic status message). From a journal on disk
there is no live health: counts, throughput and latency percentiles are computed from the parts
loaded here, and the view says so.
"""

from __future__ import annotations

from datetime import tzinfo

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from adfm.schema import StationStatus

from ...system.health import STAGES
from ..format import STAGE_LABELS, fmt_datetime
from ..store import DECISION_LABELS, PartStore


def _counts(counts: dict[str, int], order: tuple[str, ...], labels: dict[str, str] | None = None) -> str:
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return " · ".join(f"{(labels or {}).get(k, k)} {counts[k]}" for k in keys) or "none"


def _latency_table(p50: dict[str, float], p95: dict[str, float]) -> Table:
    table = Table(title=None, box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("latency, ms")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")
    stages = [s for s in STAGES if s in p50 or s in p95] + sorted(set(p50) - set(STAGES))
    for s in stages:
        table.add_row(STAGE_LABELS.get(s, s), f"{p50.get(s, float('nan')):.0f}", f"{p95.get(s, float('nan')):.0f}")
    return table


def status_renderable(status: StationStatus | None, store: PartStore, tz: tzinfo | None,
                      offline: str = "") -> Group:
    parts: list = []
    head = Text()
    station = (status.station if status else store.station) or "?"
    head.append(f"Station {station}  ", style="bold")
    if offline:
        head.append(f"offline: {offline}\n", style="yellow")
        head.append("no live health from a journal; figures below are computed from the parts loaded here\n",
                    style="dim")
    elif status is None:
        head.append("no status received yet\n", style="yellow")
    else:
        head.append("● healthy" if status.healthy else "✖ problems",
                    style="bold green" if status.healthy else "bold white on red")
        head.append(f"   as of {fmt_datetime(status.at, tz)}\n")
        head.append(f"model {status.model_id or '?'} · last seq {status.last_seq} · "
                    f"{status.parts_per_min:.1f} parts/min · worker "
                    f"{'alive' if status.worker_alive else 'DOWN'} ({status.worker_restarts} restarts)\n")
    if offline or status is None:
        span = store.time_span()
        head.append(f"{len(store)} parts loaded (last seq {store.last_seq})"
                    + (f", {fmt_datetime(span[0], tz)} – {fmt_datetime(span[1], tz)}" if span else "") + "\n")
    parts.append(head)

    counts = Text()
    verdicts = status.verdict_counts if status is not None and not offline else store.verdict_counts()
    counts.append("Line verdicts: ", style="bold")
    counts.append(_counts(verdicts, ("pass", "fail", "review")) + "\n")
    counts.append("Operators:     ", style="bold")
    decided = store.decision_counts()
    counts.append(_counts(decided, tuple(DECISION_LABELS), DECISION_LABELS))
    counts.append(f" · awaiting {store.awaiting_count()}\n")
    parts.append(counts)

    if status is not None and not offline:
        p50, p95 = status.latency_ms_p50, status.latency_ms_p95
    else:
        p50, p95 = store.latency_percentiles(50), store.latency_percentiles(95)
        span = store.time_span()
        if span is not None:
            rate = store.parts_per_min(span[1].timestamp())
            parts.append(Text(f"throughput {rate:.1f} parts/min (the 5 min before the newest part)"))
    if p50 or p95:
        parts.append(_latency_table(p50, p95))
        parts.append(Text("a free-run part waits for its decision frame wait + inspection; a line part "
                          "trigger → decision (its deadline's clock)", style="dim"))

    if status is not None and not offline and status.cameras:
        cams = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for col, just in (("camera", "left"), ("link", "left"), ("fps", "right"), ("age s", "right"),
                          ("captured", "right"), ("dropped", "right"), ("errors", "right"), ("reconn", "right")):
            cams.add_column(col, justify=just)  # type: ignore[arg-type]
        for c in status.cameras:
            cams.add_row(
                c.camera, Text("up", style="green") if c.connected else Text("DOWN", style="bold red"),
                f"{c.fps:.1f}", "—" if c.last_frame_age_s is None else f"{c.last_frame_age_s:.1f}",
                str(c.captured), str(c.dropped), str(c.errors), str(c.reconnects),
            )
        parts.append(Text(""))
        parts.append(cams)
        errors = [f"{c.camera}: {c.last_error}" for c in status.cameras if c.last_error]
        if errors:
            parts.append(Text("\n".join(errors), style="yellow"))
    if status is not None and status.problems:
        parts.append(Text("\nProblems", style="bold red"))
        parts.append(Text("\n".join(f"- {p}" for p in status.problems), style="red"))
    return Group(*parts)


class StatusView(VerticalScroll):
    DEFAULT_CSS = """
    StatusView { padding: 0 1; }
    """

    def compose(self):
        yield Static(id="status-body")

    def show(self, status: StationStatus | None, store: PartStore, tz: tzinfo | None,
             offline: str = "") -> None:
        self.query_one("#status-body", Static).update(status_renderable(status, store, tz, offline))
