"""A small SVG chart per app, drawn on the server: no charting library, no script.

One bar per operation (deploy, switch, rollback), oldest on the left, its height the
operation's duration; a failed one is drawn in red. When history entries carry the failed
requests the router measured during the switch, a second strip shows them per operation
(a bar when some failed, a "0" when the measurement was zero, nothing when none was
recorded). Colours come from classes in ui.css, so the CSP needs no inline style.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH = 480  # small: a phone scales it down less, so the labels stay readable
PLOT_TOP = 12
PLOT_HEIGHT = 120
LEFT = 44
RIGHT = 8
STRIP_HEIGHT = 44  # the failed-requests strip, below the durations


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (axis tops)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def seconds_label(value: float) -> str:
    if value >= 120:
        return f"{value / 60:g} min"
    return f"{value:g} s"


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(stamp)) + " UTC" if stamp else "?"


def durations_svg(points: Sequence[dict[str, Any]], *, title: str) -> Markup:
    """The chart for chart_points() of one app; an empty-state text when there are none."""
    if not points:
        return Markup('<p class="muted">no deploys, switches or rollbacks recorded yet</p>')
    measured = any(p.get("failed_requests") is not None for p in points)
    height = PLOT_TOP + PLOT_HEIGHT + 22 + (STRIP_HEIGHT + 26 if measured else 0)
    top = nice_ceiling(max(float(p["seconds"]) for p in points))
    plot_w = WIDTH - LEFT - RIGHT
    slot_w = plot_w / len(points)
    bar_w = max(2.0, min(28.0, slot_w * 0.7))
    base = PLOT_TOP + PLOT_HEIGHT
    out: list[str] = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):  # gridlines and labels: 0, half, top
        y = base - PLOT_HEIGHT * fraction
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{escape(seconds_label(top * fraction))}</text>")
    for i, p in enumerate(points):
        seconds = float(p["seconds"])
        h = max(1.0, PLOT_HEIGHT * seconds / top)
        x = LEFT + slot_w * i + (slot_w - bar_w) / 2
        failed = p.get("result") != "ok"
        tip = (f"{p['action']} {p.get('label') or ''} · {p.get('result')} · "
               f"{seconds:.2f} s · {_when(p.get('at'))}")
        if p.get("failed_requests") is not None:
            tip += f" · {p['failed_requests']} failed requests"
        out.append(f'<rect class="bar {escape(p["action"])}{" failed" if failed else ""}" '
                   f'x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                   f"<title>{escape(tip)}</title></rect>")
    out.append(f'<text class="axis" x="{LEFT}" y="{base + 16}">'
               f"{escape(_when(points[0].get('at')))}</text>")
    if len(points) > 1:
        out.append(f'<text class="axis" x="{WIDTH - RIGHT}" y="{base + 16}" text-anchor="end">'
                   f"{escape(_when(points[-1].get('at')))}</text>")
    if measured:
        out.extend(_failed_strip(points, base + 40, slot_w, bar_w))
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every value above went through escape()


def _failed_strip(points: Sequence[dict[str, Any]], top_y: float, slot_w: float,
                  bar_w: float) -> list[str]:
    counts = [p.get("failed_requests") for p in points]
    peak = nice_ceiling(max([c for c in counts if c is not None] + [1]))
    base = top_y + STRIP_HEIGHT
    out = [f'<text class="axis" x="{LEFT - 6}" y="{top_y + 8:.1f}" text-anchor="end">'
           f"{peak:g}</text>",
           f'<text class="axis" x="{LEFT - 6}" y="{base:.1f}" text-anchor="end">0</text>',
           f'<text class="axis strip-title" x="{LEFT}" y="{top_y - 4:.1f}">failed requests '
           f"during the switch</text>",
           f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base:.1f}" '
           f'y2="{base:.1f}"/>']
    for i, count in enumerate(counts):
        x = LEFT + slot_w * i + (slot_w - bar_w) / 2
        if count is None:
            continue
        if count == 0:
            out.append(f'<text class="zero" x="{x + bar_w / 2:.1f}" y="{base - 3:.1f}" '
                       f'text-anchor="middle">0<title>0 failed requests</title></text>')
            continue
        h = max(2.0, STRIP_HEIGHT * count / peak)
        out.append(f'<rect class="lost" x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" '
                   f'height="{h:.1f}"><title>{count} failed requests</title></rect>')
    return out


def phasebar_svg(phases: Sequence[dict[str, Any]]) -> Markup:
    """One operation's phases as a stacked bar, widths in proportion to their durations (an
    SVG, because the CSP forbids the inline style a width in percent would need)."""
    out = ['<svg class="phasebar" viewBox="0 0 100 6" preserveAspectRatio="none" '
           'aria-hidden="true" xmlns="http://www.w3.org/2000/svg">']
    x = 0.0
    for i, phase in enumerate(phases):
        width = 100.0 * float(phase["share"])
        out.append(f'<rect class="p{i % 6}" x="{x:.2f}" y="0" width="{width:.2f}" height="6">'
                   f'<title>{escape(phase["name"])} {float(phase["seconds"]):.3f} s</title>'
                   f"</rect>")
        x += width
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - names escaped, the rest are numbers
