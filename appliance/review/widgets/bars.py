"""One-line bars: the top bar (station, operator, link, views), the disconnection banner, the
filter bar and the message line (acknowledgements and refusals)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

VIEWS = (("run", "1", "Run"), ("queue", "2", "Queue"), ("feed", "3", "Feed"), ("status", "4", "Status"))


class TopBar(Static):
    """`1 Run │ 2 Queue (n) │ 3 Feed │ 4 Status ║ station · operator · ● link`: the views first, so that
    they stay put; a long station or operator name is cut at the right edge."""

    def show(self, *, station: str, operator: str, link: str, link_ok: bool | None, view: str,
             awaiting: int) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        for i, (name, key, label) in enumerate(VIEWS):
            if i:
                t.append("│")
            text = f" {key} {label}" + (f" ({awaiting})" if name == "queue" else "") + " "
            t.append(text, style="reverse bold" if name == view else "")
        t.append(f"║ {station or '?'} · {operator} · ")
        t.append(f"{'●' if link_ok else '○'} {link}",
                 style="bold green" if link_ok else ("bold red" if link_ok is False else "yellow"))
        self.update(t)


class Banner(Static):
    """Shown only while the station is unreachable (or the journal unreadable): what, since when,
    what is queued — and on a second line the reason, cut to the width."""

    def show(self, text: str | None) -> None:
        self.display = bool(text)
        if text:
            self.update(Text(text, no_wrap=True, overflow="ellipsis"))


class FilterBar(Static):
    def show(self, filters: dict[str, str], shown: int, total: int, what: str) -> None:
        t = Text(" ")
        for key, name in (("v", "verdict"), ("c", "camera"), ("t", "time")):
            t.append(key, style="bold reverse")
            t.append(f" {name}: ")
            value = filters[name]
            t.append(value, style="bold" if value != "all" else "")
            t.append("  ")
        t.append(f"│ {shown} of {total} {what}" if shown != total else f"│ {total} {what}")
        self.update(t)


class MessageLine(Static):
    """Acknowledgements on one line; a warning or a refusal in full, wrapped over as many lines
    as it needs (up to the CSS's max-height), never cut at the terminal's width."""

    def say(self, text: str, severity: str = "information") -> None:
        style = {"warning": "bold yellow", "error": "bold red"}.get(severity, "")
        self.update(Text(f" {text}", style=style, no_wrap=severity == "information", overflow="ellipsis"))
