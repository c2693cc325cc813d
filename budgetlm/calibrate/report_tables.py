"""The fit report in the terminal: a one-line description of the law (`describe_law`) and rich
tables of the parameters, the pilots and the compute-optimal allocation (`render_fit`)."""

from __future__ import annotations

import math
from typing import Any

from budgetlm.calibrate.report_format import count_text, interval_text, number_text
from budgetlm.calibrate.report_load import law_of
from budgetlm.calibrate.report_rows import (
    interval_level,
    is_fit_range,
    is_plottable_pilot,
    summary_rows,
)
from budgetlm.units import finite_number, format_sci

DERIVED_NAMES = {"a": "a (N_opt ∝ C^a)", "b": "b (D_opt ∝ C^b)"}


def describe_law(fit: dict[str, Any]) -> str:
    """One line: the law, its unit, what it was fitted on, and how to read it in bits/byte."""
    law = law_of(fit)
    done = [q for q in fit.get("pilots") or [] if is_plottable_pilot(q)]
    failed = len(fit.get("pilots") or []) - len(done)
    n_points = (fit.get("fit") or {}).get("n_points") or len(done)
    data = fit.get("data") or {}
    what = [f"{data['tokenizer']} tokenizer" if data.get("tokenizer") else "",
            f"vocab {data['vocab_size']}" if data.get("vocab_size") else "",
            f"seq {fit['seq_len']}" if fit.get("seq_len") else "",
            f"{count_text(fit['unique_tokens'])} unique tokens"
            if finite_number(fit.get("unique_tokens")) else ""]
    on = str(data.get("source") or "unknown data")
    detail = ", ".join(w for w in what if w)
    line = (f"L(N, D) = {law.E:.4g} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}"
            f" nats/token (N parameters, D tokens), fitted on {n_points} pilots"
            + (f" ({failed} failed)" if failed else "") + f" on {on}"
            + (f" ({detail})" if detail else ""))
    bpb = finite_number(fit.get("bpb_per_nat"))
    if bpb:
        line += f"; bpb = nats × {bpb:.4g}"
    return line


def render_fit(console: Any, fit: dict[str, Any]) -> None:
    """Print the law, its parameters, the pilots and the compute-optimal allocation."""
    rows = summary_rows(fit)
    level = interval_level(fit)
    console.print(describe_law(fit), highlight=False, soft_wrap=True)
    console.print(parameters_table(rows["parameters"], level))
    console.print(pilots_table(rows["pilots"]))
    for r in rows["pilots"]:
        if r["state"] != "complete":
            why = f": {r['reason']}" if r["reason"] else ""
            console.print(f"[dim]pilot {r['name']} {r['state']}{why} (not fitted, not plotted)[/]",
                          highlight=False, soft_wrap=True)
    console.print(optimal_table(rows["optimal"], level))
    for r in rows["optimal"]:
        if r["at"] == "plan":
            console.print(plan_line(fit, r), highlight=False, soft_wrap=True)
    for note in fit_notes(fit):
        console.print(f"[dim]· {note}[/]", highlight=False, soft_wrap=True)


def _table(title: str) -> Any:
    from rich import box
    from rich.table import Table

    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)


def parameters_table(rows: list[dict[str, Any]], level: float) -> Any:
    """The fitted parameters and derived exponents with their intervals."""
    t = _table(f"fitted parameters ({level:.0%} intervals)")
    for col in ("", "value", "interval"):
        t.add_column(col, justify="left" if not col else "right", no_wrap=True)
    for r in rows:
        t.add_row(DERIVED_NAMES.get(r["name"], r["name"]), f"{r['value']:.4g}",
                  interval_text(r["lo"], r["hi"], "{:.4g}"))
    return t


def pilots_table(rows: list[dict[str, Any]]) -> Any:
    """The pilots: size, tokens, FLOPs, losses, residual, wall time and state."""
    t = _table("pilots (IsoFLOP profiles; loss in nats/token)")
    heads = ("lvl", "name", "N", "D", "FLOPs", "val loss", "fitted", "resid %", "wall s", "state")
    for col in heads:
        t.add_column(col, justify="left" if col in ("name", "state") else "right", no_wrap=True)
    for r in rows:
        state = r["state"] if r["state"] == "complete" else f"[red]{r['state']}[/]"
        t.add_row(
            str(r["level"]) if r["level"] is not None else "-", r["name"], count_text(r["params"]),
            count_text(r["tokens"]), format_sci(r["flops"] or r["level_flops"]),
            number_text(r["val_loss"], "{:.4f}"), number_text(r["fitted_loss"], "{:.4f}"),
            number_text(r["residual_pct"], "{:+.2f}"), number_text(r["wall_seconds"], "{:.1f}"),
            state,
        )
    return t


def optimal_table(rows: list[dict[str, Any]], level: float) -> Any:
    """The compute-optimal allocation per level and at the plan; epochs and the repeated-data
    loss only when some row repeats data."""
    repeats = any((r.get("epochs") or 1.0) > 1.0 for r in rows)
    t = _table(f"compute-optimal allocation from the fit (C = 6ND; N_opt {level:.0%} "
               "bootstrap interval; loss in nats/token"
               + ("; ep: epochs of the unique tokens, loss (D'): with repeated data as "
                  "effective data" if repeats else "") + ")")
    heads = ("at", "C FLOPs", "N_opt", "interval", "D_opt", "D/N", "ep", "loss", "loss (D')",
             "best pilot")
    heads = tuple(h for h in heads if h not in ("ep", "loss (D')") or repeats)
    for col in heads:
        t.add_column(col, justify="left" if col in ("at", "best pilot") else "right",
                     no_wrap=True)
    for r in rows:
        t.add_row(*_optimal_cells(r, repeats))
    return t


