"""Small inline SVG charts: a bar chart and an area chart, with grid lines and axis labels.

Plain SVG, no script: hovering a bar or a point shows its `<title>` in any browser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape

LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 30  # plot margins inside the viewBox


def nice_ticks(largest: float, count: int = 4) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 x 10^n) up to at least `largest`."""
    if largest <= 0:
        return [0.0, 1.0]
    raw = largest / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < largest:
        ticks.append(ticks[-1] + step)
    return ticks


def _frame(
    width: int, height: int, ticks: list[float], fmt: Callable[[float], str], label: str
) -> list[str]:
    """The svg element, horizontal grid lines and y labels."""
    plot_h = height - TOP - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    top = ticks[-1]
    for t in ticks:
        y = TOP + plot_h - plot_h * t / top
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{width - RIGHT}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="ylabel" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(t))}</text>"
        )
    return parts


def bar_chart(
    bars: Sequence[tuple[str, float, str]],
    fmt: Callable[[float], str],
    label: str,
    width: int = 1040,
    height: int = 240,
    value_labels: Callable[[float], str] | None = None,
) -> str:
    """Bars of (x label, value, hover text), left to right; `value_labels` writes each bar's
    value above it."""
    ticks = nice_ticks(max((v for _, v, _ in bars), default=0))
    parts = _frame(width, height, ticks, fmt, label)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    slot = plot_w / max(len(bars), 1)
    gap = min(slot * 0.25, 6)
    every = max(1, math.ceil(len(bars) / 10))  # at most ~10 x labels
    for i, (xlabel, value, hover) in enumerate(bars):
        h = max(plot_h * value / ticks[-1], 2.0) if value > 0 else 0.0  # a small value still shows
        x = LEFT + i * slot + gap / 2
        y = TOP + plot_h - h
        if h:
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(slot - gap, 1):.1f}" '
                f'height="{h:.1f}" rx="2"><title>{escape(hover)}</title></rect>'
            )
        if i % every == 0:
            parts.append(
                f'<text class="xlabel" x="{x + (slot - gap) / 2:.1f}" y="{height - 10}" '
                f'text-anchor="middle">{escape(xlabel)}</text>'
            )
        if value_labels is not None and value > 0:
            parts.append(
                f'<text class="vlabel" x="{x + (slot - gap) / 2:.1f}" y="{y - 4:.1f}" '
                f'text-anchor="middle">{escape(value_labels(value))}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{width - RIGHT}" '
        f'y2="{TOP + plot_h}"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def area_chart(
    points: Sequence[tuple[int, float]],
    fmt: Callable[[float], str],
    label: str,
    width: int = 1040,
    height: int = 240,
) -> str:
    """A step-free line over time, filled below: points are (time ns, value), oldest first.
    One drawing from frame to last label, kept whole so its coordinates read in one place."""
    ticks = nice_ticks(max((v for _, v in points), default=0))
    parts = _frame(width, height, ticks, fmt, label)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    t0 = points[0][0] if points else 0
    t1 = points[-1][0] if points else 1
    span = max(t1 - t0, 1)

    def xy(t: int, v: float) -> tuple[float, float]:
        x = LEFT + (plot_w * (t - t0) / span if len(points) > 1 else plot_w / 2)
        return x, TOP + plot_h - plot_h * v / ticks[-1]

    coords = [xy(t, v) for t, v in points]
    base = TOP + plot_h
    if coords:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(
            '<defs><linearGradient id="dg-area-fill" x1="0" y1="0" x2="0" y2="1">'
            '<stop offset="0" stop-color="#3b6fd8" stop-opacity="0.35"/>'
            '<stop offset="1" stop-color="#3b6fd8" stop-opacity="0.03"/></linearGradient></defs>'
        )
        parts.append(
            f'<polygon class="area" fill="url(#dg-area-fill)" '
            f'points="{coords[0][0]:.1f},{base} {line} {coords[-1][0]:.1f},{base}"/>'
        )
        parts.append(f'<polyline class="line" points="{line}"/>')
        for (t, v), (x, y) in zip(points, coords, strict=True):
            when = datetime.fromtimestamp(t / 1e9).astimezone().strftime("%Y-%m-%d %H:%M")
            parts.append(
                f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                f"<title>{escape(when)}: {escape(fmt(v))}</title></circle>"
            )
        for k in range(5 if len(points) > 1 else 1):
            t = t0 + span * k // 4 if len(points) > 1 else t0
            x, _ = xy(t, 0)
            anchor = "start" if k == 0 and len(points) > 1 else "end" if k == 4 else "middle"
            short = "%H:%M" if span < 2 * 86400 * 10**9 else "%b %d"
            when = datetime.fromtimestamp(t / 1e9).astimezone().strftime(short)
            parts.append(
                f'<text class="xlabel" x="{x:.1f}" y="{height - 10}" text-anchor="{anchor}">'
                f"{escape(when)}</text>"
            )
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{width - RIGHT}" y2="{base}"/>')
    parts.append("</svg>")
    return "".join(parts)
