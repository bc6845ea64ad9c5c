"""How values read on the dashboard: times, verdicts, decisions, scores — one place, all views."""

from __future__ import annotations

from datetime import datetime, tzinfo

from rich.text import Text

from adfm.schema import InspectionResult, OperatorVerdict

from .store import DECISION_LABELS, Part

VERDICT_STYLES = {"fail": "bold white on red", "review": "bold black on yellow", "pass": "green"}


def local_time(dt: datetime, tz: tzinfo | None) -> datetime:
    return dt.astimezone(tz)


def fmt_time(dt: datetime, tz: tzinfo | None, now: float | None = None) -> str:
    """HH:MM:SS for today's parts, MM-DD HH:MM for older ones (in the dashboard's time zone)."""
    t = local_time(dt, tz)
    if now is not None and t.date() != datetime.fromtimestamp(now, t.tzinfo).date():
        return t.strftime("%m-%d %H:%M")
    return t.strftime("%H:%M:%S")


def fmt_datetime(dt: datetime, tz: tzinfo | None) -> str:
    return local_time(dt, tz).strftime("%Y-%m-%d %H:%M:%S")


def fmt_num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_ms(result: InspectionResult) -> str:
    total = result.latency_ms.get("total")
    return "—" if total is None else f"{total:.0f}"


def verdict_text(verdict: str) -> Text:
    return Text(f" {verdict.upper():<6} ", style=VERDICT_STYLES.get(verdict, ""))


def decision_label(verdict: OperatorVerdict) -> str:
    return DECISION_LABELS.get(verdict.decision, verdict.decision)


def decision_text(part: Part, width: int = 15) -> Text:
    """The operator column: awaiting, queued here (…), journaled (✓, by whom when it fits), or
    refused by the station (✗)."""
    d = part.decision
    if d is None:
        if part.local is not None and part.local.state == "rejected":
            return Text("✗ refused", style="bold red")
        return Text("● awaiting", style="bold yellow") if part.flagged else Text("")
    label = decision_label(d)
    if part.decision_pending:
        return Text(f"… {label}", style="italic cyan")
    who = f" {d.operator}" if len(label) + len(d.operator) + 3 <= width else ""
    return Text(f"✓ {label}{who}", style="bold red" if d.decision == "confirmed_defect" else "bold green")


def model_answer(result: InspectionResult) -> str:
    """The model's yes/no in words."""
    if result.decision is None:
        return "no answer"
    return "anomalous" if result.decision else "normal"
