"""Charts as server-rendered SVG: no script, nothing fetched by the browser."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

Point = tuple[float, float | None]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.3g}"
    return f"{value:.2g}"


def line_chart(points: Sequence[Point], *, title: str, unit: str = "", width: int = 320,
               height: int = 120, x_label: str = "") -> Markup:
    """A line through the points with a value (gaps where None), the y range from 0 to
    the largest value labelled; an empty frame saying "no data" without any value."""
    pad_left, pad_right, pad_top, pad_bottom = 44, 8, 18, 18 if x_label else 8
    inner_w, inner_h = width - pad_left - pad_right, height - pad_top - pad_bottom
    known = [(x, y) for x, y in points if y is not None]
    head = (f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            f'<title>{escape(title)}</title>'
            f'<text x="{pad_left}" y="12" class="chart-title">{escape(title)}'
            f'{escape(" (" + unit + ")") if unit else ""}</text>'
            f'<rect x="{pad_left}" y="{pad_top}" width="{inner_w}" height="{inner_h}" class="frame"/>')
    if not known:
        return Markup(head + f'<text x="{pad_left + inner_w / 2}" y="{pad_top + inner_h / 2}" '
                      'text-anchor="middle" class="no-data">no data yet</text></svg>')
    xs = [x for x, _ in points]
    x0, x1 = min(xs), max(xs)
    top = max(y for _, y in known) or 1.0

    def at(x: float, y: float) -> str:
        sx = pad_left + (inner_w * (x - x0) / (x1 - x0) if x1 > x0 else inner_w / 2)
        sy = pad_top + inner_h - inner_h * y / top
        return f"{sx:.1f},{sy:.1f}"

    runs: list[list[str]] = [[]]
    for x, y in points:
        if y is None:
            runs.append([])
        else:
            runs[-1].append(at(x, y))
    lines = "".join(
        f'<polyline points="{" ".join(run)}" class="line"/>' if len(run) > 1
        else f'<circle cx="{run[0].split(",")[0]}" cy="{run[0].split(",")[1]}" r="2" class="dot"/>'
        for run in runs if run
    )
    axis = (f'<text x="{pad_left - 4}" y="{pad_top + 8}" text-anchor="end" class="tick">{_fmt(top)}</text>'
            f'<text x="{pad_left - 4}" y="{pad_top + inner_h}" text-anchor="end" class="tick">0</text>')
    if x_label:
        axis += (f'<text x="{pad_left}" y="{height - 4}" class="tick">{_fmt(x0)}</text>'
                 f'<text x="{pad_left + inner_w}" y="{height - 4}" text-anchor="end" class="tick">'
                 f'{escape(x_label)} {_fmt(x1)}</text>')
    return Markup(head + axis + lines + "</svg>")


def bar_chart(values: Sequence[tuple[str, float]], *, title: str, unit: str = "",
              bar_width: int = 220, bar_height: int = 18) -> Markup:
    """Horizontal bars, one per labelled value, scaled to the largest; the labels' column
    as wide as the longest label (about 6 px per 10 px character)."""
    label_w, pad_top = 12 + 6 * max((len(label) for label, _ in values), default=0), 18
    width = label_w + bar_width
    height = pad_top + bar_height * max(len(values), 1) + 4
    top = max((v for _, v in values), default=0.0) or 1.0
    bars = []
    for row, (label, value) in enumerate(values):
        y = pad_top + row * bar_height
        length = (width - label_w - 60) * value / top
        bars.append(f'<text x="{label_w - 6}" y="{y + bar_height - 5}" text-anchor="end" '
                    f'class="tick">{escape(label)}</text>'
                    f'<rect x="{label_w}" y="{y + 2}" width="{length:.1f}" height="{bar_height - 4}" '
                    f'class="bar"/><text x="{label_w + length + 4:.1f}" y="{y + bar_height - 5}" '
                    f'class="tick">{_fmt(value)}{escape(unit)}</text>')
    return Markup(
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(title)}</title><text x="0" y="12" class="chart-title">{escape(title)}</text>'
        + "".join(bars) + "</svg>")
