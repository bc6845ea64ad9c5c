"""How values read on the dashboard: times, verdicts, decisions, gate scores, latencies, the
model's reasoning — one place, all views."""

from __future__ import annotations

from datetime import datetime, tzinfo

from rich.text import Text

from adfm.geometry import ModelGrid, clip_boxes
from adfm.protocol import box_spans
from adfm.schema import InspectionResult, OperatorVerdict

from .store import DECISION_LABELS, Part

VERDICT_STYLES = {"fail": "bold white on red", "review": "bold black on yellow", "pass": "green"}
DECISION_STYLES = {"confirmed_defect": "bold red", "defect_wrong_box": "bold red", "false_alarm": "bold green",
                   "unsure": "bold yellow", "skip": "dim"}

#: What each latency stage measures, in words an operator can use (status view, part detail).
STAGE_LABELS = {
    "capture": "frame wait: camera → picked up",
    "journal": "journal write",
    "journal_wait": "journal wait",
    "gate": "gate",
    "resize": "resize for the model",
    "vlm": "VLM call (with retry)",
    "model": "model generation",
    "parse": "answer parsing",
    "complete": "journal result",
    "publish": "publish",
    "total": "inspection: picked up → result",
    "trigger_to_frame": "trigger → frame",
    "trigger_to_decision": "trigger → decision",
}


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


def fmt_score(value: float) -> str:
    """A gate score in three significant figures or so: 0.53, 53.0, 153."""
    a = abs(value)
    return f"{value:.2f}" if a < 10 else (f"{value:.1f}" if a < 100 else f"{value:.0f}")


def gate_text(result: InspectionResult) -> Text:
    """`score / threshold`, bold yellow when the score reached the threshold (suspicious); the
    score alone for results made before thresholds were recorded, `—` without a gate."""
    s, thr = result.gate_score, result.gate_threshold
    if s is None:
        return Text("—", style="dim")
    if thr is None:
        return Text(fmt_score(s))
    return Text(f"{fmt_score(s)} / {fmt_score(thr)}", style="bold yellow" if s >= thr else "")


def gate_words(result: InspectionResult) -> str:
    """The gate's word on a part, for the detail and the run view."""
    s, thr = result.gate_score, result.gate_threshold
    if s is None:
        return "gate: not scored"
    if thr is None:
        return f"gate score {fmt_score(s)}"
    word = "suspicious → sent to the model" if s >= thr else "below → passed by the gate"
    return f"gate {fmt_score(s)} / threshold {fmt_score(thr)}: {word}"


def decision_ms(result: InspectionResult) -> float | None:
    """How long the part waited for its decision: from the trigger on a line, from the camera's
    frame in free-run (the frame's wait for the pipeline plus the inspection)."""
    lat = result.latency_ms
    if "trigger_to_decision" in lat:
        return lat["trigger_to_decision"]
    if "total" in lat:
        return lat.get("capture", 0.0) + lat["total"]
    return None


def fmt_ms(result: InspectionResult) -> str:
    """The parts table's `ms` column: `decision_ms`."""
    ms = decision_ms(result)
    return "—" if ms is None else f"{ms:.0f}"


def latency_words(result: InspectionResult) -> str:
    """The decision time and what it is made of, e.g. `frame → decision 1009 ms = frame wait 797
    + inspection 212 (gate 5 · model 180)`."""
    lat = result.latency_ms
    stages = [s for s in ("gate", "vlm", "model") if s in lat]
    inner = " · ".join(f"{STAGE_LABELS[s].split(' (')[0]} {lat[s]:.0f}" for s in stages)
    inner = f" ({inner})" if inner else ""
    if "trigger_to_decision" in lat:
        deadline = f" of {result.deadline_ms:.0f} ms allowed" if result.deadline_ms else ""
        frame = f" · trigger → frame {lat['trigger_to_frame']:.0f}" if "trigger_to_frame" in lat else ""
        return f"trigger → decision {lat['trigger_to_decision']:.0f} ms{deadline}{frame}{inner}"
    if "total" in lat:
        wait = lat.get("capture", 0.0)
        return (f"frame → decision {wait + lat['total']:.0f} ms = frame wait {wait:.0f} + inspection "
                f"{lat['total']:.0f}{inner}")
    return "no timings recorded"


def verdict_text(verdict: str) -> Text:
    return Text(f" {verdict.upper():<6}", style=VERDICT_STYLES.get(verdict, ""))


def decision_label(verdict: OperatorVerdict) -> str:
    return DECISION_LABELS.get(verdict.decision, verdict.decision)


def decision_text(part: Part) -> Text:
    """The operator column: awaiting, queued here (…), journaled (✓ with who), or refused by the
    station (✗)."""
    d = part.decision
    if d is None:
        if part.local is not None and part.local.state == "rejected":
            return Text("✗ refused (open the part)", style="bold red")
        return Text("● awaiting", style="bold yellow") if part.flagged else Text("")
    label = decision_label(d)
    if part.decision_pending:
        return Text(f"… {label} · {d.operator}", style="italic cyan")
    return Text(f"✓ {label} · {d.operator}", style=DECISION_STYLES.get(d.decision, "bold"))


def model_answer(result: InspectionResult) -> str:
    """The model's yes/no in words."""
    if result.decision is None:
        return "no answer"
    return "anomalous" if result.decision else "normal"


def result_grid(result: InspectionResult) -> ModelGrid | None:
    """The model grid the VLM saw, None when the result does not record it."""
    r = result
    if min(r.image_width, r.image_height, r.grid_width, r.grid_height) <= 0:
        return None
    return ModelGrid(r.image_width, r.image_height, r.grid_width, r.grid_height)


def readable_reasoning(text: str, result: InspectionResult) -> Text:
    """The model's think/rethink text with every box it wrote (model-grid pixels, as JSON)
    rewritten in image pixels, the way the Boxes list and the picture show them."""
    out = Text()
    grid = result_grid(result)
    pos = 0
    for start, end, found in box_spans(text):
        out.append(text[pos:start])
        for i, (coords, label) in enumerate(found):
            if i:
                out.append(", ")
            name = label or "region"
            if grid is None:
                out.append(f"‹{name}: box on the model grid, size not recorded›", style="dim")
                continue
            x1, y1, x2, y2 = clip_boxes(grid.to_original([coords]), grid.orig_width, grid.orig_height)[0]
            out.append(f"‹{name} [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}] px›", style="bold")
            if coords[2] < coords[0] or coords[3] < coords[1]:
                out.append(" (written with its corners swapped)", style="yellow")
        pos = end
    out.append(text[pos:])
    return out
