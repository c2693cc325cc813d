"""Self-contained plots: inline SVG in one HTML page, no plotting library, no JavaScript.

`chart` draws scatter / line / step series on linear or log axes (each point carries a hover
title), `bars` a horizontal bar chart, and `page` wraps sections into an HTML document that opens
anywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from budgetlm.units import format_sci

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f")
GRAY = "#9a9a9a"
_FONT = "font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif"


@dataclass
class Series:
    """One series. mode: markers | lines | steps | lines+markers (steps: a staircase)."""

    name: str
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    mode: str = "markers"
    hollow: bool = False
    labels: list[str] | None = None
    width: float = 1.5
    opacity: float = 1.0
    legend: bool = True


def escape(s: object) -> str:
    """`s` as text safe inside HTML and attribute values."""
    return html.escape(str(s), quote=True)


def fmt(v: float) -> str:
    """Short tick label."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return format_sci(v, 1)
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round numbers spanning [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [10.0**e for e in range(a, b + 1) if lo <= 10.0**e <= hi]
    if len(ticks) < 3:
        for e in range(a, b + 1):
            for m in (2, 5):
                v = m * 10.0**e
                if lo <= v <= hi:
                    ticks.append(v)
    return sorted(ticks)


class _Axis:
    def __init__(self, values: Sequence[float], log: bool, lo_px: float, hi_px: float):
        vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
        self.log = log and bool(vals)
        if not vals:
            vals = [0.0, 1.0]
        lo, hi = min(vals), max(vals)
        if self.log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi == lo:
            pad = abs(lo) * 0.1 or 1.0
            lo, hi = lo - pad, hi + pad
        pad = (hi - lo) * 0.05
        self.lo, self.hi = lo - pad, hi + pad
        self.lo_px, self.hi_px = lo_px, hi_px

    def __call__(self, v: float) -> float:
        x = math.log10(v) if self.log else v
        return self.lo_px + (x - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

    def ticks(self) -> list[float]:
        if self.log:
            return log_ticks(10**self.lo, 10**self.hi)
        return nice_ticks(self.lo, self.hi)

    def ok(self, v: float) -> bool:
        return math.isfinite(v) and (v > 0 or not self.log)


def chart(
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    log_x: bool = False,
    log_y: bool = False,
    width: int = 720,
    height: int = 380,
) -> str:
    """An SVG chart of `series` (empty series are skipped; an empty chart says so)."""
    left, right, top, bottom = 70, 150, 34, 48
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    ax = _Axis(xs, log_x, left, width - right)
    ay = _Axis(ys, log_y, height - bottom, top)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="{_FONT};font-size:12px" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="20" font-size="14" font-weight="600">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" '
        f'height="{height - top - bottom}" fill="none" stroke="#ccc"/>',
    ]
    for t in ax.ticks():
        x = f"{ax(t):.1f}"
        out += _gridline((x, str(top)), (x, str(height - bottom)),
                         (x, str(height - bottom + 16)), "middle", t)
    for t in ay.ticks():
        y = f"{ay(t):.1f}"
        out += _gridline((str(left), y), (str(width - right), y),
                         (str(left - 6), f"{ay(t) + 4:.1f}"), "end", t)
    out.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 10}" '
               f'text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(16,{(top + height - bottom) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    if not xs:
        out.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height / 2:.0f}" '
                   f'text-anchor="middle" fill="#888">no data yet</text>')
    legend_y = top + 6
    for s in series:
        pts = [(x, y) for x, y in s.points if ax.ok(x) and ay.ok(y)]
        if not pts:
            continue
        out += _series_svg(s, pts, ax, ay)
        if s.legend and s.name:
            lx = width - right + 12
            out.append(f'<rect x="{lx}" y="{legend_y - 8}" width="10" height="10" '
                       f'fill="{"white" if s.hollow else s.color}" stroke="{s.color}"/>')
            out.append(f'<text x="{lx + 16}" y="{legend_y + 1}">{escape(s.name[:20])}</text>')
            legend_y += 18
    out.append("</svg>")
    return "\n".join(out)


