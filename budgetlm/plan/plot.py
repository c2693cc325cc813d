"""`budgetlm plan ... --plot plan.png` (or .html): the plan as a picture.

Every feasible candidate as predicted loss against its time (a --cost budget: its cost; a FLOP
budget with no device: its FLOPs), the Pareto front of those two, the top candidate, the law's
compute-optimal point at the top's compute and the 0.5x / 2x points of the plan's `marginal`
rows (placed at the top's time, or cost, or FLOPs, times the scale: the same throughput),
joined by the law's frontier from 0.5x to 4x. Every candidate spends the whole budget, so they
line up at about one x; the PNG's loss axis is cut a little above the front and the frontier
(the HTML shows every candidate).
`plot_series` builds what is drawn (tested); `write_plot` draws it with matplotlib's Agg canvas
(the `plot` extra; never pyplot) or as a self-contained HTML page with an inline SVG and the
series as JSON.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from budgetlm.errors import UserError
from budgetlm.plan.pareto import non_dominated

PNG_NEEDS = "--plot: a PNG needs matplotlib: pip install 'budgetlm[plot]' (or --plot plan.html)"
AXES = {"seconds": "time (s)", "cost": "cost", "flops": "model FLOPs"}


def _x_axis(p: Any) -> str:
    if any(c.seconds is None for c in p.candidates):
        return "flops"
    return "cost" if p.budget.kind == "cost" else "seconds"


def _x(c: Any, axis: str, price: float | None) -> float:
    if axis == "flops":
        return float(c.flops)
    if axis == "cost":
        return float(c.seconds) * c.devices / 3600 * float(price or 0.0)
    return float(c.seconds)


def plot_series(p: Any) -> dict[str, Any]:
    """What the plot shows, as numbers: axis, candidates, front, top, optimum and scaled."""
    axis = _x_axis(p)
    price = p.budget.price
    # a prior's loss on another corpus is shown relative to the top (`plan.loss_units`)
    off = p.candidates[0].loss if getattr(p, "loss_shown", "absolute") == "relative" else 0.0
    marg = [{**r, "loss": r["loss"] - off} for r in p.marginal]
    cands = [{"name": c.name, "x": _x(c, axis, price), "loss": c.loss - off}
             for c in p.candidates]
    front = [cands[i] for i in non_dominated([(r["loss"], r["x"]) for r in cands])]
    front.sort(key=lambda r: r["x"])
    top = cands[0]
    by_scale = {r["scale"]: r for r in marg}
    # the marginal rows are at scale x the compute the rows were priced from: the top's
    base = top["x"]
    opt = by_scale.get(1.0)
    return {
        "x_axis": axis, "x_label": AXES[axis], "offset": off,
        "y_label": (f"predicted loss ({p.law.kind})" if not off else
                    f"Δ predicted loss vs the top ({p.law.name} {p.law.kind})"),
        "candidates": cands, "front": front, "top": top,
        "optimum": ({"x": base, "loss": opt["loss"], "params": opt["params"],
                     "tokens": opt["tokens"]} if opt else None),
        "scaled": [{"scale": s, "x": base * s, "loss": by_scale[s]["loss"],
                    "params": by_scale[s]["params"], "tokens": by_scale[s]["tokens"]}
                   for s in (0.5, 2.0) if s in by_scale],
        "frontier": [{"scale": r["scale"], "x": base * r["scale"], "loss": r["loss"]}
                     for r in marg],
    }


def write_plot(p: Any, path: str | Path) -> Path:
    """Draw plan `p` into `path` (.png or .html); return the path."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise UserError(f"--plot {out}: expected a .png or .html file name")
    series = plot_series(p)
    try:
        if suffix == ".png":
            _write_png(series, out, p.first_line)
        else:
            out.write_text(_html(series, p.first_line), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--plot {out}: cannot write ({exc.strerror or exc})") from None
    return out


def _write_png(s: dict[str, Any], out: Path, title: str) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(PNG_NEEDS) from None
    fig = Figure(figsize=(9.0, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.scatter([r["x"] for r in s["candidates"]], [r["loss"] for r in s["candidates"]], s=14,
               color="0.6", label="candidates")
    ax.plot([r["x"] for r in s["front"]], [r["loss"] for r in s["front"]], "-o", ms=4,
            color="tab:blue", label="Pareto front")
    ax.scatter([s["top"]["x"]], [s["top"]["loss"]], marker="*", s=160, color="tab:red",
               zorder=5, label=f"top: {s['top']['name']}")
    if s["optimum"]:
        ax.scatter([s["optimum"]["x"]], [s["optimum"]["loss"]], marker="D", s=50,
                   color="tab:green", zorder=5, label="compute-optimal (law)")
    for r in s["scaled"]:
        ax.scatter([r["x"]], [r["loss"]], marker="^" if r["scale"] > 1 else "v", s=60,
                   color="tab:purple", zorder=5, label=f"{r['scale']:g}x budget (law)")
    if s["frontier"]:
        ax.plot([r["x"] for r in s["frontier"]], [r["loss"] for r in s["frontier"]], "--",
                color="tab:purple", lw=1, label="law's frontier, 0.5x-4x")
    marked = [r["loss"] for r in s["front"] + s["frontier"]]
    spread = max(marked) - min(marked)
    ax.set_ylim(min(marked) - 0.1 * spread - 1e-3, max(marked) + 0.3 * spread + 1e-3)
    ax.set_xscale("log")
    ax.set_xlabel(s["x_label"])
    ax.set_ylabel(s["y_label"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title if len(title) < 120 else title[:117] + "...", fontsize=9)
    fig.savefig(out)


def _html(s: dict[str, Any], title: str) -> str:
    """A page with an inline SVG of the series and the series as JSON (no scripts, no links)."""
    w, h, m = 820, 480, 60
    pts = s["candidates"] + s["frontier"] + ([s["optimum"]] if s["optimum"] else [])
    xs = [math.log10(max(r["x"], 1e-300)) for r in pts]
    ys = [r["loss"] for r in pts]
    x0, x1 = min(xs), max(xs) + 1e-9
    y0, y1 = min(ys), max(ys) + 1e-9

    def at(r: dict[str, Any]) -> tuple[float, float]:
        x = m + (math.log10(max(r["x"], 1e-300)) - x0) / (x1 - x0) * (w - 2 * m)
        return x, h - m - (r["loss"] - y0) / (y1 - y0) * (h - 2 * m)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">',
             f'<rect x="{m}" y="{m}" width="{w - 2 * m}" height="{h - 2 * m}" fill="none" '
             'stroke="#999"/>']
    for r in s["candidates"]:
        x, y = at(r)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#999">'
                     f'<title>{html.escape(r["name"])}: {r["loss"]:.4f}</title></circle>')
    line = " ".join("{:.1f},{:.1f}".format(*at(r)) for r in s["front"])
    parts.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    line = " ".join("{:.1f},{:.1f}".format(*at(r)) for r in s["frontier"])
    parts.append(f'<polyline points="{line}" fill="none" stroke="#9467bd" '
                 'stroke-dasharray="5,4"/>')
    marks = [(s["top"], "#d62728", "top")] + [(r, "#9467bd", f"{r['scale']:g}x")
                                              for r in s["scaled"]]
    if s["optimum"]:
        marks.append((s["optimum"], "#2ca02c", "compute-optimal"))
    for r, color, label in marks:
        x, y = at(r)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}"/>'
                     f'<text x="{x + 8:.1f}" y="{y - 8:.1f}" font-size="12">{label}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 15}" font-size="13" text-anchor="middle">'
                 f'{html.escape(s["x_label"])} (log)</text>')
    parts.append(f'<text x="15" y="{h / 2}" font-size="13" transform="rotate(-90 15 {h / 2})" '
                 f'text-anchor="middle">{html.escape(s["y_label"])}: {y0:.3f} to {y1:.3f}</text>')
    parts.append("</svg>")
    data = html.escape(json.dumps(s, indent=1), quote=False)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>budgetlm plan</title>"
            f"</head><body><h3>{html.escape(title)}</h3>{''.join(parts)}"
            f"<h4>plotted series</h4><pre id=\"series\">{data}</pre></body></html>\n")
