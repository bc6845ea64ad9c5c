"""The detail text of a part: what the line decided, what the operator decided, the boxes in their
colours, and the model's think / rethink / answer — what an engineer needs to see why."""

from __future__ import annotations

from datetime import tzinfo

from rich.text import Text

from ..format import decision_label, fmt_datetime, fmt_ms, fmt_num, model_answer, verdict_text
from ..render import box_color_hex
from ..store import Part


def _heading(t: Text, title: str) -> None:
    t.append(f"\n{title}\n", style="bold underline")


def part_details(part: Part, tz: tzinfo | None, draft_note: str = "") -> Text:
    r = part.result
    t = Text()
    t.append_text(verdict_text(r.verdict))
    t.append(f" seq {r.seq} · {r.camera}" + (f" · {part.product}" if part.product else "") + "\n")
    t.append(f"part {r.part_id} · frame {r.frame_number}\n", style="dim")
    t.append(f"{fmt_datetime(r.captured_at, tz)} · {fmt_ms(r)} ms\n")
    t.append(f"model: {model_answer(r)} · score {fmt_num(r.score)} · gate {fmt_num(r.gate_score)}\n")
    if r.reason:
        t.append(f"reason: {r.reason}\n", style="dim")

    _heading(t, "Operator")
    d = part.decision
    if d is None:
        t.append("awaiting review\n" if part.flagged else "not reviewed\n", style="bold yellow" if part.flagged else "")
    else:
        state = "queued here, not yet at the station" if part.decision_pending else "journaled"
        t.append(f"{decision_label(d)}", style="bold")
        t.append(f" by {d.operator} at {fmt_datetime(d.at, tz)} ({state})\n")
        if d.note:
            t.append(f"note: {d.note}\n")
    if part.local is not None and part.local.state == "rejected":
        t.append(f"refused by the station: {part.local.detail}\n", style="bold red")
    if draft_note:
        t.append(f"note to send: {draft_note}\n", style="cyan")

    _heading(t, f"Boxes ({len(r.boxes)})")
    for i, b in enumerate(r.boxes):
        t.append("■ ", style=f"bold {box_color_hex(i)}")
        t.append(f"{b.label or 'region'} [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}]\n")
    if not r.boxes:
        t.append("none\n", style="dim")

    for title, body in (("Think", r.think), ("Rethink", r.rethink), ("Answer", r.answer)):
        _heading(t, title)
        t.append((body.strip() or "—") + "\n")
    if not r.format_ok and r.raw_response:
        _heading(t, "Raw answer (format not held)")
        t.append(r.raw_response.strip() + "\n", style="dim")
    if r.problems:
        _heading(t, "Problems")
        for p in r.problems:
            t.append(f"- {p}\n", style="yellow")
    t.append(f"\n{r.model_id or 'model ?'} · {r.prompt_version or 'prompt ?'}\n", style="dim")
    return t
