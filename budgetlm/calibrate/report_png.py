"""The fit report as one PNG (`write_fit_png`), drawn with matplotlib's Agg canvas, never
pyplot, so no global backend state changes:

1. IsoFLOP profiles: validation loss against parameters (log x), one color per compute level,
   the pilots as markers, the fitted curve L(N, C/(6N)) through them and its minimum marked.
   Failed pilots are listed in the tables but not plotted.
2. The optimum line: the fitted N_opt(C) against C (log-log), the band of N_opt over the
   bootstrap refits, each level's best pilot, and the planned run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm import laws
from budgetlm.calibrate.report_format import count_text, interval_text
from budgetlm.calibrate.report_load import law_of, os_error_reason
from budgetlm.calibrate.report_rows import (
    bootstrap_laws,
    bootstrap_n_opts,
    exponent_a,
    fit_levels,
    interval_level,
    is_fit_range,
    is_plottable_row,
    summary_rows,
)
from budgetlm.errors import UserError
from budgetlm.units import finite_number, format_sci

PNG_NEEDS = "report: the PNG needs matplotlib: pip install 'budgetlm[plot]'"
GREEK = {"alpha": "α", "beta": "β"}
CAPTION_WIDTH = 150  # monospace characters across the figure


def write_fit_png(fit: dict[str, Any], path: str | Path) -> Path:
    """Draw the IsoFLOP profiles and the optimum line into one PNG at `path`; return the path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(PNG_NEEDS) from None

    out = Path(path)
    view = FitView.of(fit)
    fig = Figure(figsize=(13.0, 6.0), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    caption = fit_caption(fit, view.rows, view.level)
    bottom = 0.12 + 0.027 * (caption.count("\n") + 1)
    fig.subplots_adjust(left=0.06, right=0.985, top=0.88, bottom=bottom, wspace=0.2)
    draw_isoflop_profiles(ax1, view)
    draw_optimum_line(ax2, view)
    fig.suptitle(figure_title(fit), fontsize=12)
    fig.text(0.01, 0.015, caption, fontsize=8.5, ha="left", va="bottom",
             family="monospace")
    try:
        fig.savefig(out, format="png")
    except OSError as exc:
        raise UserError(f"report: cannot write {out} ({os_error_reason(exc)})") from None
    return out


@dataclass(frozen=True)
class IsoflopCurves:
    """The fitted loss along an IsoFLOP profile: N parameters trained on the tokens C buys at
    the pilots' own FLOPs per token, repeated data counted as effective data."""

    law: laws.LossLaw
    unique: float | None
    flops_per_param: Callable[[float], float]

    def loss(self, n: float, c: float) -> float:
        """L at N with the tokens C buys: the pilots' own FLOPs per token (6N plus attention,
        interpolated in log N between pilots), so the curve passes where its pilots trained."""
        d = c / (self.flops_per_param(n) * n)
        if self.unique and d > self.unique:
            d = laws.effective_data(d, self.unique)
        return self.law.loss(n, d)

    def n_min(self, c: float) -> float:
        """N minimizing the plotted curve (numeric, about the closed-form C = 6ND optimum)."""
        n = self.law.optimal(c)[0]
        return laws.minimize_log(lambda x: self.loss(x, c), n / 1000, n * 1000)


@dataclass(frozen=True)
class FitView:
    """What both panels draw from: the law, the rows, the levels and their colors."""

    fit: dict[str, Any]
    law: laws.LossLaw
    rows: dict[str, list[dict[str, Any]]]
    levels: list[float]
    level: float
    boots: list[laws.LossLaw]
    unique: float | None
    colors: list[Any]
    curves: IsoflopCurves

    @classmethod
    def of(cls, fit: dict[str, Any]) -> FitView:
        law = law_of(fit)
        levels = fit_levels(fit)
        unique = finite_number(fit.get("unique_tokens"))
        return cls(fit=fit, law=law, rows=summary_rows(fit), levels=levels,
                   level=interval_level(fit), boots=bootstrap_laws(fit), unique=unique,
                   colors=level_colors(len(levels)),
                   curves=IsoflopCurves(law, unique, flops_per_param(fit)))


def flops_per_param(fit: dict[str, Any]) -> Callable[[float], float]:
    """FLOPs per token per parameter as a function of N, from the pilots (flops / tokens / N),
    piecewise linear in log N and flat beyond them; 6 (C = 6ND) without pilot FLOPs."""
    pts = sorted(
        (math.log(float(p["params"])), float(p["flops"]) / float(p["tokens"]) / float(p["params"]))
        for p in fit.get("pilots") or []
        if finite_number(p.get("flops")) and finite_number(p.get("tokens"))
        and finite_number(p.get("params"))
    )
    if not pts:
        return lambda n: 6.0

    return lambda n: laws.interpolate(math.log(n), pts)


def level_colors(n: int) -> list[Any]:
    """One viridis color per compute level, dark to light."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.1 + 0.75 * i / max(1, n - 1)) for i in range(n)]


def draw_isoflop_profiles(ax: Any, view: FitView) -> None:
    """Left panel: each level's pilots, its fitted curve and the curve's minimum."""
    import numpy as np
    from matplotlib.lines import Line2D

    curves, colors = view.curves, view.colors
    ys: list[float] = []
    for i, c in enumerate(view.levels):
        mine = [r for r in view.rows["pilots"] if r["level"] == i and is_plottable_row(r)]
        n_opt = curves.n_min(c)
        ns = [r["params"] for r in mine] + [n_opt]
        lo, hi = min(ns) / 2.0, max(ns) * 2.0
        grid = np.geomspace(lo, hi, 160)
        ax.plot(grid, [curves.loss(float(n), c) for n in grid], color=colors[i], lw=1.8,
                label=f"C = {format_sci(c)} FLOPs")
        if mine:
            ax.plot([r["params"] for r in mine], [r["val_loss"] for r in mine], "o",
                    color=colors[i], ms=7, mec="black", mew=0.6, zorder=4)
        l_opt = curves.loss(n_opt, c)
        ax.plot([n_opt], [l_opt], "D", ms=11, mfc="white", mec=colors[i], mew=2.0, zorder=3)
        ys += [r["val_loss"] for r in mine] + [l_opt]
        ys += [curves.loss(min(r["params"] for r in mine), c)] if mine else [curves.loss(lo, c)]
    if ys:
        y0, y1 = min(ys), max(ys)
        pad = max(0.08 * (y1 - y0), 0.01 * abs(y1), 1e-3)
        ax.set_ylim(y0 - pad, y1 + 2.5 * pad)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("IsoFLOP profiles: pilots and the fitted L(N, D = C / FLOPs per token)")
    _grid(ax)
    extra = [Line2D([], [], ls="", marker="o", color="gray", mec="black", mew=0.6,
                    label="pilot (val loss)"),
             Line2D([], [], ls="", marker="D", ms=9, mfc="white", mec="gray", mew=2.0,
                    label="fitted minimum")]
    h, _ = ax.get_legend_handles_labels()
    ax.legend(handles=h + extra, fontsize=8, loc="upper right", framealpha=0.9)


def draw_optimum_line(ax: Any, view: FitView) -> None:
    """Right panel: the fitted N_opt(C), its bootstrap band, the pilots' N range, each level's
    best pilot and the planned run."""
    import numpy as np

    plan = view.fit.get("plan") or {}
    plan_c, plan_n = finite_number(plan.get("flops")), finite_number(plan.get("params"))
    cs = list(view.levels) + ([plan_c] if plan_c and plan_c > 0 else [])
    if not cs:
        cs = [1e12]
    c_grid = np.geomspace(min(cs) / 4, max(cs) * 4, 120)
    _draw_optimum_curves(ax, view, c_grid)
    if view.boots:
        band = np.array([bootstrap_n_opts(view.boots, float(c)) for c in c_grid])  # (n_c, n_boot)
        q = (1 - view.level) / 2
        lo_b, hi_b = np.quantile(band, q, axis=1), np.quantile(band, 1 - q, axis=1)
        ax.fill_between(c_grid, lo_b, hi_b, color="gray", alpha=0.25, lw=0,
                        label=f"{view.level:.0%} bootstrap band ({len(view.boots)} refits)")
    fr = view.fit.get("fit_range")
    if is_fit_range(fr):
        ax.axhspan(float(fr[0]), float(fr[1]), color="tab:blue", alpha=0.1, lw=0,
                   label="N range of the pilots")
    first = True
    for i, r in enumerate(view.rows["optimal"][: len(view.levels)]):
        if r.get("best_params"):
            ax.plot([r["flops"]], [r["best_params"]], "o", color=view.colors[i], ms=8,
                    mec="black", mew=0.6, zorder=3,
                    label="best pilot of each level" if first else None)
            first = False
    if plan_c and plan_n:
        ax.plot([plan_c], [plan_n], "*", color="tab:red", ms=15, mec="black", mew=0.6,
                zorder=4, label=f"planned run {plan.get('name') or ''} "
                                f"(N = {count_text(plan_n)})".replace("  ", " "))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs, C = 6ND)")
    ax.set_ylabel("compute-optimal parameters N_opt")
    ax.set_title("optimum line: N_opt(C) from the fit")
    _grid(ax)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)


def _draw_optimum_curves(ax: Any, view: FitView, c_grid: Any) -> None:
    """N_opt(C) of the Chinchilla form; with repeated data, of the plotted curves; and the one
    the plan predicts with when the file also holds a Kaplan form."""
    law = view.law
    ax.plot(c_grid, [law.optimal(float(c))[0] for c in c_grid], color="black", lw=1.8,
            label=f"fitted N_opt(C) ∝ C^{exponent_a(law):.3f}")
    if view.unique:
        rep = [view.curves.n_min(float(c)) for c in c_grid]
        if any(abs(r / law.optimal(float(c))[0] - 1) > 1e-3
               for r, c in zip(rep, c_grid, strict=True)):
            ax.plot(c_grid, rep, color="black", lw=1.4, ls="--",
                    label=f"N_opt with {count_text(view.unique)} unique tokens repeated (D')")
    both = laws.law_from_fit({**view.fit, "kind": "budgetlm-fit"})
    if both.form == "mean":
        ax.plot(c_grid, [both.optimal(float(c))[0] for c in c_grid], color="tab:red", lw=1.6,
                ls="-.", label="N_opt(C) the plan predicts with (Chinchilla and Kaplan forms)")


def _grid(ax: Any) -> None:
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def figure_title(fit: dict[str, Any]) -> str:
    """'budgetlm fit: <data source> (<tokenizer> tokenizer), <created>'."""
    data = fit.get("data") or {}
    title = f"budgetlm fit: {data.get('source') or 'unknown data'}"
    if data.get("tokenizer"):
        title += f" ({data['tokenizer']} tokenizer)"
    if fit.get("created"):
        title += f", {fit['created']}"
    return title


def fit_caption(fit: dict[str, Any], rows: dict[str, list[dict[str, Any]]], level: float) -> str:
    """The text under the panels: the law and its parameters, then facts about the fit wrapped
    to the figure's width."""
    parts = []
    for r in rows["parameters"]:
        if r["derived"]:
            continue
        iv = interval_text(r["lo"], r["hi"], "{:.4g}")
        parts.append(f"{GREEK.get(r['name'], r['name'])} = {r['value']:.4g}"
                     + (f" {iv}" if iv != "-" else ""))
    has_iv = any(r["lo"] is not None for r in rows["parameters"])
    line1 = ("fitted law  L(N, D) = E + A/N^α + B/D^β  in nats/token (N parameters, D tokens); "
             "compute C = 6ND\n"
             + ",  ".join(parts) + (f"   ({level:.0%} intervals)" if has_iv else ""))
    return "\n".join([line1, *_wrap(_caption_facts(fit, rows), CAPTION_WIDTH)])


def _caption_facts(fit: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    done = [r for r in rows["pilots"] if is_plottable_row(r)]
    failed = len(rows["pilots"]) - len(done)
    a = next(r for r in rows["parameters"] if r["name"] == "a")
    facts = [f"{len(done)} pilots on {len(fit_levels(fit))} compute levels",
             f"N_opt ∝ C^{a['value']:.3f}"
             + (f" {interval_text(a['lo'], a['hi'], '{:.3f}')}" if a["lo"] is not None else "")]
    std = finite_number(fit.get("residual_std"))
    if std is not None:
        facts.append(f"residual std {std:.3g} (log loss)")
    bpb = finite_number(fit.get("bpb_per_nat"))
    if bpb:
        facts.append(f"bits/byte = nats × {bpb:.4g}")
    if finite_number(fit.get("unique_tokens")):
        facts.append(f"{count_text(fit['unique_tokens'])} unique tokens (curves use effective "
                     "data)")
    if failed:
        facts.append(f"{failed} failed pilot{'s' if failed > 1 else ''} not shown")
    return facts


def _wrap(facts: list[str], width: int) -> list[str]:
    """Facts joined by ';  ' into lines of at most `width` characters (a longer fact alone)."""
    lines: list[str] = []
    cur = ""
    for b in facts:
        if cur and len(cur) + 3 + len(b) > width:
            lines.append(cur)
            cur = b
        else:
            cur = f"{cur};  {b}" if cur else b
    return [*lines, cur] if cur else lines
