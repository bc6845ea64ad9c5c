"""The detail text of a part: what the line decided and why (gate score against its threshold,
the model's answer, how long the decision took), what the operator decided, the boxes in their
colours (image pixels), and the model's think / rethink / answer with its boxes rewritten in image
pixels — what an engineer needs to see why."""

from __future__ import annotations

from datetime import tzinfo

from rich.text import Text

from ..format import (
    decision_label,
    fmt_datetime,
    gate_words,
    latency_words,
    model_answer,
    readable_reasoning,
    verdict_text,
)
from ..render import OPERATOR_COLOR_HEX, box_color_hex
from ..store import Part


def _heading(t: Text, title: str) -> None:
    t.append(f"\n{title}\n", style="bold underline")


def part_details(part: Part, tz: tzinfo | None, draft_note: str = "") -> Text:
    r = part.result
    t = Text()
    t.append_text(verdict_text(r.verdict))
    t.append(f" {r.part_id}", style="bold")
    t.append(f" · seq {r.seq} · {r.camera}" + (f" · {part.product}" if part.product else "") + "\n")
    t.append(f"{fmt_datetime(r.captured_at, tz)} · frame {r.frame_number}"
             + (f" · decided by the {r.decision_source.replace('_', ' ')}" if r.decision_source else "") + "\n",
             style="dim")
    t.append(gate_words(r) + "\n")
    if r.decision_source != "gate" and (r.decision is not None or r.raw_response or r.attempts):
        t.append(f"model: {model_answer(r)}" + (f" · score {r.score:.2f}" if r.score is not None else "") + "\n")
    t.append(latency_words(r) + "\n", style="dim")
    if r.reason:
        t.append(f"reason: {r.reason}\n", style="dim")

    _heading(t, "Operator")
    d = part.decision
    if d is None:
        t.append("awaiting review\n" if part.flagged else "not reviewed\n", style="bold yellow" if part.flagged else "")
    else:
        state = "queued here, not yet at the station" if part.decision_pending else "journaled"
        t.append(f"{decision_label(d)}", style="bold")
        t.append(f" · {d.operator} at {fmt_datetime(d.at, tz)} ({state})\n")
        if d.note:
            t.append(f"note: {d.note}\n")
    if part.local is not None and part.local.state == "rejected":
        t.append(f"✗ the station refused {decision_label(part.local.verdict)} · {part.local.verdict.operator}: "
                 f"{part.local.detail}\n", style="bold red")
        t.append("decide again (d b f u s) once the cause is fixed\n", style="red")
    if draft_note:
        t.append(f"note to send: {draft_note}\n", style="cyan")

    _heading(t, f"Boxes in image pixels ({r.image_width}×{r.image_height})")
    for i, b in enumerate(r.boxes):
        t.append("■ ", style=f"bold {box_color_hex(i)}")
        t.append(f"{b.label or 'region'} [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}]\n")
    if not r.boxes:
        t.append("none from the model\n", style="dim")
    if d is not None:
        for b in d.boxes:
            t.append("■ ", style=f"bold {OPERATOR_COLOR_HEX}")
            t.append(f"{d.operator}'s box [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}]\n")

    for title, body in (("Think", r.think), ("Rethink", r.rethink), ("Answer", r.answer)):
        _heading(t, title)
        t.append_text(readable_reasoning(body.strip(), r) if body.strip() else Text("—"))
        t.append("\n")
    if not r.format_ok and r.raw_response:
        _heading(t, "Raw answer (format not held)")
        raw = readable_reasoning(r.raw_response.strip(), r)
        raw.stylize("dim")
        t.append_text(raw)
        t.append("\n")
    if r.problems:
        _heading(t, "Problems")
        for p in r.problems:
            t.append(f"- {p}\n", style="yellow")
    t.append(f"\n{r.model_id or 'model ?'} · {r.prompt_version or 'prompt ?'}\n", style="dim")
    return t
