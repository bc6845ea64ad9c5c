"""Charts as inline SVG, drawn on the server: no script library to ship, pin or load, and a page
that is complete when it arrives (the browser test reads the same markup a person sees)."""

from __future__ import annotations

from datetime import datetime
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def line_chart(series: dict[str, list[tuple[datetime, float]]], *, width: int = 760, height: int = 240,
               y_label: str = "", y_max: float | None = None) -> str:
    """One polyline per series (x: time, y: value); a legend under the plot."""
    points = [p for s in series.values() for p in s]
    if not points:
        return '<p class="empty">no parts in this range</p>'
    left, right, top, bottom = 48, 12, 10, 28
    t0 = min(p[0] for p in points).timestamp()
    t1 = max(p[0] for p in points).timestamp()
    span = max(t1 - t0, 1.0)
    ymax = y_max if y_max is not None else max(max(p[1] for p in points), 1e-9)
    pw, ph = width - left - right, height - top - bottom

    def xy(t: datetime, v: float) -> tuple[float, float]:
        return left + pw * (t.timestamp() - t0) / span, top + ph * (1 - min(v, ymax) / ymax)

    out = [f'<svg class="chart" viewBox="0 0 {width} {height + 18 * ((len(series) + 3) // 4)}" '
           f'role="img" aria-label="{escape(y_label)}">']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = top + ph * (1 - frac)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{ymax * frac:.3g}</text>')
    for label, at in ((min(p[0] for p in points), left), (max(p[0] for p in points), width - right)):
        out.append(f'<text x="{at}" y="{height - 8}" text-anchor="middle">{label:%Y-%m-%d %H:%M}</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, v) for t, v in sorted(pts)))
        out.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{color}" '
                   f'stroke-width="2" points="{coords}"/>')
        lx, ly = 10 + 185 * (i % 4), height + 14 + 18 * (i // 4)
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{lx + 14}" y="{ly}">{escape(name or "(none)")}</text>')
    out.append(f'<text x="4" y="{top + 8}" class="axis">{escape(y_label)}</text></svg>')
    return "".join(out)


def histogram(counts: list[int], *, width: int = 200, height: int = 36, mark: int | None = None) -> str:
    """Bars of a histogram scaled to its largest bin; `mark`: a bin to outline (e.g. the p95's)."""
    top = max(counts) if counts and max(counts) > 0 else 1
    w = width / max(len(counts), 1)
    bars = []
    for i, c in enumerate(counts):
        h = height * c / top
        cls = "bin mark" if i == mark else "bin"
        bars.append(f'<rect class="{cls}" x="{i * w:.1f}" y="{height - h:.1f}" width="{w - 1:.1f}" '
                    f'height="{h:.1f}"><title>{c}</title></rect>')
    return f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}">{"".join(bars)}</svg>'


def boxes_overlay(boxes: list[dict], width: int, height: int) -> str:
    """The model's boxes (original-image pixels) as an SVG drawn over the part's image."""
    w, h = max(width, 1), max(height, 1)
    size = max(w, h) * 0.045  # the label about 14 px high whatever the image's pixel size
    rects = []
    for b in boxes:
        x1, y1, x2, y2 = (float(b[k]) for k in ("x1", "y1", "x2", "y2"))
        label = escape(str(b.get("label", "")))
        rects.append(f'<rect class="box" x="{x1:g}" y="{y1:g}" width="{x2 - x1:g}" height="{y2 - y1:g}">'
                     f'<title>{label}</title></rect>'
                     f'<text class="box-label" x="{x1:g}" y="{max(y1 - size / 4, size):g}" '
                     f'font-size="{size:.3g}">{label}</text>')
    return (f'<svg class="overlay" viewBox="0 0 {w} {h}" preserveAspectRatio="none">{"".join(rects)}</svg>')