def _gridline(start: tuple[str, str], end: tuple[str, str], label_at: tuple[str, str],
              anchor: str, value: float) -> list[str]:
    """A light grid line from `start` to `end` (SVG coordinates as written) and its tick label."""
    return [
        f'<line x1="{start[0]}" y1="{start[1]}" x2="{end[0]}" y2="{end[1]}" stroke="#eee"/>',
        f'<text x="{label_at[0]}" y="{label_at[1]}" text-anchor="{anchor}" '
        f'fill="#555">{escape(fmt(value))}</text>',
    ]


def _series_svg(s: Series, pts: list[tuple[float, float]], ax: _Axis, ay: _Axis) -> list[str]:
    """The SVG of one series' visible points `pts`: its line (or staircase) and markers."""
    out = []
    op = f' opacity="{s.opacity}"' if s.opacity < 1 else ""
    if s.mode in ("lines", "lines+markers", "steps"):
        path = []
        for i, (x, y) in enumerate(pts):
            px, py = ax(x), ay(y)
            if i and s.mode == "steps":
                path.append(f"L{px:.1f},{ay(pts[i - 1][1]):.1f}")
            path.append(f"{'L' if i else 'M'}{px:.1f},{py:.1f}")
        out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{s.color}" '
                   f'stroke-width="{s.width}"{op}><title>{escape(s.name)}</title></path>')
    if s.mode in ("markers", "lines+markers"):
        labels = s.labels or [s.name] * len(s.points)
        label_of = dict(zip(s.points, labels, strict=False))
        for x, y in pts:
            fill = "white" if s.hollow else s.color
            tip = label_of.get((x, y), s.name)
            out.append(f'<circle cx="{ax(x):.1f}" cy="{ay(y):.1f}" r="4" fill="{fill}" '
                       f'stroke="{s.color}" stroke-width="1.5"{op}>'
                       f"<title>{escape(tip)}</title></circle>")
    return out


def bars(items: Sequence[tuple[str, float]], title: str, xlabel: str, width: int = 720) -> str:
    """Horizontal bars, largest first."""
    items = sorted(items, key=lambda kv: -kv[1])
    left, right, top, row = 190, 70, 34, 24
    height = top + row * max(1, len(items)) + 36
    hi = max([v for _, v in items] + [1e-12])
    span = width - left - right
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="{_FONT};font-size:12px" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="10" y="20" font-size="14" font-weight="600">{escape(title)}</text>',
    ]
    if not items:
        out.append(f'<text x="{left}" y="{top + 16}" fill="#888">not enough trials yet</text>')
    for i, (label, v) in enumerate(items):
        y = top + i * row
        w = max(1.0, span * v / hi)
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
                   f'fill="{PALETTE[0]}"><title>{escape(label)}: {v:.3f}</title></rect>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}" fill="#555">{v:.3f}</text>')
    out.append(f'<text x="{left + span / 2:.0f}" y="{height - 8}" text-anchor="middle">'
               f"{escape(xlabel)}</text>")
    out.append("</svg>")
    return "\n".join(out)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: Sequence[tuple[str, str]], intro: str = "") -> str:
    """An HTML document: a title, an intro paragraph (HTML) and (heading, HTML) sections."""
    css = (
        f"body{{{_FONT};margin:24px auto;max-width:980px;color:#222}}"
        "h1{font-size:22px}h2{font-size:17px;margin-top:28px}"
        "table{border-collapse:collapse;font-size:12px}"
        "td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}"
        "th{background:#f5f5f5}td:last-child,th:last-child{text-align:left}"
        "p{line-height:1.45}"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{css}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        intro,
    ]
    for heading, body in sections:
        parts.append(f"<h2>{escape(heading)}</h2>")
        parts.append(body)
    parts.append("</body></html>")
    return "\n".join(parts)