def _optimal_cells(r: dict[str, Any], repeats: bool) -> list[str]:
    if r["at"] == "plan":
        best = f"plan: {r.get('plan_name') or '?'} N={count_text(r.get('plan_params'))}"
    else:
        best = (f"{r['best_pilot']} N={count_text(r['best_params'])}" if r.get("best_pilot")
                else "-")
    cells = [r["at"], format_sci(r["flops"]), count_text(r["n_opt"]),
             interval_text(r["n_opt_lo"], r["n_opt_hi"], None), count_text(r["d_opt"]),
             f"{r['tokens_per_param']:.1f}"]
    if repeats:
        cells.append(number_text(r.get("epochs"), "{:.1f}"))
    cells.append(f"{r['loss']:.4f}")
    if repeats:
        cells.append(number_text(r.get("loss_repeated") or r["loss"], "{:.4f}"))
    return [*cells, best]


def plan_line(fit: dict[str, Any], r: dict[str, Any]) -> str:
    """The planned run (an `optimal` row at "plan"): its size, predicted loss and interval,
    beside the Chinchilla form's optimum at its FLOPs."""
    loss = number_text(r.get("plan_loss"), "{:.4f}")
    band = interval_text(r.get("plan_loss_lo"), r.get("plan_loss_hi"), "{:.4f}")
    n, d = r.get("plan_params"), r.get("plan_tokens")
    ratio = f" ({d / n:.1f} tokens/param)" if n and d else ""
    bpb = finite_number(fit.get("bpb_per_nat"))
    in_bpb = (f" (≈{r['plan_loss'] * bpb:.4f} bits/byte)"
              if bpb and r.get("plan_loss") is not None else "")
    return (f"planned run {r.get('plan_name') or ''}: N={count_text(n)}, D={count_text(d)}{ratio}"
            f" at {format_sci(r['flops'])} FLOPs, predicted loss {loss}"
            + (f" {band}" if band != "-" else "")
            + f" nats/token{in_bpb}; the Chinchilla form's optimum there: "
            f"N={count_text(r['n_opt'])}, D={count_text(r['d_opt'])}")


def fit_notes(fit: dict[str, Any]) -> list[str]:
    """The notes printed under the tables: the E ceiling, the Kaplan form, the residual scatter,
    the fitted range, the bootstrap, the pilots' time, the file's own notes, its date."""
    out = []
    ceiling = fit.get("e_ceiling") or {}
    if finite_number(ceiling.get("value")):
        rates = ceiling.get("rates") or {}
        out.append(f"E held at or below {ceiling['value']:.4f} nats/token, the best compression "
                   "rate of the validation tokens ("
                   + ", ".join(f"{k} {v:.4f}" for k, v in rates.items() if finite_number(v))
                   + ")")
    kaplan = _kaplan_note(fit)
    if kaplan:
        out.append(kaplan)
    std = finite_number(fit.get("residual_std"))
    if std is not None:
        out.append(f"residual std {std:.3g} in log loss (≈{100 * math.expm1(std):.2f}%)")
    fr = fit.get("fit_range")
    if is_fit_range(fr):
        out.append(f"fitted on N {count_text(fr[0])}–{count_text(fr[1])}, D {count_text(fr[2])}–"
                   f"{count_text(fr[3])}: predictions outside are extrapolations")
    info = fit.get("fit") or {}
    if info.get("n_bootstrap") or fit.get("bootstrap"):
        n_boot = info.get("n_bootstrap") or len(fit.get("bootstrap") or [])
        out.append(f"{n_boot} bootstrap refits"
                   + (f", Huber delta {info['huber_delta']:g}" if info.get("huber_delta")
                      else ""))
    secs, budget = finite_number(fit.get("pilot_seconds")), budget_words(fit.get("budget") or {})
    if secs is not None:
        of = f" of a {budget} budget" if budget else ""
        if finite_number(fit.get("pilot_fraction")):
            of += f" (pilot share {fit['pilot_fraction']:.0%})"
        out.append(f"pilots took {secs:.0f} s{of}")
    out += [str(n) for n in fit.get("notes") or [] if n]
    if fit.get("created"):
        out.append(f"created {fit['created']}")
    return out


def _kaplan_note(fit: dict[str, Any]) -> str | None:
    kap = ((fit.get("forms") or {}).get("kaplan") or {})
    if not isinstance(kap, dict) or not isinstance(kap.get("law"), dict):
        return None
    k = kap["law"]
    try:
        return (f"Kaplan form fitted to the same pilots: L = [({count_text(k['n_c'])}/N)^"
                f"({k['alpha_n']:.3f}/{k['alpha_d']:.3f}) + {count_text(k['d_c'])}/D]^"
                f"{k['alpha_d']:.3f}, residual std {float(kap.get('residual_std', 0)):.3g}; "
                "the plan predicts with the geometric mean of the two forms, its interval spans "
                "both")
    except (KeyError, TypeError, ValueError):
        return None


def budget_words(b: dict[str, Any]) -> str:
    """A budget as `Budget.to_dict` writes it, in words ('' when unknown)."""
    kind = b.get("kind")
    if kind == "time" and finite_number(b.get("seconds")):
        return f"{b['seconds']:.0f} s"
    if kind == "flops" and finite_number(b.get("flops")):
        return f"{format_sci(b['flops'])} FLOPs"
    if kind == "gpu_hours" and finite_number(b.get("gpu_hours")):
        gpus = b.get("gpus") or 1
        return f"{b['gpu_hours']:g} GPU-hour" + (f" ({gpus} GPUs)" if gpus != 1 else "")
    if kind == "cost" and finite_number(b.get("cost")):
        return f"{b['cost']:g} at {b.get('price', '?')}/GPU-hour"
    return ""
