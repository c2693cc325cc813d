"""What `budgetlm calibrate` leaves behind (`fit.json`), and how `budgetlm report` shows it.

`fit.json` holds a Chinchilla-form law L(N, D) = E + A/N^alpha + B/D^beta (nats/token, this
corpus and tokenizer) fitted to pilot runs on IsoFLOP profiles: a few compute levels C, a few
model sizes N per level, each trained for D = C/(6N) tokens. Beside the law: its intervals and
bootstrap refits, the pilots themselves (loss, fitted loss, residual), and optionally the run
planned from the fit.

This module reads it back (`load_fit`, which turns a malformed file into a one-line
`UserError`), builds plain rows for tables or JSON (`summary_rows`), prints them with rich
(`render_fit`), and draws one PNG (`write_fit_png`, matplotlib with the Agg canvas, never
pyplot, so no global backend state changes):

1. IsoFLOP profiles: validation loss against parameters (log x), one color per compute level,
   the pilots as markers, the fitted curve L(N, C/(6N)) through them and its minimum marked.
   Failed pilots are listed in the tables but not plotted.
2. The optimum line: the fitted N_opt(C) against C (log-log), the band of N_opt over the
   bootstrap refits, each level's best pilot, and the planned run.

`report_fit` does all of it for one file. Where data was repeated (`unique_tokens` set), the
curves use Muennighoff et al.'s effective data D' (`scaling.effective_data`), as the pilots'
`effective_tokens` do; the tables' compute-optimal allocation is the plain closed form
(`LossLaw.optimal`), with the epochs it would take.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from budgetlm import laws as scaling
from budgetlm.errors import UserError

KIND = "budgetlm-fit"
VERSION = 1
LAW_KEYS = ("E", "A", "B", "alpha", "beta")
DEFAULT_LEVEL = 0.9
PNG_NEEDS = "report: the PNG needs matplotlib: pip install 'budgetlm[plot]'"
_GREEK = {"alpha": "α", "beta": "β"}


# ---------------------------------------------------------------------------------------------
# Reading


def load_fit(path: str | Path) -> dict[str, Any]:
    """Read and check a `fit.json`; UserError with one line naming the file otherwise."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such file (write one with `budgetlm calibrate`)") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, expected a fit.json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read ({_why(exc)})") from None
    try:
        fit = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                        ) from None
    if not isinstance(fit, dict):
        raise UserError(f"{p}: not a budgetlm fit file (expected a JSON object, got "
                        f"{type(fit).__name__})")
    kind = fit.get("kind")
    if kind != KIND:
        raise UserError(f"{p}: kind is {kind!r}, expected {KIND!r} (a file written by "
                        "`budgetlm calibrate`)")
    version = fit.get("version", VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise UserError(f"{p}: version {version!r} is not one this budgetlm reads "
                        f"(up to {VERSION}); upgrade budgetlm")
    law = fit.get("law")
    if not isinstance(law, dict):
        raise UserError(f"{p}: law: missing or not an object (expected keys "
                        f"{', '.join(LAW_KEYS)})")
    form = law.get("form", "chinchilla")
    if form != "chinchilla":
        raise UserError(f"{p}: law.form is {form!r}; only 'chinchilla' is supported")
    missing = [k for k in LAW_KEYS if k not in law]
    if missing:
        raise UserError(f"{p}: law: missing {', '.join(missing)} (expected keys "
                        f"{', '.join(LAW_KEYS)})")
    bad = [k for k in LAW_KEYS if _num(law[k]) is None]
    if bad:
        raise UserError(f"{p}: law: {', '.join(bad)} must be finite numbers, got "
                        + ", ".join(f"{k}={law[k]!r}" for k in bad))
    for key in ("pilots", "levels", "bootstrap", "residuals", "notes"):
        if fit.get(key) is not None and not isinstance(fit[key], list):
            raise UserError(f"{p}: {key}: expected a list, got {type(fit[key]).__name__}")
    if any(not isinstance(q, dict) for q in fit.get("pilots") or []):
        raise UserError(f"{p}: pilots: every entry must be an object")
    for key in ("plan", "data", "intervals", "budget"):
        if fit.get(key) is not None and not isinstance(fit[key], dict):
            raise UserError(f"{p}: {key}: expected an object, got {type(fit[key]).__name__}")
    try:
        law_of(fit)
    except UserError as exc:
        raise UserError(f"{p}: law: {str(exc).removeprefix('fit: ')}") from None
    return fit


def law_of(fit: dict[str, Any]) -> scaling.LossLaw:
    """The fitted Chinchilla-form law as a `scaling.LossLaw` (kind "fit"): `scaling.law_from_fit`
    of the file without its other forms, with the pilots' range as `fit_range` and what
    predictions need (bootstrap, residual_std, interval_level, unique_tokens, seq_len,
    bpb_per_nat, ...) in `extra`. The tables and curves show this law; the plan's prediction
    (`fit["plan"]`) is the one `budgetlm plan --fit` makes, from all the file's forms."""
    return scaling.law_from_fit({**fit, "kind": "budgetlm-fit", "forms": None})


# ---------------------------------------------------------------------------------------------
# Plain rows


def summary_rows(fit: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Plain rows (JSON-ready) for three tables.

    parameters: name, value, lo, hi (the file's interval, else bootstrap percentiles), and the
    derived exponents a = beta/(alpha+beta) (N_opt ∝ C^a), b = alpha/(alpha+beta).
    pilots: level, name, params, tokens, flops, val loss, fitted loss, residual in %, wall s,
    state, ordered by level then size.
    optimal: the fitted compute-optimal allocation at each level (and at the planned run's FLOPs
    when the file has a plan): n_opt, d_opt, tokens_per_param, loss, the bootstrap interval of
    n_opt (n_opt_lo, n_opt_hi; None without bootstrap), and the best pilot of the level.
    """
    law = law_of(fit)
    level = _interval_level(fit)
    boots = _bootstrap(fit)
    intervals = fit.get("intervals") or {}
    params: list[dict[str, Any]] = []
    for k in LAW_KEYS:
        lo, hi = _pair(intervals.get(k))
        if lo is None and boots:
            lo, hi = _quantiles([b[k] for b in boots], level)
        params.append({"name": k, "value": float(getattr(law, k)), "lo": lo, "hi": hi,
                       "derived": False})
    for name, f in (("a", _exp_a), ("b", lambda b: 1 - _exp_a(b))):
        vals = {k: getattr(law, k) for k in LAW_KEYS}
        lo, hi = _quantiles([f(b) for b in boots], level) if boots else (None, None)
        params.append({"name": name, "value": f(vals), "lo": lo, "hi": hi, "derived": True})

    levels = _levels(fit)
    pilots = []
    for q in fit.get("pilots") or []:
        lv = _pilot_level(q, levels)
        val, fitted = _num(q.get("val_loss")), _num(q.get("fitted_loss"))
        n, d = _num(q.get("params")), _num(q.get("tokens"))
        d_eff = _num(q.get("effective_tokens")) or d
        if fitted is None and val is not None and n and d_eff:
            fitted = law.loss(n, d_eff)
        resid = _num(q.get("residual"))
        if val is not None and fitted:
            pct: float | None = 100 * (val / fitted - 1)
        else:
            pct = 100 * math.expm1(resid) if resid is not None else None
        pilots.append({
            "level": lv, "level_flops": levels[lv] if lv is not None else None,
            "name": str(q.get("name", "?")), "params": n, "tokens": d, "effective_tokens": d_eff,
            "flops": _num(q.get("flops")), "val_loss": val, "val_bpb": _num(q.get("val_bpb")),
            "fitted_loss": fitted, "residual": resid, "residual_pct": pct,
            "wall_seconds": _num(q.get("wall_seconds")), "state": _state(q),
            "reason": str(q["reason"]) if q.get("reason") else None,
        })
    pilots.sort(key=lambda r: (r["level"] if r["level"] is not None else 1 << 30,
                               r["params"] or 0.0, r["name"]))

    optimal = []
    for i, c in enumerate(levels):
        row = _optimum_row(fit, law, boots, level, c, f"level {i}")
        best = _best_pilot([r for r in pilots if r["level"] == i])
        row["best_pilot"] = best["name"] if best else None
        row["best_params"] = best["params"] if best else None
        row["best_loss"] = best["val_loss"] if best else None
        optimal.append(row)
    plan = fit.get("plan") or {}
    plan_c = _num(plan.get("flops"))
    if plan_c and plan_c > 0:
        row = _optimum_row(fit, law, boots, level, plan_c, "plan")
        row.update({"plan_name": plan.get("name"), "plan_params": _num(plan.get("params")),
                    "plan_tokens": _num(plan.get("tokens")), "plan_loss": _num(plan.get("loss")),
                    "plan_loss_lo": _num(plan.get("loss_lo")),
                    "plan_loss_hi": _num(plan.get("loss_hi"))})
        optimal.append(row)
    return {"parameters": params, "pilots": pilots, "optimal": optimal}


def _optimum_row(fit: dict[str, Any], law: scaling.LossLaw, boots: list[dict[str, float]],
                 level: float, c: float, at: str) -> dict[str, Any]:
    n, d = law.optimal(c)
    lo, hi = _quantiles(_n_opts(boots, c), level) if boots else (None, None)
    unique = _num(fit.get("unique_tokens"))
    ep = scaling.epochs(d, unique) if unique else None
    return {"at": at, "flops": c, "n_opt": n, "d_opt": d, "tokens_per_param": d / n,
            "loss": law.loss(n, d), "n_opt_lo": lo, "n_opt_hi": hi, "epochs": ep,
            "loss_repeated": law.loss(n, scaling.effective_data(d, unique))
            if unique and ep and ep > 1 else None}


# ---------------------------------------------------------------------------------------------
# Tables


def describe_law(fit: dict[str, Any]) -> str:
    """One line: the law, its unit, what it was fitted on, and how to read it in bits/byte."""
    law = law_of(fit)
    done = [q for q in fit.get("pilots") or [] if _plottable(q)]
    failed = len(fit.get("pilots") or []) - len(done)
    n_points = (fit.get("fit") or {}).get("n_points") or len(done)
    data = fit.get("data") or {}
    what = [f"{data['tokenizer']} tokenizer" if data.get("tokenizer") else "",
            f"vocab {data['vocab_size']}" if data.get("vocab_size") else "",
            f"seq {fit['seq_len']}" if fit.get("seq_len") else "",
            f"{_count(fit['unique_tokens'])} unique tokens" if _num(fit.get("unique_tokens"))
            else ""]
    on = str(data.get("source") or "unknown data")
    detail = ", ".join(w for w in what if w)
    line = (f"L(N, D) = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}"
            f" nats/token (N parameters, D tokens), fitted on {n_points} pilots"
            + (f" ({failed} failed)" if failed else "") + f" on {on}"
            + (f" ({detail})" if detail else ""))
    bpb = _num(fit.get("bpb_per_nat"))
    if bpb:
        line += f"; bpb = nats × {bpb:.4g}"
    return line


def render_fit(console: Any, fit: dict[str, Any]) -> None:
    """Print the law, its parameters, the pilots and the compute-optimal allocation."""
    from rich import box
    from rich.table import Table

    rows = summary_rows(fit)
    level = _interval_level(fit)
    console.print(describe_law(fit), highlight=False, soft_wrap=True)

    t = Table(title=f"fitted parameters ({level:.0%} intervals)", box=box.SIMPLE_HEAD,
              pad_edge=False)
    for col in ("", "value", "interval"):
        t.add_column(col, justify="left" if not col else "right", no_wrap=True)
    for r in rows["parameters"]:
        name = {"a": "a (N_opt ∝ C^a)", "b": "b (D_opt ∝ C^b)"}.get(r["name"], r["name"])
        t.add_row(name, f"{r['value']:.4g}", _interval(r["lo"], r["hi"], "{:.4g}"))
    console.print(t)

    p = Table(title="pilots (IsoFLOP profiles; loss in nats/token)", box=box.SIMPLE_HEAD,
              pad_edge=False)
    heads = ("lvl", "name", "N", "D", "FLOPs", "val loss", "fitted", "resid %", "wall s", "state")
    for col in heads:
        p.add_column(col, justify="left" if col in ("name", "state") else "right", no_wrap=True)
    for r in rows["pilots"]:
        state = r["state"] if r["state"] == "complete" else f"[red]{r['state']}[/]"
        p.add_row(
            str(r["level"]) if r["level"] is not None else "-", r["name"], _count(r["params"]),
            _count(r["tokens"]), _sci(r["flops"] or r["level_flops"]), _f(r["val_loss"], "{:.4f}"),
            _f(r["fitted_loss"], "{:.4f}"), _f(r["residual_pct"], "{:+.2f}"),
            _f(r["wall_seconds"], "{:.1f}"), state,
        )
    console.print(p)
    for r in rows["pilots"]:
        if r["state"] != "complete":
            why = f": {r['reason']}" if r["reason"] else ""
            console.print(f"[dim]pilot {r['name']} {r['state']}{why} (not fitted, not plotted)[/]",
                          highlight=False, soft_wrap=True)

    repeats = any((r.get("epochs") or 1.0) > 1.0 for r in rows["optimal"])
    o = Table(title=f"compute-optimal allocation from the fit (C = 6ND; N_opt {level:.0%} "
                    "bootstrap interval; loss in nats/token"
                    + ("; ep: epochs of the unique tokens, loss (D'): with repeated data as "
                       "effective data" if repeats else "") + ")",
              box=box.SIMPLE_HEAD, pad_edge=False)
    heads = ("at", "C FLOPs", "N_opt", "interval", "D_opt", "D/N", "ep", "loss", "loss (D')",
             "best pilot")
    heads = tuple(h for h in heads if h not in ("ep", "loss (D')") or repeats)
    for col in heads:
        o.add_column(col, justify="left" if col in ("at", "best pilot") else "right",
                     no_wrap=True)
    for r in rows["optimal"]:
        if r["at"] == "plan":
            best = f"plan: {r.get('plan_name') or '?'} N={_count(r.get('plan_params'))}"
        else:
            best = (f"{r['best_pilot']} N={_count(r['best_params'])}" if r.get("best_pilot")
                    else "-")
        cells = [r["at"], _sci(r["flops"]), _count(r["n_opt"]),
                 _interval(r["n_opt_lo"], r["n_opt_hi"], None), _count(r["d_opt"]),
                 f"{r['tokens_per_param']:.1f}"]
        if repeats:
            cells.append(_f(r.get("epochs"), "{:.1f}"))
        cells.append(f"{r['loss']:.4f}")
        if repeats:
            cells.append(_f(r.get("loss_repeated") or r["loss"], "{:.4f}"))
        o.add_row(*cells, best)
    console.print(o)

    for r in rows["optimal"]:
        if r["at"] != "plan":
            continue
        loss = _f(r.get("plan_loss"), "{:.4f}")
        band = _interval(r.get("plan_loss_lo"), r.get("plan_loss_hi"), "{:.4f}")
        n, d = r.get("plan_params"), r.get("plan_tokens")
        ratio = f" ({d / n:.1f} tokens/param)" if n and d else ""
        bpb = _num(fit.get("bpb_per_nat"))
        in_bpb = (f" (≈{r['plan_loss'] * bpb:.4f} bits/byte)"
                  if bpb and r.get("plan_loss") is not None else "")
        console.print(
            f"planned run {r.get('plan_name') or ''}: N={_count(n)}, D={_count(d)}{ratio} at "
            f"{_sci(r['flops'])} FLOPs, predicted loss {loss}"
            + (f" {band}" if band != "-" else "")
            + f" nats/token{in_bpb}; the Chinchilla form's optimum there: "
            f"N={_count(r['n_opt'])}, D={_count(r['d_opt'])}",
            highlight=False, soft_wrap=True,
        )
    for note in _notes(fit):
        console.print(f"[dim]· {note}[/]", highlight=False, soft_wrap=True)


def _notes(fit: dict[str, Any]) -> list[str]:
    out = []
    ceiling = fit.get("e_ceiling") or {}
    if _num(ceiling.get("value")):
        rates = ceiling.get("rates") or {}
        out.append(f"E held at or below {ceiling['value']:.4f} nats/token, the best compression "
                   "rate of the validation tokens ("
                   + ", ".join(f"{k} {v:.4f}" for k, v in rates.items() if _num(v)) + ")")
    kap = ((fit.get("forms") or {}).get("kaplan") or {})
    if isinstance(kap, dict) and isinstance(kap.get("law"), dict):
        k = kap["law"]
        try:
            out.append(
                f"Kaplan form fitted to the same pilots: L = [({_count(k['n_c'])}/N)^"
                f"({k['alpha_n']:.3f}/{k['alpha_d']:.3f}) + {_count(k['d_c'])}/D]^"
                f"{k['alpha_d']:.3f}, residual std {float(kap.get('residual_std', 0)):.3g}; "
                "the plan predicts with the geometric mean of the two forms, its interval spans "
                "both")
        except (KeyError, TypeError, ValueError):
            pass
    std = _num(fit.get("residual_std"))
    if std is not None:
        out.append(f"residual std {std:.3g} in log loss (≈{100 * math.expm1(std):.2f}%)")
    fr = fit.get("fit_range")
    if _is_range(fr):
        out.append(f"fitted on N {_count(fr[0])}–{_count(fr[1])}, D {_count(fr[2])}–"
                   f"{_count(fr[3])}: predictions outside are extrapolations")
    info = fit.get("fit") or {}
    if info.get("n_bootstrap") or fit.get("bootstrap"):
        n_boot = info.get("n_bootstrap") or len(fit.get("bootstrap") or [])
        out.append(f"{n_boot} bootstrap refits"
                   + (f", Huber delta {info['huber_delta']:g}" if info.get("huber_delta")
                      else ""))
    secs, budget = _num(fit.get("pilot_seconds")), _budget(fit.get("budget") or {})
    if secs is not None:
        of = f" of a {budget} budget" if budget else ""
        if _num(fit.get("pilot_fraction")):
            of += f" (pilot share {fit['pilot_fraction']:.0%})"
        out.append(f"pilots took {secs:.0f} s{of}")
    out += [str(n) for n in fit.get("notes") or [] if n]
    if fit.get("created"):
        out.append(f"created {fit['created']}")
    return out


def _budget(b: dict[str, Any]) -> str:
    """A budget as `Budget.to_dict` writes it, in words ('' when unknown)."""
    kind = b.get("kind")
    if kind == "time" and _num(b.get("seconds")):
        return f"{b['seconds']:.0f} s"
    if kind == "flops" and _num(b.get("flops")):
        return f"{_sci(b['flops'])} FLOPs"
    if kind == "gpu_hours" and _num(b.get("gpu_hours")):
        gpus = b.get("gpus") or 1
        return f"{b['gpu_hours']:g} GPU-hour" + (f" ({gpus} GPUs)" if gpus != 1 else "")
    if kind == "cost" and _num(b.get("cost")):
        return f"{b['cost']:g} at {b.get('price', '?')}/GPU-hour"
    return ""


# ---------------------------------------------------------------------------------------------
# The PNG


def _flops_per_param(fit: dict[str, Any]) -> Any:
    """FLOPs per token per parameter as a function of N, from the pilots (flops / tokens / N),
    piecewise linear in log N and flat beyond them; 6 (C = 6ND) without pilot FLOPs."""
    pts = sorted(
        (math.log(float(p["params"])), float(p["flops"]) / float(p["tokens"]) / float(p["params"]))
        for p in fit.get("pilots") or []
        if _num(p.get("flops")) and _num(p.get("tokens")) and _num(p.get("params"))
    )
    if not pts:
        return lambda n: 6.0

    return lambda n: scaling.interpolate(math.log(n), pts)


def write_fit_png(fit: dict[str, Any], path: str | Path) -> Path:
    """Draw the IsoFLOP profiles and the optimum line into one PNG at `path`; return the path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        raise UserError(PNG_NEEDS) from None
    import numpy as np

    out = Path(path)
    law = law_of(fit)
    rows = summary_rows(fit)
    levels = _levels(fit)
    level = _interval_level(fit)
    boots = _bootstrap(fit)
    unique = _num(fit.get("unique_tokens"))

    fig = Figure(figsize=(13.0, 6.0), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    caption = _caption(fit, rows, level)
    bottom = 0.12 + 0.027 * (caption.count("\n") + 1)
    fig.subplots_adjust(left=0.06, right=0.985, top=0.88, bottom=bottom, wspace=0.2)
    cmap = _colormap()
    colors = [cmap(0.1 + 0.75 * i / max(1, len(levels) - 1)) for i in range(len(levels))]

    per_param = _flops_per_param(fit)

    def curve(n: float, c: float) -> float:
        """L at N with the tokens C buys: the pilots' own FLOPs per token (6N plus attention,
        interpolated in log N between pilots), so the curve passes where its pilots trained."""
        d = c / (per_param(n) * n)
        if unique and d > unique:
            d = scaling.effective_data(d, unique)
        return law.loss(n, d)

    def curve_min(c: float) -> float:
        """N minimizing the plotted curve (numeric, about the closed-form C = 6ND optimum)."""
        n = law.optimal(c)[0]
        return scaling.minimize_log(lambda x: curve(x, c), n / 1000, n * 1000)

    # (1) IsoFLOP profiles --------------------------------------------------------------------
    ys: list[float] = []
    for i, c in enumerate(levels):
        mine = [r for r in rows["pilots"] if r["level"] == i and _plottable_row(r)]
        n_opt = curve_min(c)
        ns = [r["params"] for r in mine] + [n_opt]
        lo, hi = min(ns) / 2.0, max(ns) * 2.0
        grid = np.geomspace(lo, hi, 160)
        ax1.plot(grid, [curve(float(n), c) for n in grid], color=colors[i], lw=1.8,
                 label=f"C = {_sci(c)} FLOPs")
        if mine:
            ax1.plot([r["params"] for r in mine], [r["val_loss"] for r in mine], "o",
                     color=colors[i], ms=7, mec="black", mew=0.6, zorder=4)
        l_opt = curve(n_opt, c)
        ax1.plot([n_opt], [l_opt], "D", ms=11, mfc="white", mec=colors[i], mew=2.0, zorder=3)
        ys += [r["val_loss"] for r in mine] + [l_opt]
        ys += [curve(min(r["params"] for r in mine), c)] if mine else [curve(lo, c)]
    if ys:
        y0, y1 = min(ys), max(ys)
        pad = max(0.08 * (y1 - y0), 0.01 * abs(y1), 1e-3)
        ax1.set_ylim(y0 - pad, y1 + 2.5 * pad)
    ax1.set_xscale("log")
    ax1.set_xlabel("parameters N")
    ax1.set_ylabel("validation loss (nats/token)")
    ax1.set_title("IsoFLOP profiles: pilots and the fitted L(N, D = C / FLOPs per token)")
    ax1.grid(True, which="major", alpha=0.3)
    ax1.grid(True, which="minor", alpha=0.1)
    extra = [Line2D([], [], ls="", marker="o", color="gray", mec="black", mew=0.6,
                    label="pilot (val loss)"),
             Line2D([], [], ls="", marker="D", ms=9, mfc="white", mec="gray", mew=2.0,
                    label="fitted minimum")]
    h, _ = ax1.get_legend_handles_labels()
    ax1.legend(handles=h + extra, fontsize=8, loc="upper right", framealpha=0.9)

    # (2) the optimum line ---------------------------------------------------------------------
    plan = fit.get("plan") or {}
    plan_c, plan_n = _num(plan.get("flops")), _num(plan.get("params"))
    cs = list(levels) + ([plan_c] if plan_c and plan_c > 0 else [])
    if not cs:
        cs = [1e12]
    c_grid = np.geomspace(min(cs) / 4, max(cs) * 4, 120)
    a = _exp_a({k: getattr(law, k) for k in LAW_KEYS})
    ax2.plot(c_grid, [law.optimal(float(c))[0] for c in c_grid], color="black", lw=1.8,
             label=f"fitted N_opt(C) ∝ C^{a:.3f}")
    if unique:
        rep = [curve_min(float(c)) for c in c_grid]
        if any(abs(r / law.optimal(float(c))[0] - 1) > 1e-3 for r, c in zip(rep, c_grid,
                                                                          strict=True)):
            ax2.plot(c_grid, rep, color="black", lw=1.4, ls="--",
                     label=f"N_opt with {_count(unique)} unique tokens repeated (D')")
    both = scaling.law_from_fit({**fit, "kind": "budgetlm-fit"})
    if both.form == "mean":
        ax2.plot(c_grid, [both.optimal(float(c))[0] for c in c_grid], color="tab:red", lw=1.6,
                 ls="-.", label="N_opt(C) the plan predicts with (Chinchilla and Kaplan forms)")
    if boots:
        band = np.array([_n_opts(boots, float(c)) for c in c_grid])  # (n_c, n_boot)
        q = (1 - level) / 2
        lo_b, hi_b = np.quantile(band, q, axis=1), np.quantile(band, 1 - q, axis=1)
        ax2.fill_between(c_grid, lo_b, hi_b, color="gray", alpha=0.25, lw=0,
                         label=f"{level:.0%} bootstrap band ({len(boots)} refits)")
    fr = fit.get("fit_range")
    if _is_range(fr):
        ax2.axhspan(float(fr[0]), float(fr[1]), color="tab:blue", alpha=0.1, lw=0,
                    label="N range of the pilots")
    first = True
    for i, r in enumerate(rows["optimal"][: len(levels)]):
        if r.get("best_params"):
            ax2.plot([r["flops"]], [r["best_params"]], "o", color=colors[i], ms=8, mec="black",
                     mew=0.6, zorder=3, label="best pilot of each level" if first else None)
            first = False
    if plan_c and plan_n:
        ax2.plot([plan_c], [plan_n], "*", color="tab:red", ms=15, mec="black", mew=0.6,
                 zorder=4, label=f"planned run {plan.get('name') or ''} "
                                 f"(N = {_count(plan_n)})".replace("  ", " "))
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("training compute C (FLOPs, C = 6ND)")
    ax2.set_ylabel("compute-optimal parameters N_opt")
    ax2.set_title("optimum line: N_opt(C) from the fit")
    ax2.grid(True, which="major", alpha=0.3)
    ax2.grid(True, which="minor", alpha=0.1)
    ax2.legend(fontsize=8, loc="upper left", framealpha=0.9)

    data = fit.get("data") or {}
    title = f"budgetlm fit: {data.get('source') or 'unknown data'}"
    if data.get("tokenizer"):
        title += f" ({data['tokenizer']} tokenizer)"
    if fit.get("created"):
        title += f", {fit['created']}"
    fig.suptitle(title, fontsize=12)
    fig.text(0.01, 0.015, caption, fontsize=8.5, ha="left", va="bottom",
             family="monospace")
    try:
        fig.savefig(out, format="png")
    except OSError as exc:
        raise UserError(f"report: cannot write {out} ({_why(exc)})") from None
    return out


def _caption(fit: dict[str, Any], rows: dict[str, list[dict[str, Any]]], level: float) -> str:
    parts = []
    for r in rows["parameters"]:
        if r["derived"]:
            continue
        name = _GREEK.get(r["name"], r["name"])
        iv = _interval(r["lo"], r["hi"], "{:.4g}")
        parts.append(f"{name} = {r['value']:.4g}" + (f" {iv}" if iv != "-" else ""))
    has_iv = any(r["lo"] is not None for r in rows["parameters"])
    line1 = ("fitted law  L(N, D) = E + A/N^α + B/D^β  in nats/token (N parameters, D tokens); "
             "compute C = 6ND\n"
             + ",  ".join(parts) + (f"   ({level:.0%} intervals)" if has_iv else ""))
    done = [r for r in rows["pilots"] if _plottable_row(r)]
    failed = len(rows["pilots"]) - len(done)
    a = next(r for r in rows["parameters"] if r["name"] == "a")
    bits = [f"{len(done)} pilots on {len(_levels(fit))} compute levels",
            f"N_opt ∝ C^{a['value']:.3f}"
            + (f" {_interval(a['lo'], a['hi'], '{:.3f}')}" if a["lo"] is not None else "")]
    std = _num(fit.get("residual_std"))
    if std is not None:
        bits.append(f"residual std {std:.3g} (log loss)")
    bpb = _num(fit.get("bpb_per_nat"))
    if bpb:
        bits.append(f"bits/byte = nats × {bpb:.4g}")
    if _num(fit.get("unique_tokens")):
        bits.append(f"{_count(fit['unique_tokens'])} unique tokens (curves use effective data)")
    if failed:
        bits.append(f"{failed} failed pilot{'s' if failed > 1 else ''} not shown")
    lines = [line1]
    cur = ""
    for b in bits:  # wrap to the figure's width (~150 monospace characters)
        if cur and len(cur) + 3 + len(b) > 150:
            lines.append(cur)
            cur = b
        else:
            cur = f"{cur};  {b}" if cur else b
    return "\n".join([*lines, cur] if cur else lines)


def _colormap() -> Any:
    import matplotlib

    return matplotlib.colormaps["viridis"]


# ---------------------------------------------------------------------------------------------
# All of it


def report_fit(path: str | Path, png: Path | None = None, console: Any = None
               ) -> dict[str, Any]:
    """Load `path`, print its tables on `console` (when given), write the PNG (default: next to
    the file, suffix .png); return {"png": path written, "rows": summary_rows}."""
    fit = load_fit(path)
    if console is not None:
        render_fit(console, fit)
    target = Path(png) if png is not None else Path(path).with_suffix(".png")
    written = write_fit_png(fit, target)
    if console is not None:
        console.print(f"wrote {written}", highlight=False, soft_wrap=True)
    return {"png": str(written), "rows": summary_rows(fit)}


# ---------------------------------------------------------------------------------------------
# Helpers


def _num(v: Any) -> float | None:
    """A finite float, or None (bool, None, strings and non-finite values are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _is_range(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) == 4 and all(_num(x) for x in v)


def _pair(v: Any) -> tuple[float | None, float | None]:
    if isinstance(v, list | tuple) and len(v) == 2:
        lo, hi = _num(v[0]), _num(v[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None, None


def _interval_level(fit: dict[str, Any]) -> float:
    v = _num(fit.get("interval_level"))
    return v if v is not None and 0 < v < 1 else DEFAULT_LEVEL


def _state(q: dict[str, Any]) -> str:
    state = q.get("state")
    if state:
        return str(state)
    return "complete" if _num(q.get("val_loss")) is not None else "failed"


def _plottable(q: dict[str, Any]) -> bool:
    return (_state(q) == "complete" and _num(q.get("val_loss")) is not None
            and (_num(q.get("params")) or 0) > 0)


def _plottable_row(r: dict[str, Any]) -> bool:
    return r["state"] == "complete" and r["val_loss"] is not None and (r["params"] or 0) > 0


def _levels(fit: dict[str, Any]) -> list[float]:
    """FLOPs per pilot at each level: `levels`, else the pilots' distinct `level_flops`."""
    given = [_num(c) for c in fit.get("levels") or []]
    if given and all(c and c > 0 for c in given):
        return [float(c) for c in given]  # type: ignore[arg-type]
    seen = sorted({c for q in fit.get("pilots") or []
                   if (c := _num(q.get("level_flops"))) and c > 0})
    return seen


def _pilot_level(q: dict[str, Any], levels: list[float]) -> int | None:
    lv = q.get("level")
    if isinstance(lv, int) and not isinstance(lv, bool) and 0 <= lv < len(levels):
        return lv
    c = _num(q.get("level_flops")) or _num(q.get("flops"))
    if c and c > 0 and levels:
        i = min(range(len(levels)), key=lambda j: abs(math.log(levels[j] / c)))
        if abs(math.log(levels[i] / c)) < math.log(1.5):
            return i
    return None


def _best_pilot(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if _plottable_row(r)]
    return min(done, key=lambda r: r["val_loss"]) if done else None


def _bootstrap(fit: dict[str, Any]) -> list[dict[str, float]]:
    """Valid bootstrap parameter sets ([E, A, B, alpha, beta] lists or dicts of those keys)."""
    out = []
    for b in fit.get("bootstrap") or []:
        if isinstance(b, dict):
            vals = [_num(b.get(k)) for k in LAW_KEYS]
        elif isinstance(b, list | tuple) and len(b) >= len(LAW_KEYS):
            vals = [_num(x) for x in b[: len(LAW_KEYS)]]
        else:
            continue
        if any(v is None for v in vals) or any(v <= 0 for v in vals[1:]):  # type: ignore[operator]
            continue
        out.append(dict(zip(LAW_KEYS, vals, strict=True)))  # type: ignore[arg-type]
    return out


def _exp_a(p: dict[str, float]) -> float:
    """a = beta/(alpha+beta): N_opt ∝ C^a (Hoffmann et al. eq. 4)."""
    return p["beta"] / (p["alpha"] + p["beta"])


def _n_opts(boots: list[dict[str, float]], c: float) -> list[float]:
    out = []
    for p in boots:
        try:
            g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
            n = g * (c / 6) ** _exp_a(p)
        except (OverflowError, ZeroDivisionError):
            continue
        if math.isfinite(n) and n > 0:
            out.append(n)
    return out


def _quantiles(vals: list[float], level: float) -> tuple[float | None, float | None]:
    """The central `level` interval of vals (linear interpolation between order statistics)."""
    xs = sorted(v for v in vals if math.isfinite(v))
    if not xs:
        return None, None
    q = (1 - level) / 2

    def at(p: float) -> float:
        k = p * (len(xs) - 1)
        i = int(math.floor(k))
        j = min(i + 1, len(xs) - 1)
        return xs[i] + (xs[j] - xs[i]) * (k - i)

    return at(q), at(1 - q)


def _count(n: Any) -> str:
    v = _num(n)
    if v is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


def _sci(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "-"
    mant, exp = f"{f:.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _f(v: Any, spec: str) -> str:
    f = _num(v)
    return "-" if f is None else spec.format(f)


def _interval(lo: Any, hi: Any, spec: str | None) -> str:
    a, b = _num(lo), _num(hi)
    if a is None or b is None:
        return "-"
    if spec is None:
        return f"[{_count(a)}, {_count(b)}]"
    return f"[{spec.format(a)}, {spec.format(b)}]"
